"""The merge phase: the previous store + the shards -> the new store.

Rows are streamed in path order, block by block, into a file that ``atomic_hdf5``
verifies before it replaces the store; the previous store is verified first, so that
damaged rows are never copied under a fresh checksum.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featkit.extraction.plan import Plan, Stat
from featkit.progress import Progress
from featkit.store.reader import Store, StoreWriter, atomic_hdf5, open_store

if TYPE_CHECKING:
    import h5py

    from featkit.data.images import Dataset

# Rows per block when the merge copies features into the final store.
MERGE_BYTES = 32 << 20


@dataclass
class _ShardIndex:
    """Where every work-list row lives among the shard files."""

    files: list[Path]
    shard_of: np.ndarray  # [W] int
    pos_of: np.ndarray  # [W] int
    status: np.ndarray  # [W] str
    errors: np.ndarray  # [W] str


def index_shards(work_dir: Path, plan: Plan) -> _ShardIndex:
    import h5py

    from featkit.store.reader import _read_str

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


def runs(rows: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """Split ascending ``rows`` into maximal consecutive runs: (offset, first, length)."""
    if len(rows) == 0:
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(rows)]])
    for s, e in zip(starts, ends, strict=True):
        yield int(s), int(rows[s]), int(e - s)


class RowSources:
    """Where every row of the new store comes from: a shard or the previous store.

    Output rows are in path order; so are the work list and the previous store, so both
    sources are read forwards, in contiguous slices.
    """

    def __init__(self, paths: list[str], plan: Plan, work_dir: Path, old: Store | None) -> None:
        work_pos = {p: i for i, p in enumerate(plan.work)}
        old_row = {p: i for i, p in enumerate(old.paths(include_failed=True))} if old else {}
        self.old = old
        self.shards = index_shards(work_dir, plan) if plan.work else None
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
            for off, first, length in runs(rows[old_at]):
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


def merge(
    out_path: Path,
    dataset: Dataset,
    plan: Plan,
    work_dir: Path,
    previous: Path | None,
    model_name: str,
    dim: int,
    grid_hw: tuple[int, int] | None,
    patches: str,
    progress: Progress,
    stats: dict[str, Stat] | None = None,
    cost: dict[str, Any] | None = None,
    mean_is_cls: bool = False,
) -> None:
    """Stream the previous store's rows and the shards into a new store, in path order.

    ``mean_is_cls``: the backbone's patch mean is its CLS; the store links
    ``patch_mean`` to ``cls`` instead of holding a second copy.
    """
    records = sorted(dataset.records, key=lambda r: r.path)
    paths = [r.path for r in records]
    label_index = {name: i for i, name in enumerate(dataset.label_names)}
    shapes: dict[str, tuple[tuple[int, ...], Any]] = {"cls": ((dim,), np.float32)}
    if patches != "none" and not mean_is_cls:
        shapes["patch_mean"] = ((dim,), np.float32)
    if grid_hw is not None:
        shapes["patches"] = ((*grid_hw, dim), np.float16)
    layers = int(plan.fingerprint.get("layers", 1))
    if layers > 1:
        shapes["cls_layers"] = ((layers, dim), np.float32)
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
        sources = RowSources(paths, plan, work_dir, old)
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
            patch_mean=patches != "none",
            patch_mean_is_cls=mean_is_cls,
            grid=grid_hw,
            layers=layers,
        )
        h5.attrs["plan_id"] = plan.plan_id
        # Where the paths are relative to (for a manifest with --allow-outside-root, the
        # resolved folder above every file): a record, not a key.
        h5.attrs["data_root"] = str(dataset.root)
        if cost is not None:  # time and memory of the pass (featkit.cost)
            h5.attrs["cost"] = json.dumps(cost, sort_keys=True)
        for start in range(0, len(records), block):
            n = min(len(records), start + block) - start
            out = {name: np.empty((n, *shape), dtype=dt) for name, (shape, dt) in shapes.items()}
            sources.fill(start, out)
            writer.write_features(
                start,
                out["cls"],
                out.get("patch_mean"),
                out.get("patches"),
                cls_layers=out.get("cls_layers"),
            )
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
