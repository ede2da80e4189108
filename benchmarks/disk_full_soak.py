"""Soak: `featkit extract` on a disk that fills up, then the rerun after space is freed.

Needs root (it resizes a tmpfs). For each size, the workspace lives on a tmpfs of that
size; the run must fail with one line (no traceback, no crash) or succeed, and after the
tmpfs is enlarged the same command must give a store bit-identical to a run that never
ran out of space. The up-front space estimate is bypassed with --no-estimate, so that
the disk fills during the shards or the merge, as when another process takes the space.

    sudo mkdir -p /mnt/fk && sudo mount -t tmpfs -o size=1m tmpfs /mnt/fk
    sudo python benchmarks/disk_full_soak.py /mnt/fk --sizes 64,128,256,384,512,768,1024
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL = ["--model", "timm:vit_tiny_patch16_224", "--random-init", "--image-size", "32"]
ARGS = ["--patches", "full", "--precision", "fp32", "--shard-size", "32", "--batch-size", "8"]
RUN = (
    "import sys, featkit.extraction.plan as e\n"
    "if sys.argv[1] == '--no-estimate':\n"
    "    e.require_free_space = lambda *a, **k: None\n"
    "    sys.argv.pop(1)\n"
    "from featkit.cli import app\n"
    "app(sys.argv[1:])\n"
)


def _extract(data: Path, workspace: Path, *, estimate: bool) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    flag = [] if estimate else ["--no-estimate"]
    cmd = [sys.executable, "-c", RUN, *flag, "extract", str(data), *MODEL, *ARGS]
    return subprocess.run(
        [*cmd, "-w", str(workspace)], env=env, capture_output=True, text=True, timeout=600
    )


def _arrays(path: Path) -> dict[str, bytes]:
    from featkit.store.reader import open_store

    with open_store(path) as store:
        out = {k: store.raw_rows(k, 0, store.num_rows).tobytes() for k in store.feature_kinds}
        out["paths"] = "\n".join(store.paths(include_failed=True)).encode()
        out["status"] = "\n".join(store.status()).encode()
        out["labels"] = np.asarray(store.labels(include_failed=True)).tobytes()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mount", type=Path, help="a tmpfs mount point this user may resize")
    parser.add_argument("--sizes", default="64,128,256,384,512,768,1024", help="KiB, comma list")
    parser.add_argument("--per-class", type=int, default=20)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tests.helpers import digits_folder

    scratch = Path(tempfile.mkdtemp())
    data = digits_folder(scratch, per_class=args.per_class)
    reference = _extract(data, scratch / "ref", estimate=True)
    assert reference.returncode == 0, reference.stderr
    ref_store = next((scratch / "ref").rglob("*.h5"))
    truth = _arrays(ref_store)
    tried = one_line = identical = 0
    for kib in [int(s) for s in args.sizes.split(",")]:
        workspace = args.mount / "ws"
        shutil.rmtree(workspace, ignore_errors=True)  # before shrinking the tmpfs
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(args.mount)], check=True)
        first = _extract(data, workspace, estimate=False)
        tried += 1
        last = (first.stderr.strip().splitlines() or [""])[-1]
        clean = first.returncode in (0, 2) and "Traceback" not in first.stderr
        one_line += clean
        subprocess.run(["mount", "-o", "remount,size=64m", str(args.mount)], check=True)
        second = _extract(data, workspace, estimate=True)
        same = second.returncode == 0 and _arrays(next(workspace.rglob("*.h5"))) == truth
        identical += same
        print(f"{kib:5d} KiB: rc={first.returncode} {last[:110]!r} -> rerun identical: {same}")
    print(f"one-line or success: {one_line}/{tried}; rerun identical: {identical}/{tried}")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
