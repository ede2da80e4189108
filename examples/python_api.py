"""featkit from Python: extract once, probe many times, read the numbers.

Run from the repository root (no network needed; it uses the bundled tiny model and
real sklearn digits):

    .venv/bin/python examples/python_api.py /tmp/featkit-example

Swap ``featkit-tiny-dino`` for ``dinov2_vits14`` (or ``--weights``-style local files via
``create_backbone(name, weights=PATH)``) on your own images.
"""

from __future__ import annotations

import sys
from pathlib import Path

import featkit
from featkit.data.digits import write_digits
from featkit.data.images import discover
from featkit.evaluation.probe import ProbeSettings, probe
from featkit.evaluation.splits import parse_shots
from featkit.extraction.run import extract
from featkit.results.io import read_summary
from featkit.workspace import store_path


def main(workspace: Path) -> None:
    images = workspace / "data" / "digits"
    if not images.exists():
        write_digits(images, imbalance=10.0, size=32)
    dataset = discover(images)

    stores = []
    for name, pretrained in [("featkit-tiny-dino", True), ("pixels", True)]:
        backbone = featkit.create_backbone(name, pretrained=pretrained)
        stores.append(extract(dataset, backbone, store_path(workspace, dataset.name, name)).path)

    with featkit.open_store(stores[0]) as store:
        print(store.summary())
        train = store.features("cls")  # [N, D] float32, failed images left out
        print("CLS features:", train.shape)

    probe(stores, ProbeSettings(shots=parse_shots("1,5,all"), episodes=3), workspace)
    summary = read_summary(workspace)
    balanced = summary[summary["metric"] == "balanced_accuracy"]
    print(balanced[["model", "protocol", "shots", "mean", "ci95_low", "ci95_high"]].to_string())


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "featkit_runs_example"))
