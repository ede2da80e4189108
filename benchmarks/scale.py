"""Scale-out measurements: torchrun extraction and k-NN over a million rows.

    python benchmarks/scale.py extract --n-images 256            # (a) 1 vs 2 processes
    python benchmarks/scale.py knn --rows 1000000 --queries 10000 # (b) the full-size run
    python benchmarks/scale.py knn --rows 200000 --queries 2000   # reduced, on a busy box

(a) runs ``featkit extract`` once as one process and once under ``torchrun
--nproc-per-node 2`` on generated JPEGs, and says whether the two stores are
bit-identical. On a 2-core machine the two processes share the same two cores (one
intra-op thread each instead of two), so expect no speed-up there: the point is that
the split is correct; the speed-up comes with more cores, GPUs or nodes.

(b) writes a store-shaped HDF5 file of ``rows × dim`` float16 embeddings
(:func:`featkit.neighbors.recall.clustered_embeddings`, 1000 classes) in blocks, then runs a
k-NN evaluation — the last ``queries`` rows against all the others, weighted votes
``exp(sim / 0.07)`` of the top ``k`` — once with exact search and once with the IVF
index, with :func:`featkit.neighbors.exact.streamed_exact_search` (exact, the database read
block by block, never held) and with plain faiss (the rows loaded into an
``IndexFlatIP``, one ``search`` call: the baseline), each in a fresh process so that
its peak RSS is its own. Reports rows/s, queries/s and peak RSS, and for each mode the
ratio to plain faiss and the recall@k of its neighbours against faiss's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEMPERATURE = 0.07


# -- (a) extraction with 1 and 2 processes -------------------------------------------------
def write_images(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` 500×375 JPEGs (smooth colour fields plus noise) in two class folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    for i in range(n):
        cls = folder / f"class{i % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.uniform(0.005, 0.05, 3)
        base = np.stack([np.sin(a * xx), np.cos(b * yy), np.sin(c * (xx + yy))], axis=-1)
        img = (base * 100 + 128 + rng.normal(0, 20, base.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(cls / f"{i:05d}.jpg", quality=90)
    return folder


def run_timed(command: list[str], env: dict[str, str] | None = None) -> float:
    """Wall seconds of ``command`` run from the repository root; exits with its output
    when it fails."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - started


def _same_store(a: Path, b: Path) -> bool:
    import h5py

    def contents(path: Path) -> dict[str, Any]:
        found: dict[str, Any] = {}
        with h5py.File(path, "r") as h5:
            h5.visititems(
                lambda n, o: found.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None
            )
        return found

    left, right = contents(a), contents(b)
    return left.keys() == right.keys() and all(
        np.array_equal(left[k], right[k], equal_nan=left[k].dtype.kind == "f") for k in left
    )


