"""The shard phase: the work list's images -> shard files in the work folder.

Shard ``k`` holds work-list rows ``[k*S, (k+1)*S)``, is batched the same way on every
run and is written through ``atomic_hdf5`` with a checksum per dataset, so a shard on
disk is either whole and verified or not counted (see docs/store.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from featkit.extraction.forward import Runner, decode_one, decoded
from featkit.extraction.plan import Plan, shard_path
from featkit.progress import Progress
from featkit.store.integrity import verify_file, write_checked
from featkit.store.reader import STATUS_FAILED, STATUS_OK, atomic_hdf5

logger = logging.getLogger("featkit")


def shard_done(path: Path, plan: Plan, k: int) -> bool:
    """A shard counts only if it opens, holds exactly the rows the plan gives it, and
    every dataset matches the checksum recorded when it was written."""
    import h5py

    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as h5:
            index = h5["index"][:]
            mine = bool(
                h5.attrs.get("plan_id") == plan.plan_id
                and np.array_equal(index, np.asarray(plan.shard_rows(k), dtype=np.int64))
            )
    except (OSError, KeyError):
        return False
    if not mine:
        return False
    damage = verify_file(path)
    if damage:
        logger.warning("shard %s is damaged (%s); extracting it again", path.name, damage[0])
    return not damage


def write_shard(
    path: Path,
    plan: Plan,
    k: int,
    cls: np.ndarray,
    mean: np.ndarray | None,
    grid: np.ndarray | None,
    status: list[str],
    errors: list[str],
    cls_layers: np.ndarray | None = None,
) -> None:
    from featkit.store.reader import _str_dtype

    rows = plan.shard_rows(k)
    sdt = _str_dtype()
    with atomic_hdf5(path) as h5:
        h5.attrs["plan_id"] = plan.plan_id
        write_checked(h5, "index", np.asarray(rows, dtype=np.int64))
        write_checked(h5, "path", [plan.work[i] for i in rows], sdt)
        write_checked(h5, "cls", cls)
        if mean is not None:
            write_checked(h5, "patch_mean", mean)
        if grid is not None:
            write_checked(h5, "patches", grid)
        if cls_layers is not None:
            write_checked(h5, "cls_layers", cls_layers)
        write_checked(h5, "status", status, sdt)
        write_checked(h5, "error", errors, sdt)


def run_shards(
    plan: Plan,
    shard_ids: Sequence[int],
    work_dir: Path,
    root: Path,
    runner: Runner,
    batch_size: int,
    grid_hw: tuple[int, int],
    progress: Progress,
) -> tuple[int, float]:
    """Extract the given shards; returns (images extracted, seconds spent)."""
    dim = runner.backbone.embed_dim
    transform = runner.backbone.preprocessing.transform()
    items = [plan.work[i] for k in shard_ids for i in plan.shard_rows(k)]
    task = progress.task("extract", total=len(items))
    threads = runner.threads
    images_in = decoded(
        items,
        lambda rel: decode_one(root, transform, rel),
        threads.decode_workers,
        lookahead=2 * batch_size,
        # On a CPU the decode threads share the forward's cores: they yield to it.
        background=not threads.pin_memory,
    )
    with_mean = runner.patches != "none" and not runner.mean_is_cls
    started = time.perf_counter()
    done = 0
    try:
        for k in shard_ids:
            n = len(plan.shard_rows(k))
            cls = np.full((n, dim), np.nan, dtype=np.float32)
            mean = np.full((n, dim), np.nan, dtype=np.float32) if with_mean else None
            grid = (
                np.full((n, *grid_hw, dim), np.nan, dtype=np.float16)
                if runner.patches == "full"
                else None
            )
            stack = (
                np.full((n, runner.layers, dim), np.nan, dtype=np.float32)
                if runner.layers > 1
                else None
            )
            status = [STATUS_OK] * n
            errors = [""] * n
            for lo in range(0, n, batch_size):
                hi = min(n, lo + batch_size)
                images, where = [], []
                for pos in range(lo, hi):
                    tensor, reason = next(images_in)
                    if tensor is None:
                        status[pos], errors[pos] = STATUS_FAILED, reason
                    else:
                        images.append(tensor)
                        where.append(pos)
                if images:
                    c, m, g, per_block = runner.forward(images)
                    cls[where] = c
                    if stack is not None and per_block is not None:
                        stack[where] = per_block
                    if mean is not None and m is not None:
                        mean[where] = m
                    if grid is not None and g is not None:
                        if g.shape[1:3] != grid_hw:
                            raise RuntimeError(
                                f"backbone returned a {g.shape[1:3]} grid, expected {grid_hw}"
                            )
                        grid[where] = g
                done += hi - lo
                elapsed = time.perf_counter() - started
                task.advance(hi - lo, img_s=done / elapsed if elapsed > 0 else 0.0)
            write_shard(shard_path(work_dir, k), plan, k, cls, mean, grid, status, errors, stack)
    finally:
        images_in.close()
        task.close()
    return done, time.perf_counter() - started
