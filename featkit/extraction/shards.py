"""The shard phase of ``featkit.extraction.run``: the plan, decoding, the forward pass, shards.

Shard ``k`` holds work-list rows ``[k*S, (k+1)*S)``, is batched the same way on every
run and is written through ``atomic_hdf5`` with a checksum per dataset, so a shard on
disk is either whole and verified or not counted (see docs/store.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featkit.atomic import atomic_path
from featkit.errors import ImageDecodeError
from featkit.progress import Progress
from featkit.store.fingerprint import BINDING_KEYS
from featkit.store.integrity import verify_file, write_checked
from featkit.store.reader import STATUS_FAILED, STATUS_OK, atomic_hdf5

if TYPE_CHECKING:
    import torch

    from featkit.backbones import Backbone
    from featkit.data.images import Dataset
    from featkit.extraction.run import ExtractSettings

logger = logging.getLogger("featkit")

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


# -- decoding ---------------------------------------------------------------------
def _decode_one(
    root: Path, transform: Callable[[Any], torch.Tensor], rel: str
) -> tuple[torch.Tensor | None, str]:
    from featkit.data.images import load_image

    try:
        return transform(load_image(root / rel)), ""
    except ImageDecodeError as err:
        return None, str(err) or "cannot decode"
    except (OSError, ValueError) as err:
        # A file that vanished or a transform that refuses the image: record, go on.
        return None, f"{type(err).__name__}: {err}"


def _decoded(
    items: Sequence[str], decode: Callable[[str], Any], workers: int, lookahead: int
) -> Generator[Any, None, None]:
    """``map(decode, items)`` in order, with up to ``lookahead`` decodes in flight."""
    if workers == 0:
        yield from map(decode, items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="featkit-decode") as pool:
        pending: deque[Any] = deque()
        for item in items:
            pending.append(pool.submit(decode, item))
            if len(pending) >= lookahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# -- the plan -----------------------------------------------------------------------
Stat = tuple[int, int]  # (size in bytes, mtime in ns) of an image file; (-1, -1): unknown


def file_stats(dataset: Dataset) -> dict[str, Stat]:
    """(size, mtime_ns) of every image of ``dataset`` now: what a row is keyed by."""
    stats: dict[str, Stat] = {}
    for record in dataset.records:
        try:
            st = os.stat(dataset.root / record.path)
            stats[record.path] = (int(st.st_size), int(st.st_mtime_ns))
        except OSError:
            stats[record.path] = (-1, -1)  # the decode records why
    return stats


@dataclass
class _Plan:
    fingerprint: dict[str, Any]
    work: list[str]  # relative paths to extract, in path order
    shard_size: int
    # (size, mtime_ns) of each work image when planned: an image changed after an
    # interrupted run changes the plan id, so its stale shard is not reused.
    stats: list[Stat] = field(default_factory=list)

    @property
    def plan_id(self) -> str:
        binding = {k: self.fingerprint.get(k) for k in BINDING_KEYS}
        if binding.get("layers") is None:
            # Absent unless --layers > 1: plans of earlier versions keep their id.
            binding.pop("layers", None)
        blob = json.dumps(
            {
                "fp": binding,
                "work": self.work,
                "shard": self.shard_size,
                **({"stats": [list(x) for x in self.stats]} if self.stats else {}),
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def num_shards(self) -> int:
        return math.ceil(len(self.work) / self.shard_size)

    def shard_rows(self, k: int) -> range:
        return range(k * self.shard_size, min(len(self.work), (k + 1) * self.shard_size))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "plan_id": self.plan_id,
            "fingerprint": self.fingerprint,
            "shard_size": self.shard_size,
            "work": self.work,
            "stats": [list(x) for x in self.stats],
        }


def _shard_path(work_dir: Path, k: int) -> Path:
    return work_dir / f"shard-{k:06d}.h5"


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data), encoding="utf-8")


def _read_manifest(work_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((work_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return None
    return data


def _shard_done(path: Path, plan: _Plan, k: int) -> bool:
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


# -- the forward pass ---------------------------------------------------------------
class _Runner:
    """Runs batches through the backbone and lays results out as shard arrays."""

    def __init__(
        self, backbone: Backbone, device: str, precision: str, patches: str, layers: int = 1
    ) -> None:
        self.backbone = backbone
        self.device = device
        self.precision = precision
        self.patches = patches
        self.layers = layers  # CLS tokens of the last `layers` blocks; 1: the CLS alone

    def forward(
        self, images: list[torch.Tensor]
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """(cls, patch mean, grid, CLS of the last blocks ``[B, layers, D]``) of a batch."""
        import torch

        from featkit.precision import autocast

        batch = torch.stack(images).to(self.device, non_blocking=True)
        stack = None
        with torch.inference_mode(), autocast(self.precision, self.device):
            if self.layers > 1:
                out, per_block = self.backbone.forward_layers(batch, self.layers)
                stack = per_block.float().cpu().numpy()
            else:
                out = self.backbone(batch)
        cls = out.cls.float().cpu().numpy()
        if self.patches == "none":
            return cls, None, None, stack
        grid = out.patches.float()
        mean = grid.mean(dim=(1, 2)).cpu().numpy()
        full = grid.half().cpu().numpy() if self.patches == "full" else None
        return cls, mean, full, stack


def _write_shard(
    path: Path,
    plan: _Plan,
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


def _run_shards(
    plan: _Plan,
    shard_ids: Sequence[int],
    work_dir: Path,
    root: Path,
    runner: _Runner,
    settings: ExtractSettings,
    grid_hw: tuple[int, int],
    progress: Progress,
) -> tuple[int, float]:
    """Extract the given shards; returns (images extracted, seconds spent)."""
    dim = runner.backbone.embed_dim
    transform = runner.backbone.preprocessing.transform()
    items = [plan.work[i] for k in shard_ids for i in plan.shard_rows(k)]
    task = progress.task("extract", total=len(items))
    decoded = _decoded(
        items,
        lambda rel: _decode_one(root, transform, rel),
        settings.workers,
        lookahead=2 * settings.batch_size,
    )
    started = time.perf_counter()
    done = 0
    try:
        for k in shard_ids:
            n = len(plan.shard_rows(k))
            cls = np.full((n, dim), np.nan, dtype=np.float32)
            mean = (
                np.full((n, dim), np.nan, dtype=np.float32) if settings.patches != "none" else None
            )
            grid = (
                np.full((n, *grid_hw, dim), np.nan, dtype=np.float16)
                if settings.patches == "full"
                else None
            )
            stack = (
                np.full((n, runner.layers, dim), np.nan, dtype=np.float32)
                if runner.layers > 1
                else None
            )
            status = [STATUS_OK] * n
            errors = [""] * n
            for lo in range(0, n, settings.batch_size):
                hi = min(n, lo + settings.batch_size)
                images, where = [], []
                for pos in range(lo, hi):
                    tensor, reason = next(decoded)
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
            _write_shard(_shard_path(work_dir, k), plan, k, cls, mean, grid, status, errors, stack)
    finally:
        decoded.close()
        task.close()
    return done, time.perf_counter() - started