def bench_extract(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="featkit-scale-"))
    try:
        data = write_images(work / "images", args.n_images)
        common = [
            "extract",
            str(data),
            "--model",
            args.model,
            "--random-init",
            "--image-size",
            str(args.image_size),
            "--batch-size",
            str(args.batch_size),
            "--shard-size",
            str(args.shard_size),
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        launchers = {
            "one_process": [sys.executable, "-m", "featkit"],
            "two_processes": [
                *(sys.executable, "-m", "torch.distributed.run", "--standalone"),
                *("--nproc-per-node", "2", "-m", "featkit"),
            ],
        }
        result: dict[str, Any] = {
            "images": args.n_images,
            "model": f"{args.model} @ {args.image_size} px (random init)",
            "cpu_cores": os.cpu_count(),
        }
        for name, launcher in launchers.items():
            command = [*launcher, *common, "--out", str(work / f"{name}.h5")]
            total = run_timed(command, env)
            # The same command again finds the store up to date: what remains is the
            # fixed cost (interpreters, imports, model creation, rendezvous).
            fixed = run_timed(command, env)
            result[f"{name}_s"] = round(total, 2)
            result[f"{name}_fixed_s"] = round(fixed, 2)
            result[f"{name}_img_s"] = round(args.n_images / max(total - fixed, 1e-9), 2)
        result["identical_stores"] = _same_store(work / "one_process.h5", work / "two_processes.h5")
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- (b) k-NN over a large store -------------------------------------------------------
def write_store(path: Path, rows: int, dim: int, block: int = 50_000) -> float:
    """Write ``rows × dim`` float16 embeddings and their labels block by block; seconds."""
    import h5py

    from featkit.neighbors.recall import clustered_embeddings

    started = time.perf_counter()
    with h5py.File(path, "w") as h5:
        cls = h5.create_dataset("features/cls", (rows, dim), np.float16, chunks=(1024, dim))
        labels = h5.create_dataset("images/label", (rows,), np.int64)
        for start in range(0, rows, block):
            n = min(block, rows - start)
            x, y = clustered_embeddings(n, dim, n_clusters=1000, seed=0, start=start)
            cls[start : start + n] = x.astype(np.float16)
            labels[start : start + n] = y
    return time.perf_counter() - started


class RowRange:
    """Rows ``[start, stop)`` of an HDF5 dataset, sliced lazily (a MatrixLike)."""

    def __init__(self, data: Any, start: int, stop: int) -> None:
        self.data, self.start, self.stop = data, start, stop
        self.shape = (stop - start, int(data.shape[1]))

    def __getitem__(self, key: slice) -> np.ndarray:
        lo, hi, _ = key.indices(self.shape[0])
        return np.asarray(self.data[self.start + lo : self.start + hi])


def knn_child(args: argparse.Namespace) -> None:
    """One k-NN evaluation in this process; prints one JSON line; saves the neighbour ids."""
    import faiss
    import h5py

    from featkit.neighbors.exact import streamed_exact_search
    from featkit.neighbors.search import NeighborIndex
    from featkit_protocols.knn import weighted_votes

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    timings: dict[str, float] = {}
    with h5py.File(args.store, "r") as h5:
        cls, labels = h5["features/cls"], h5["images/label"][:]
        n = int(cls.shape[0])
        train = RowRange(cls, 0, n - args.queries)
        queries = RowRange(cls, n - args.queries, n)
        started = time.perf_counter()
        index: Any = None
        if args.mode == "faiss":  # the baseline: everything in memory, one search call
            database = np.asarray(train[0 : train.shape[0]], dtype=np.float32)
            faiss.normalize_L2(database)
            flat = faiss.IndexFlatIP(database.shape[1])
            flat.add(database)
            timings["build_s"] = time.perf_counter() - started
            started = time.perf_counter()
            q = np.asarray(queries[0 : queries.shape[0]], dtype=np.float32)
            faiss.normalize_L2(q)
            sims, idx = flat.search(q, args.k)
        elif args.mode == "streamed":  # exact, the database read block by block
            timings["build_s"] = 0.0
            sims, idx = streamed_exact_search(train, queries, args.k)
        else:
            index = NeighborIndex(args.mode).fit(train)
            timings["build_s"] = time.perf_counter() - started
            started = time.perf_counter()
            sims, idx = index.search(queries, args.k)
        timings["search_s"] = time.perf_counter() - started
    started = time.perf_counter()
    train_labels, test_labels = labels[: n - args.queries], labels[n - args.queries :]
    valid = idx >= 0
    neighbour_labels = train_labels[np.maximum(idx, 0)]
    weights = valid.astype(np.float64)  # an IVF miss (-1) gets no vote
    probs = weighted_votes(np.where(valid, sims, 0.0), neighbour_labels, 1000, TEMPERATURE, weights)
    accuracy = float(np.mean(probs.argmax(axis=1) == test_labels))
    timings["vote_s"] = time.perf_counter() - started
    np.save(args.idx_out, idx)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    extra = {"nlist": index.nlist_, "nprobe": index.nprobe_} if args.mode == "ivf" else {}
    extra["resident_database"] = args.mode in ("faiss", "exact", "ivf")
    total = sum(timings.values())
    print(
        json.dumps(
            {
                "mode": args.mode,
                **{k: round(v, 2) for k, v in timings.items()},
                "total_s": round(total, 2),
                "database_rows_per_s": round((n - args.queries) / max(total, 1e-9)),
                "queries_per_s": round(args.queries / max(timings["search_s"], 1e-9), 1),
                "peak_rss_gib": round(peak_rss / 2**30, 3),
                "knn_accuracy": round(accuracy, 4),
                **extra,
            }
        )
    )


def bench_knn(args: argparse.Namespace) -> dict[str, Any]:
    from featkit.neighbors.recall import recall_at_k

    work = Path(tempfile.mkdtemp(prefix="featkit-knn-", dir=args.tmp))
    try:
        store = work / "synthetic.h5"
        write_s = write_store(store, args.rows, args.dim)
        features_gib = args.rows * args.dim * 4 / 2**30
        result: dict[str, Any] = {
            "rows": args.rows,
            "dim": args.dim,
            "queries": args.queries,
            "k": args.k,
            "threads": args.threads or "faiss default",
            "store_size_gib": round(store.stat().st_size / 2**30, 3),
            "write_s": round(write_s, 1),
            "database_float32_gib": round(features_gib, 3),
        }
        for mode in args.modes.split(","):
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "_knn-child",
                "--store",
                str(store),
                "--mode",
                mode,
                "--queries",
                str(args.queries),
                "--k",
                str(args.k),
                "--threads",
                str(args.threads),
                "--idx-out",
                str(work / f"{mode}.npy"),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{mode} run failed:\n{done.stdout}\n{done.stderr}")
            result[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        reference = "faiss" if "faiss" in result else "exact"
        for mode in args.modes.split(","):
            if mode == reference:
                continue
            neighbours = np.load(work / f"{mode}.npy")
            same = recall_at_k(neighbours, np.load(work / f"{reference}.npy"))
            result[mode][f"recall_at_{args.k}_vs_{reference}"] = round(same, 4)
            result[mode][f"speed_vs_{reference}"] = round(
                result[reference]["total_s"] / max(result[mode]["total_s"], 1e-9), 2
            )
            result[mode][f"peak_rss_vs_{reference}"] = round(
                result[mode]["peak_rss_gib"] / result[reference]["peak_rss_gib"], 2
            )
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    ext = sub.add_parser("extract", help="(a) featkit extract with 1 and 2 processes")
    ext.add_argument("--n-images", type=int, default=256)
    ext.add_argument("--model", default="timm:vit_small_patch14_dinov2.lvd142m")
    ext.add_argument("--image-size", type=int, default=224)
    ext.add_argument("--batch-size", type=int, default=32)
    ext.add_argument("--shard-size", type=int, default=64)
    knn = sub.add_parser("knn", help="(b) k-NN of a large synthetic store, exact and IVF")
    knn.add_argument("--rows", type=int, default=1_000_000)
    knn.add_argument("--dim", type=int, default=768)
    knn.add_argument("--queries", type=int, default=10_000)
    knn.add_argument("--k", type=int, default=20)
    knn.add_argument("--threads", type=int, default=0, help="faiss threads (0: its default)")
    knn.add_argument("--tmp", default=None, help="folder for the synthetic store")
    knn.add_argument(
        "--modes",
        default="faiss,exact,streamed,ivf",
        help="faiss (plain IndexFlatIP, all in memory: the baseline), exact (NeighborIndex), "
        "streamed (streamed_exact_search), ivf",
    )
    child = sub.add_parser("_knn-child")
    child.add_argument("--store", required=True)
    child.add_argument("--mode", choices=("faiss", "exact", "streamed", "ivf"), required=True)
    child.add_argument("--queries", type=int, required=True)
    child.add_argument("--k", type=int, required=True)
    child.add_argument("--threads", type=int, default=0)
    child.add_argument("--idx-out", required=True)
    args = parser.parse_args()
    if args.part == "_knn-child":
        knn_child(args)
        return
    result = bench_extract(args) if args.part == "extract" else bench_knn(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
