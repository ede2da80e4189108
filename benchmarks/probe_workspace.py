"""The default probe of a 1,000-image workspace: quiet, loaded and rerun, in one run.

Writes the bundled digits with a long tail (1,040 images at ``--imbalance 3.2``, the
largest class 3.2 times the smallest), extracts three stores with ``featkit extract``
(featkit-tiny-dino, its random-init twin and pixels), then times the command a user
runs, ``featkit probe --force`` (every default protocol, shots 1/5/10/all, 10
episodes), each in a fresh process, in interleaved rounds:

  quiet   alone on the machine;
  loaded  beside one CPU-bound process (``python -c "while True: pass"``), started a
          second before so that the probe's thread plan sees it;
  rerun   ``featkit probe`` without ``--force`` on unchanged stores: it returns the
          results it already has.

Prints every time, the best and median of each and loaded / quiet. Targets on a
2-core machine: quiet at most 10 s, loaded at most 2x quiet, rerun about a second.

    python benchmarks/probe_workspace.py                    # 3 rounds, 1,040 images
    python benchmarks/probe_workspace.py --imbalance 10     # the demo's 710 images
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scale import run_timed  # this folder's scripts: run as `python benchmarks/...`

from featkit.data.digits import write_digits
from featkit.extraction.plan import available_cores

STORES = (
    ["--model", "featkit-tiny-dino"],
    ["--model", "featkit-tiny-dino", "--random-init"],
    ["--model", "pixels"],
)


def featkit(*args: str) -> float:
    """Run ``featkit <args>`` in a fresh interpreter; its wall time in seconds."""
    return run_timed([sys.executable, "-m", "featkit", *args])


def beside_cpu_hog(args: list[str]) -> float:
    """``featkit(*args)`` while another process keeps one core busy."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)  # the thread plan samples the free cores when the probe starts
        return featkit(*args)
    finally:
        hog.kill()
        hog.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--imbalance", type=float, default=3.2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = write_digits(Path(tmp) / "digits", imbalance=args.imbalance)
        images = sum(1 for _ in data.rglob("*.png"))
        workspace = str(Path(tmp) / "ws")
        for store in STORES:
            featkit("extract", str(data), *store, "--workspace", workspace)
        probe = ["probe", "--workspace", workspace]
        runs = {
            "quiet": lambda: featkit(*probe, "--force"),
            "loaded": lambda: beside_cpu_hog([*probe, "--force"]),
            "rerun": lambda: featkit(*probe),
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        print(
            f"{images} images, 3 stores, {available_cores()} usable cores, load average "
            f"{os.getloadavg()[0]:.2f}; {args.rounds} rounds of quiet, loaded, rerun"
        )
        for _ in range(args.rounds):
            for name, run in runs.items():
                times[name].append(run())
                print(f"  {name:6s} {times[name][-1]:6.2f} s", flush=True)

    for name, values in times.items():
        print(
            f"{name:6s} best {min(values):6.2f} s  median {statistics.median(values):6.2f} s  "
            f"({', '.join(f'{v:.2f}' for v in values)})"
        )
    quiet, loaded = statistics.median(times["quiet"]), statistics.median(times["loaded"])
    print(f"quiet median = {quiet:.2f} s  (target <= 10 s)")
    print(f"loaded / quiet = {loaded / quiet:.2f}  (medians; target <= 2)")
    print(f"rerun median = {statistics.median(times['rerun']):.2f} s  (target about 1 s)")


if __name__ == "__main__":
    main()
