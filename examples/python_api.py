"""featkit from Python: extract once, probe many times, read the numbers.

Run from the repository root (no network needed; it uses the bundled tiny model and
real sklearn digits):

    .venv/bin/python examples/python_api.py /tmp/featkit-example

Every call is a ``featkit.<verb>``; each writes what the CLI command of the same name
writes, so ``featkit report -w /tmp/featkit-example`` works on the result. Swap
``featkit-tiny-dino`` for ``dinov2_vits14`` (or ``featkit.create_backbone(name,
weights=PATH)`` for a local checkpoint) on your own images. FEATKIT_EXAMPLE_MAX_PER_CLASS
and FEATKIT_EXAMPLE_EPISODES make a smaller, quicker run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

import featkit

MODELS = ("featkit-tiny-dino", "pixels")  # a pretrained backbone against raw pixels


def main(
    workspace: Path,
    max_per_class: int | None = None,
    episodes: int = 3,
    protocols: list[str] | None = None,  # None: every protocol (featkit.list_protocols())
) -> pd.DataFrame:
    """Digits → two stores → probes; returns (and prints) the balanced-accuracy summary."""
    images = workspace / "data" / "digits"
    if not images.exists():
        featkit.write_digits(images, imbalance=10.0, size=32, max_per_class=max_per_class)
    dataset = featkit.discover(images)

    for name in MODELS:
        report = featkit.extract(dataset, featkit.create_backbone(name), workspace=workspace)
        print(f"{name}: {report.rows} rows in {report.path}")

    with featkit.open_store(report.path) as store:
        print("stored features:", store.features("cls").shape)  # [N, D], failed rows left out

    featkit.probe(workspace=workspace, shots="1,5,all", episodes=episodes, protocols=protocols)
    summary = featkit.read_results(workspace, summary=True)
    balanced = summary[summary["metric"] == "balanced_accuracy"]
    columns = ["model", "protocol", "shots", "mean", "ci95_low", "ci95_high"]
    print(balanced[columns].to_string(index=False))
    return balanced.reset_index(drop=True)


if __name__ == "__main__":
    cap = os.environ.get("FEATKIT_EXAMPLE_MAX_PER_CLASS")
    main(
        Path(sys.argv[1] if len(sys.argv) > 1 else "featkit_runs_example"),
        max_per_class=int(cap) if cap else None,
        episodes=int(os.environ.get("FEATKIT_EXAMPLE_EPISODES", "3")),
    )
