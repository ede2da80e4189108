"""The one expensive pass: images -> backbone -> HDF5 store, resumable after any crash.

Crash safety (see docs/store.md for the full story)::

    <dataset>/<model>.h5                 the store; only ever replaced whole (os.replace)
    <dataset>/.<model>.h5.partial/       work folder of an unfinished run
        manifest.json                    fingerprint + ordered work list + shard size
        shard-000000.h5 ...              finished shards; each records the work-list
                                         indices of its rows (/index)
    <dataset>/<model>.h5.tmp             the merge in progress

Every file is written under a temporary name, fsynced and renamed into place, so a
``kill -9`` leaves either the previous complete state or finished shards to resume
from. Shard ``k`` always holds work-list rows ``[k*S, (k+1)*S)`` and is batched the same
way, so a resumed run computes exactly the numbers an uninterrupted one does. Because
shards name their rows by work-list index, a distributed run can split the shard
numbers between ranks (rank ``r`` takes shards ``r::world``) and rank 0 merges.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featkit.atomic import atomic_path
from featkit.errors import FeatkitError, FingerprintMismatchError, ImageDecodeError
from featkit.fingerprint import BINDING_KEYS, INFO_KEYS, differences, make_fingerprint
from featkit.integrity import require_free_space, verify_file, write_checked
from featkit.progress import SILENT, Progress
from featkit.store import (
    STATUS_FAILED,
    STATUS_OK,
    TMP_SUFFIX,
    Store,
    StoreWriter,
    atomic_hdf5,
    fsync_dir,
    open_store,
)

if TYPE_CHECKING:
    import h5py
    import torch

    from featkit.backbones import Backbone
    from featkit.data import Dataset, ImageRecord
    from featkit.distributed import Coordinator

logger = logging.getLogger("featkit")

PATCH_MODES = ("full", "mean", "none")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# A shard is held in memory until written; cap it whatever --shard-size says.
SHARD_BYTES = 64 << 20
# Rows per block when the merge copies features into the final store.
MERGE_BYTES = 32 << 20


@dataclass(frozen=True)
class ExtractSettings:
    """How to run the pass; everything that changes feature values is in the fingerprint."""

    patches: str = "mean"  # "full": CLS + patch mean + float16 grid; "mean": no grid; "none": CLS
    precision: str = "auto"  # "auto" (bf16 where native, else fp32) | "fp32" | "bf16" | "fp16"
    batch_size: int = 32  # images per forward pass
    workers: int = 2  # decode threads overlapping the forward pass; 0 decodes inline
    shard_size: int = 512  # rows per shard file (the unit of resumption)
    device: str = "auto"  # "auto" | "cpu" | "cuda[:N]"
    model_name: str | None = None  # model name in the store; default: backbone.name
    overwrite: bool = False  # replace a store made with other settings instead of refusing
    retry_failed: bool = False  # run previously failed images again


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


def default_decode_workers(cpu_count: int) -> int:
    """Decode threads for a machine: leave the other cores to the forward pass.

    On 2 cores one decode thread keeps up with a ViT-S forward and a second one only
    takes CPU from it (measured: docs/performance.md); bigger machines get two.
    """
    return 1 if cpu_count <= 2 else 2


def partial_dir(out_path: Path) -> Path:
    """The hidden work folder beside ``out_path`` (``.<name>.h5.partial``)."""
    return out_path.with_name(f".{out_path.name}.partial")


def effective_shard_size(requested: int, dim: int, grid_hw: tuple[int, int] | None) -> int:
    """Rows per shard: ``requested``, lowered so that one shard stays under SHARD_BYTES."""
    row_bytes = dim * 8 + (grid_hw[0] * grid_hw[1] * dim * 2 if grid_hw else 0)
    return max(1, min(requested, SHARD_BYTES // row_bytes))


def _check_settings(settings: ExtractSettings) -> None:
    if settings.patches not in PATCH_MODES:
        raise FeatkitError(
            f"patches: expected one of {', '.join(PATCH_MODES)}, got {settings.patches!r}"
        )
    for name in ("batch_size", "shard_size"):
        value = getattr(settings, name)
        if not isinstance(value, int) or value < 1:
            raise FeatkitError(f"{name}: expected a positive integer, got {value!r}")
    if not isinstance(settings.workers, int) or settings.workers < 0:
        raise FeatkitError(f"workers: expected an integer >= 0, got {settings.workers!r}")


# -- decoding ---------------------------------------------------------------------
def _decode_one(
    root: Path, transform: Callable[[Any], torch.Tensor], rel: str
) -> tuple[torch.Tensor | None, str]:
    from featkit.data import load_image

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
        blob = json.dumps(
            {
                "fp": {k: self.fingerprint.get(k) for k in BINDING_KEYS},
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

    def __init__(self, backbone: Backbone, device: str, precision: str, patches: str) -> None:
        self.backbone = backbone
        self.device = device
        self.precision = precision
        self.patches = patches

    def forward(
        self, images: list[torch.Tensor]
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        import torch

        from featkit.precision import autocast

        batch = torch.stack(images).to(self.device, non_blocking=True)
        with torch.inference_mode(), autocast(self.precision, self.device):
            out = self.backbone(batch)
        cls = out.cls.float().cpu().numpy()
        if self.patches == "none":
            return cls, None, None
        grid = out.patches.float()
        mean = grid.mean(dim=(1, 2)).cpu().numpy()
        full = grid.half().cpu().numpy() if self.patches == "full" else None
        return cls, mean, full


def _write_shard(
    path: Path,
    plan: _Plan,
    k: int,
    cls: np.ndarray,
    mean: np.ndarray | None,
    grid: np.ndarray | None,
    status: list[str],
    errors: list[str],
) -> None:
    from featkit.store import _str_dtype

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
                    c, m, g = runner.forward(images)
                    cls[where] = c
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
            _write_shard(_shard_path(work_dir, k), plan, k, cls, mean, grid, status, errors)
    finally:
        decoded.close()
        task.close()
    return done, time.perf_counter() - started


# -- the merge ---------------------------------------------------------------------
@dataclass
class _ShardIndex:
    """Where every work-list row lives among the shard files."""

    files: list[Path]
    shard_of: np.ndarray  # [W] int
    pos_of: np.ndarray  # [W] int
    status: np.ndarray  # [W] str
    errors: np.ndarray  # [W] str


def _index_shards(work_dir: Path, plan: _Plan) -> _ShardIndex:
    import h5py

    from featkit.store import _read_str

    size = len(plan.work)
    shard_of = np.full(size, -1, dtype=np.int64)
    pos_of = np.zeros(size, dtype=np.int64)
    status = np.empty(size, dtype=object)
    errors = np.empty(size, dtype=object)
    files = sorted(work_dir.glob("shard-*.h5"))
    for f, path in enumerate(files):
        with h5py.File(path, "r") as h5:
            if h5.attrs.get("plan_id") != plan.plan_id:
                continue
            index = h5["index"][:]
            shard_of[index] = f
            pos_of[index] = np.arange(len(index))
            status[index] = _read_str(h5["status"])
            errors[index] = _read_str(h5["error"])
    missing = np.flatnonzero(shard_of < 0)
    if len(missing):
        raise RuntimeError(
            f"{len(missing)} work rows have no shard (first: {plan.work[missing[0]]})"
        )
    return _ShardIndex(files, shard_of, pos_of, status, errors)


def _runs(rows: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """Split ascending ``rows`` into maximal consecutive runs: (offset, first, length)."""
    if len(rows) == 0:
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(rows)]])
    for s, e in zip(starts, ends, strict=True):
        yield int(s), int(rows[s]), int(e - s)


class _RowSources:
    """Where every row of the new store comes from: a shard or the previous store.

    Output rows are in path order; so are the work list and the previous store, so both
    sources are read forwards, in contiguous slices.
    """

    def __init__(self, paths: list[str], plan: _Plan, work_dir: Path, old: Store | None) -> None:
        work_pos = {p: i for i, p in enumerate(plan.work)}
        old_row = {p: i for i, p in enumerate(old.paths(include_failed=True))} if old else {}
        self.old = old
        self.shards = _index_shards(work_dir, plan) if plan.work else None
        self.from_new = np.array([p in work_pos for p in paths], dtype=bool)
        self.src = np.array(
            [
                work_pos[p] if new else old_row[p]
                for p, new in zip(paths, self.from_new, strict=True)
            ],
            dtype=np.int64,
        )
        self._open: dict[int, h5py.File] = {}

    def file_stats(self, now: dict[str, Stat], paths: list[str]) -> tuple[list[int], list[int]]:
        """(sizes, mtimes) for the new store: as planned for new rows, as recorded for reused.

        A reused row keeps what its store recorded (unknown in stores from older
        versions), so the store never claims a file state its features were not made from.
        """
        recorded = self.old.file_stats() if self.old is not None else None
        sizes, mtimes = [], []
        for p, s, new in zip(paths, self.src, self.from_new, strict=True):
            if new:
                size, mtime = now.get(p, (-1, -1))
            elif recorded is not None:
                size, mtime = int(recorded[0][s]), int(recorded[1][s])
            else:
                size, mtime = -1, -1
            sizes.append(size)
            mtimes.append(mtime)
        return sizes, mtimes

    def status_and_errors(self) -> tuple[list[str], list[str]]:
        old_status = np.asarray(self.old.status() if self.old else [], dtype=object)
        old_errors = np.asarray(self.old.errors() if self.old else [], dtype=object)
        status, errors = [], []
        for s, new in zip(self.src, self.from_new, strict=True):
            if new and self.shards is not None:
                status.append(str(self.shards.status[s]))
                errors.append(str(self.shards.errors[s]))
            else:
                status.append(str(old_status[s]))
                errors.append(str(old_errors[s]))
        return status, errors

    def _shard_file(self, f: int) -> h5py.File:
        import h5py

        if f not in self._open:
            # Shards are visited in order: keep only the last few open.
            for stale in list(self._open)[:-2]:
                self._open.pop(stale).close()
            assert self.shards is not None
            self._open[f] = h5py.File(self.shards.files[f], "r")
        return self._open[f]

    def fill(self, start: int, out: dict[str, np.ndarray]) -> None:
        """Fill ``out[name][i]`` with row ``start + i`` of every dataset ``name``."""
        stop = start + len(out["cls"])
        new, rows = self.from_new[start:stop], self.src[start:stop]
        if self.old is not None:
            old_at = np.flatnonzero(~new)
            for off, first, length in _runs(rows[old_at]):
                for name, array in out.items():
                    array[old_at[off : off + length]] = self.old.raw_rows(
                        name, first, first + length
                    )
        if self.shards is not None:
            new_at = np.flatnonzero(new)
            shard = self.shards.shard_of[rows[new_at]]
            for f in np.unique(shard).tolist():
                targets = new_at[shard == f]
                pos = self.shards.pos_of[rows[targets]]
                lo, hi = int(pos.min()), int(pos.max()) + 1
                handle = self._shard_file(f)
                for name, array in out.items():
                    array[targets] = handle[name][lo:hi][pos - lo]

    def close(self) -> None:
        for handle in self._open.values():
            handle.close()
        self._open.clear()


def _merge(
    out_path: Path,
    dataset: Dataset,
    plan: _Plan,
    work_dir: Path,
    previous: Path | None,
    model_name: str,
    dim: int,
    grid_hw: tuple[int, int] | None,
    patches: str,
    progress: Progress,
    stats: dict[str, Stat] | None = None,
) -> None:
    """Stream the previous store's rows and the shards into a new store, in path order."""
    records = sorted(dataset.records, key=lambda r: r.path)
    paths = [r.path for r in records]
    label_index = {name: i for i, name in enumerate(dataset.label_names)}
    shapes: dict[str, tuple[tuple[int, ...], Any]] = {"cls": ((dim,), np.float32)}
    if patches != "none":
        shapes["patch_mean"] = ((dim,), np.float32)
    if grid_hw is not None:
        shapes["patches"] = ((*grid_hw, dim), np.float16)
    row_bytes = sum(int(np.prod(shape)) * np.dtype(dt).itemsize for shape, dt in shapes.values())
    block = max(1, MERGE_BYTES // row_bytes)

    with contextlib.ExitStack() as stack:
        # Entered first so that it exits last: the new file is fsynced and moved into
        # place only after the previous store and the shards are closed.
        h5 = stack.enter_context(atomic_hdf5(out_path))
        old = stack.enter_context(open_store(previous)) if previous is not None else None
        if old is not None:
            # Rows copied from the previous store get a fresh checksum in the new one,
            # so damage there must be found now or it would be blessed.
            damage = old.verify()
            if damage:
                raise old._damaged("; ".join(damage))
        sources = _RowSources(paths, plan, work_dir, old)
        stack.callback(sources.close)
        status, errors = sources.status_and_errors()
        file_sizes, file_mtimes = sources.file_stats(stats or {}, paths)
        task = progress.task("merge", total=len(records))
        stack.callback(task.close)
        writer = StoreWriter(
            h5,
            num_rows=len(records),
            dim=dim,
            dataset=dataset.name,
            model=model_name,
            label_names=dataset.label_names,
            fingerprint=plan.fingerprint,
            patch_mean="patch_mean" in shapes,
            grid=grid_hw,
        )
        h5.attrs["plan_id"] = plan.plan_id
        # Where the paths are relative to (for a manifest with --allow-outside-root, the
        # resolved folder above every file): a record, not a key.
        h5.attrs["data_root"] = str(dataset.root)
        for start in range(0, len(records), block):
            n = min(len(records), start + block) - start
            out = {name: np.empty((n, *shape), dtype=dt) for name, (shape, dt) in shapes.items()}
            sources.fill(start, out)
            writer.write_features(start, out["cls"], out.get("patch_mean"), out.get("patches"))
            task.advance(n)
        writer.write_images(
            paths=paths,
            labels=np.array(
                [-1 if r.label is None else label_index[r.label] for r in records], dtype=np.int64
            ),
            splits=[r.split or "" for r in records],
            status=status,
            errors=errors,
            sizes=file_sizes,
            mtimes=file_mtimes,
        )


# -- the entry point -------------------------------------------------------------------
def _existing_store(out_path: Path, fingerprint: dict[str, Any], overwrite: bool) -> Store | None:
    """The previous store if it may be extended; raises on a fingerprint mismatch."""
    if overwrite or not out_path.exists():
        return None
    try:
        store = open_store(out_path)
    except FeatkitError as err:
        raise FeatkitError(f"{err}; pass --overwrite to replace it") from None
    diffs = differences(store.fingerprint, fingerprint, BINDING_KEYS)
    if diffs:
        store.close()
        raise FingerprintMismatchError(
            f"store {out_path}: expected the settings it was made with, got different "
            f"{'; '.join(diffs)} (pass --overwrite to replace it, or --name/--out to keep both)"
        )
    for line in differences(store.fingerprint, fingerprint, INFO_KEYS):
        logger.warning("store %s was made with %s; extending it anyway", out_path, line)
    return store


def _matches(store: Store, dataset: Dataset) -> bool:
    """True when the store already has exactly the dataset's rows, labels and splits."""
    records = dataset.records
    if store.num_rows != len(records) or store.label_names != tuple(dataset.label_names):
        return False
    index = {name: i for i, name in enumerate(dataset.label_names)}
    labels = np.array([-1 if r.label is None else index[r.label] for r in records])
    return (
        store.paths(include_failed=True) == [r.path for r in records]
        and np.array_equal(store.labels(include_failed=True), labels)
        and store.splits(include_failed=True) == [r.split or "" for r in records]
    )


def _work_list(
    records: Iterable[ImageRecord],
    store: Store | None,
    retry: bool,
    stats: dict[str, Stat] | None = None,
) -> list[str]:
    """The images to extract: new ones, changed ones, and failed ones with ``retry``.

    A row is keyed by path, size and modification time: an image replaced under the
    same path is extracted again. Rows of stores that recorded no file state (older
    versions) are kept as they are.
    """
    if store is None:
        return sorted(r.path for r in records)
    paths = store.paths(include_failed=True)
    have = dict(zip(paths, store.status(), strict=True))
    recorded = store.file_stats()
    changed: set[str] = set()
    if recorded is not None and stats:
        for p, size, mtime in zip(paths, recorded[0].tolist(), recorded[1].tolist(), strict=True):
            now = stats.get(p)
            if size >= 0 and now is not None and now[0] >= 0 and now != (size, mtime):
                changed.add(p)
    return sorted(
        r.path
        for r in records
        if r.path not in have or r.path in changed or (retry and have[r.path] != STATUS_OK)
    )


def _prepare_work_dir(
    work_dir: Path, plan: _Plan, store_plan_id: str | None, overwrite: bool
) -> None:
    """Reuse the work folder of an interrupted identical run; otherwise start it afresh."""
    manifest = _read_manifest(work_dir) if work_dir.exists() else None
    if manifest is not None:
        found = manifest.get("plan_id")
        if found == plan.plan_id:
            return  # resume
        # found == store_plan_id: killed after its merge replaced the store; just tidy up.
        if found != store_plan_id and not overwrite:
            diffs = differences(manifest.get("fingerprint", {}), plan.fingerprint, BINDING_KEYS)
            if diffs:
                raise FingerprintMismatchError(
                    f"unfinished extraction {work_dir}: expected the settings it was started "
                    f"with, got different {'; '.join(diffs)} (pass --overwrite to discard it)"
                )
            logger.warning(
                "the images changed since the interrupted run in %s; starting that part again",
                work_dir,
            )
    if work_dir.exists():
        shutil.rmtree(work_dir)
    if plan.work:
        work_dir.mkdir(parents=True)
        _write_json_atomic(work_dir / MANIFEST, plan.to_json())


@contextlib.contextmanager
def _exclusive(out_path: Path) -> Iterator[None]:
    """One writer per store: a second ``featkit extract`` on it fails instead of interleaving.

    The lock is an flock on a hidden file; the kernel drops it when the process dies, so
    a killed run never leaves the store locked.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock, as before
        yield
        return
    lock_path = out_path.with_name(f".{out_path.name}.lock")
    with open(lock_path, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FeatkitError(
                f"store {out_path}: expected no other extraction writing it, but one is "
                "running (wait for it, or use --out/--name for a separate store)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def extract(
    dataset: Dataset,
    backbone: Backbone,
    out_path: Path,
    settings: ExtractSettings | None = None,
    progress: Progress = SILENT,
    coordinator: Coordinator | None = None,
) -> ExtractReport:
    """Extract every image of ``dataset`` with ``backbone`` into the store ``out_path``.

    Resumes an interrupted run, extracts only images the store does not have yet, and
    refuses (:class:`FingerprintMismatchError`) to extend a store made with other
    weights, preprocessing, precision, image size or patch mode unless
    ``settings.overwrite``. Images that cannot be decoded become ``failed`` rows with
    their reason. The backbone is moved to the chosen device and put in eval mode.

    ``coordinator`` (see :mod:`featkit.distributed`) splits the pass over processes:
    rank 0 plans and merges, rank ``r`` extracts shards ``r::world``. Every rank
    returns a report on the finished store; ``extracted`` counts its own share.
    """
    from featkit.distributed import LOCAL
    from featkit.precision import detect_hardware, resolve_device, resolve_precision

    settings = settings or ExtractSettings()
    coordinator = coordinator or LOCAL
    started = time.perf_counter()
    _check_settings(settings)
    out_path = Path(out_path)
    if not dataset.records:
        raise FeatkitError(f"data set {dataset.name}: expected at least one image, got none")
    crop, patch = backbone.preprocessing.crop, backbone.patch_size
    if crop % patch:
        raise FeatkitError(
            f"image size: expected a multiple of the patch size {patch} of {backbone.name}, "
            f"got {crop}"
        )
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, detect_hardware(device))
    fingerprint = make_fingerprint(backbone, precision=precision, patches=settings.patches)
    dim = backbone.embed_dim
    grid_hw = (crop // patch, crop // patch) if settings.patches == "full" else None
    work_dir = partial_dir(out_path)
    main = coordinator.rank == 0
    stats: dict[str, Stat] = {}

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(out_path) if main else contextlib.nullcontext():
        # 1. Rank 0 plans (and writes the manifest); the others read the manifest.
        plan, previous, up_to_date = None, None, False
        if main:
            stats = file_stats(dataset)
            plan, previous, up_to_date = _plan(
                dataset, out_path, settings, fingerprint, dim, grid_hw, stats
            )
        coordinator.barrier()
        if not main:
            plan = _plan_from_manifest(work_dir, fingerprint)
        # 2. Every rank extracts its share of the missing shards.
        extracted, seconds = 0, 0.0
        if plan is not None and plan.work and not up_to_date:
            mine = range(coordinator.rank, plan.num_shards, coordinator.world)
            todo = [k for k in mine if not _shard_done(_shard_path(work_dir, k), plan, k)]
            if todo:
                backbone.to(device).eval()
                runner = _Runner(backbone, device, precision, settings.patches)
                extracted, seconds = _run_shards(
                    plan,
                    todo,
                    work_dir,
                    dataset.root,
                    runner,
                    settings,
                    grid_hw or (0, 0),
                    progress,
                )
        coordinator.barrier()
        # 3. Rank 0 merges.
        if main and plan is not None and not up_to_date:
            model_name = settings.model_name or backbone.name
            _merge(
                out_path,
                dataset,
                plan,
                work_dir,
                previous,
                model_name,
                dim,
                grid_hw,
                settings.patches,
                progress,
                stats,
            )
            if work_dir.exists():
                shutil.rmtree(work_dir)
                fsync_dir(out_path.parent)
        coordinator.barrier()

    with open_store(out_path) as final:
        failed = final.failures()
        rows = final.num_rows
    return ExtractReport(
        path=out_path,
        rows=rows,
        extracted=extracted,
        reused=rows - extracted,
        failed=failed,
        seconds=time.perf_counter() - started,
        images_per_second=extracted / seconds if seconds > 0 else 0.0,
        file_size=out_path.stat().st_size,
        precision=precision,
        device=device,
        up_to_date=up_to_date,
    )


def _plan(
    dataset: Dataset,
    out_path: Path,
    settings: ExtractSettings,
    fingerprint: dict[str, Any],
    dim: int,
    grid_hw: tuple[int, int] | None,
    stats: dict[str, Stat],
) -> tuple[_Plan, Path | None, bool]:
    """(plan, previous store to extend or None, already up to date?), work folder ready."""
    store = _existing_store(out_path, fingerprint, settings.overwrite)
    try:
        store_plan_id = store.attr("plan_id") if store is not None else None
        work = _work_list(dataset.records, store, settings.retry_failed, stats)
        up_to_date = store is not None and not work and _matches(store, dataset)
    finally:
        if store is not None:
            store.close()
    shard_size = effective_shard_size(settings.shard_size, dim, grid_hw)
    plan = _Plan(
        fingerprint=fingerprint,
        work=work,
        shard_size=shard_size,
        stats=[stats.get(p, (-1, -1)) for p in work],
    )
    work_dir = partial_dir(out_path)
    _prepare_work_dir(work_dir, plan, store_plan_id, settings.overwrite)
    if not up_to_date:
        _check_space(out_path, work_dir, len(work), len(dataset.records), dim, grid_hw, settings)
    stale_tmp = out_path.with_name(out_path.name + TMP_SUFFIX)
    if stale_tmp.exists():
        stale_tmp.unlink()
    return plan, (out_path if store is not None else None), up_to_date


def _plan_from_manifest(work_dir: Path, fingerprint: dict[str, Any]) -> _Plan | None:
    """The plan rank 0 wrote; None when it found nothing to extract."""
    manifest = _read_manifest(work_dir)
    if manifest is None:
        return None
    diffs = differences(manifest["fingerprint"], fingerprint, BINDING_KEYS)
    if diffs:
        raise FingerprintMismatchError(
            f"extraction {work_dir}: expected every process to use the settings of rank 0, "
            f"got different {'; '.join(diffs)}"
        )
    plan = _Plan(
        fingerprint=manifest["fingerprint"],
        work=list(manifest["work"]),
        shard_size=int(manifest["shard_size"]),
        stats=[(int(a), int(b)) for a, b in manifest.get("stats", [])],
    )
    if plan.plan_id != manifest.get("plan_id"):
        raise RuntimeError(f"manifest {work_dir / MANIFEST} does not match its own plan id")
    return plan


def _check_space(
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
    if grid_hw is not None:
        row_bytes += grid_hw[0] * grid_hw[1] * dim * 2
    done = sum(f.stat().st_size for f in work_dir.glob("shard-*.h5")) if work_dir.is_dir() else 0
    needed = max(0, work_rows * row_bytes - done) + total_rows * row_bytes
    require_free_space(
        out_path.parent, needed, f"extracting {work_rows} images into {out_path.name}"
    )
