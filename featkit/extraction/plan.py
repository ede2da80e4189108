"""What an extraction pass will do: its settings, its work list and shards, its thread plan.

Nothing here runs a model or writes a store; the other modules of the stage read these
definitions (``forward``: decoding and the forward pass; ``shards``: shard files;
``merge``: shards -> store; ``run``: the entry point).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featkit.atomic import atomic_path
from featkit.diskspace import require_free_space
from featkit.errors import FeatkitError
from featkit.store.fingerprint import BINDING_KEYS

if TYPE_CHECKING:
    from featkit.data.images import Dataset

PATCH_MODES = ("full", "mean", "none")
# A shard is held in memory until written; cap it whatever --shard-size says.
SHARD_BYTES = 64 << 20
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class ExtractSettings:
    """How to run the pass; everything that changes feature values is in the fingerprint."""

    patches: str = "mean"  # "full": CLS + patch mean + float16 grid; "mean": no grid; "none": CLS
    precision: str = "auto"  # "auto" (bf16 where native, else fp32) | "fp32" | "bf16" | "fp16"
    batch_size: int = 32  # images per forward pass
    # Decode threads overlapping the forward pass; 0 decodes inline; None: from the
    # cores this process may use and the device (thread_plan).
    workers: int | None = None
    shard_size: int = 512  # rows per shard file (the unit of resumption)
    device: str = "auto"  # "auto" | "cpu" | "cuda[:N]"
    model_name: str | None = None  # model name in the store; default: backbone.name
    overwrite: bool = False  # replace a store made with other settings instead of refusing
    retry_failed: bool = False  # run previously failed images again
    # CLS tokens of the last n blocks to store as /features/cls_layers (the official
    # linear-evaluation features, kinds cls<k> and cls<k>+avgpool); 1 stores none.
    layers: int = 1


@dataclass
class ExtractReport:
    """What one call did."""

    path: Path  # the store
    rows: int  # rows in the store
    extracted: int  # images run through the backbone by this call
    reused: int  # rows taken from the previous store or from shards of an interrupted run
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), whole store
    seconds: float = 0.0  # wall time of the call
    images_per_second: float = 0.0  # extraction throughput of this call
    file_size: int = 0  # bytes
    precision: str = "fp32"  # the precision used
    device: str = "cpu"
    up_to_date: bool = False  # nothing to do: the store already matched the data


def check_settings(settings: ExtractSettings) -> None:
    if settings.patches not in PATCH_MODES:
        raise FeatkitError(
            f"patches: expected one of {', '.join(PATCH_MODES)}, got {settings.patches!r}"
        )
    for name in ("batch_size", "shard_size", "layers"):
        value = getattr(settings, name)
        if not isinstance(value, int) or value < 1:
            raise FeatkitError(f"{name}: expected a positive integer, got {value!r}")
    workers = settings.workers
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise FeatkitError(f"workers: expected an integer >= 0, got {workers!r}")


# -- threads ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ThreadPlan:
    """How the host's cores are shared between decoding and the forward pass."""

    decode_workers: int  # decode threads (0: decode inline)
    torch_threads: int  # upper bound on torch's intra-op threads during the pass
    pin_memory: bool  # stage batches in page-locked memory (CUDA only: it has no use on CPU)
    non_blocking: bool  # host-to-device copies overlap the next batch's decode (CUDA only)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset
    narrow), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def thread_plan(device: str, cores: int, workers: int | None = None) -> ThreadPlan:
    """The thread plan for a pass on ``device`` with ``cores`` host cores.

    On a CPU the forward pass is the work: a 500x375 JPEG costs about 4 ms of one core to
    decode and transform, a ViT-S/14 bf16 forward about 21 ms on two cores
    (docs/performance.md), so decoding needs about a tenth of the cores. Up to 2 cores
    one decode thread shares them with the forward (it runs in the forward's gaps; a
    second thread only takes CPU from it); above that the decode threads get cores of
    their own, one per 8 cores.
    On CUDA the host only decodes: every core but one decodes, torch keeps one thread
    for stacking batches, and batches go through pinned memory with asynchronous copies.
    ``workers`` (``--workers``) overrides the number of decode threads.
    """
    cores = max(1, cores)
    if device.startswith("cuda"):
        decode = max(1, min(cores - 1, 16))
        plan = ThreadPlan(decode, 1, pin_memory=True, non_blocking=True)
    else:
        decode = 1 if cores <= 2 else max(1, cores // 8)
        torch_threads = cores if cores <= 2 else cores - decode
        plan = ThreadPlan(decode, torch_threads, pin_memory=False, non_blocking=False)
    if workers is not None:
        plan = ThreadPlan(workers, plan.torch_threads, plan.pin_memory, plan.non_blocking)
    return plan


# -- the plan --------------------------------------------------------------------------
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
class Plan:
    fingerprint: dict[str, Any]
    work: list[str]  # relative paths to extract, in path order
    shard_size: int
    # (size, mtime_ns) of each work image when planned: an image changed after an
    # interrupted run changes the plan id, so its stale shard is not reused.
    stats: list[Stat] = field(default_factory=list)

    @property
    def plan_id(self) -> str:
        binding = {k: self.fingerprint.get(k) for k in BINDING_KEYS}
        for optional in ("layers", "channels"):
            if binding.get(optional) is None:
                # Absent unless set: plans of earlier versions keep their id.
                binding.pop(optional, None)
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


def partial_dir(out_path: Path) -> Path:
    """The hidden work folder beside ``out_path`` (``.<name>.h5.partial``)."""
    return out_path.with_name(f".{out_path.name}.partial")


def shard_path(work_dir: Path, k: int) -> Path:
    return work_dir / f"shard-{k:06d}.h5"


def effective_shard_size(
    requested: int, dim: int, grid_hw: tuple[int, int] | None, layers: int = 1
) -> int:
    """Rows per shard: ``requested``, lowered so that one shard stays under SHARD_BYTES."""
    row_bytes = dim * 8 + (grid_hw[0] * grid_hw[1] * dim * 2 if grid_hw else 0)
    row_bytes += dim * 4 * layers if layers > 1 else 0
    return max(1, min(requested, SHARD_BYTES // row_bytes))


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data), encoding="utf-8")


def read_manifest(work_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((work_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return None
    return data


def check_space(
    out_path: Path,
    work_dir: Path,
    work_rows: int,
    total_rows: int,
    dim: int,
    grid_hw: tuple[int, int] | None,
    settings: ExtractSettings,
) -> None:
    """Refuse to start when the shards still to write plus the merged store cannot fit.

    Shards already on disk count as written. The estimate is the raw feature bytes
    plus a little per row for paths and HDF5 overhead; the old store stays until the
    new one replaces it, so it is not counted as free.
    """
    row_bytes = dim * 4 * (1 if settings.patches == "none" else 2) + 256
    row_bytes += dim * 4 * settings.layers if settings.layers > 1 else 0
    if grid_hw is not None:
        row_bytes += grid_hw[0] * grid_hw[1] * dim * 2
    done = sum(f.stat().st_size for f in work_dir.glob("shard-*.h5")) if work_dir.is_dir() else 0
    needed = max(0, work_rows * row_bytes - done) + total_rows * row_bytes
    require_free_space(
        out_path.parent, needed, f"extracting {work_rows} images into {out_path.name}"
    )
