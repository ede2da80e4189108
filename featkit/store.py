"""The HDF5 embedding store: one file per (dataset, model), read by every protocol.

Layout (``format_version`` 1)::

    /features/cls         [N, D]       float32
    /features/patch_mean  [N, D]       float32   (absent with --patches none or after import)
    /features/patches     [N, h, w, D] float16   (only with --patches full)
    /images/path          [N] utf-8     relative path, rows sorted by it
    /images/label         [N] int64     index into label_names, -1 = unlabelled
    /images/split         [N] utf-8     "train" | "val" | "test" | ""
    /images/status        [N] utf-8     "ok" | "failed"
    /images/error         [N] utf-8     "" when ok, else the reason
    /images/size          [N] int64     file size in bytes when extracted (-1: unknown)
    /images/mtime_ns      [N] int64     file modification time when extracted (-1: unknown)
    attrs: format_version, dataset, model, label_names (JSON), fingerprint (JSON)
    every dataset: attrs["sha256"], the checksum of the values written (featkit.integrity)

Every discovered image has a row; failed rows hold NaN features. Readers select rows
with a boolean mask built from the small per-row arrays and read the big arrays in
contiguous blocks (HDF5 slices), never with index lists, which h5py serves row by row.

Files are only ever written through :func:`atomic_hdf5` (temporary name, fsync,
``os.replace``), so a reader never sees a half-written store: HDF5 has no journal and a
writer killed mid-write can leave a file that will not open. Before the rename the
file is reopened and every dataset checked against the checksum recorded from the values
written, because HDF5 can lose an out-of-space error while closing a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from featkit.atomic import fsync_dir
from featkit.errors import FeatkitError, StoreDamagedError
from featkit.integrity import (
    CHECKSUM_ATTR,
    Hasher,
    disk_full,
    is_disk_full,
    require_free_space,
    verify_file,
    write_checked,
)

if TYPE_CHECKING:
    import h5py

FORMAT_VERSION = 1
FEATURE_KINDS = ("cls", "patch_mean", "cls+patch_mean")
SPLITS = ("train", "val", "test", "")
STATUS_OK = "ok"
STATUS_FAILED = "failed"
TMP_SUFFIX = ".tmp"

# Rows read per HDF5 slice: large enough to amortise per-call overhead, small enough
# that reading [N, D] features never needs more than a few MiB beyond the result.
READ_BLOCK = 4096


def _str_dtype() -> Any:
    import h5py

    return h5py.string_dtype("utf-8")


@contextlib.contextmanager
def atomic_hdf5(path: Path, tmp_path: Path | None = None) -> Iterator[h5py.File]:
    """Write an HDF5 file under a temporary name and move it into place only when complete.

    After closing, the file is fsynced, reopened and every dataset compared with the
    checksum recorded when it was written (see :mod:`featkit.integrity`); only a file
    that passes is renamed into place. Running out of space raises
    :class:`~featkit.errors.DiskFullError`, a file that fails verification
    :class:`~featkit.errors.StoreDamagedError`; either way the previous file (if any)
    is untouched. A crash before the ``os.replace`` leaves a stale temporary file that
    the next writer overwrites.
    """
    import h5py

    path = Path(path)
    tmp = Path(tmp_path) if tmp_path is not None else path.with_name(path.name + TMP_SUFFIX)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        try:
            with h5py.File(tmp, "w") as h5:
                yield h5
                h5.flush()
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        except OSError as err:
            if is_disk_full(err):
                raise disk_full(path) from None
            raise
        damage = verify_file(tmp)
        if damage:
            raise StoreDamagedError(
                f"{path}: the file just written failed verification ({damage[0]}), so it "
                "was not kept; the disk may be full or failing: free space and rerun the "
                "same command, it resumes where it stopped"
            )
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        # A Python-level failure cleans up; a kill -9 leaves the temp file for the next run.
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class StoreWriter:
    """Fills a freshly created store block by block (rows must come in path order).

    The caller owns the file (normally from :func:`atomic_hdf5`); the writer creates
    the datasets with their final size so that memory stays flat in ``num_rows``.
    """

    def __init__(
        self,
        h5: h5py.File,
        *,
        num_rows: int,
        dim: int,
        dataset: str,
        model: str,
        label_names: Sequence[str],
        fingerprint: dict[str, Any],
        patch_mean: bool = True,
        grid: tuple[int, int] | None = None,
    ) -> None:
        self.num_rows = num_rows
        h5.attrs["format_version"] = FORMAT_VERSION
        h5.attrs["dataset"] = dataset
        h5.attrs["model"] = model
        h5.attrs["label_names"] = json.dumps(list(label_names))
        h5.attrs["fingerprint"] = json.dumps(fingerprint, sort_keys=True)
        feats = h5.create_group("features")
        chunk_rows = max(1, min(num_rows, max(1, (1 << 20) // max(1, 4 * dim))))
        shapes: dict[str, tuple[tuple[int, ...], str, tuple[int, ...] | None]] = {
            "cls": ((dim,), "f4", (chunk_rows, dim))
        }
        if patch_mean:
            shapes["patch_mean"] = ((dim,), "f4", (chunk_rows, dim))
        if grid is not None:
            shapes["patches"] = ((*grid, dim), "f2", (1, *grid, dim))
        self._datasets: dict[str, h5py.Dataset] = {}
        self._hashers: dict[str, Hasher] = {}
        for name, (shape, dtype, chunks) in shapes.items():
            ds = feats.create_dataset(
                name, shape=(num_rows, *shape), dtype=dtype, chunks=chunks if num_rows else None
            )
            self._datasets[name] = ds
            self._hashers[name] = Hasher(dtype)
            ds.attrs[CHECKSUM_ATTR] = self._hashers[name].hexdigest()
        self._next = 0
        self._images = h5.create_group("images")

    def write_features(
        self,
        start: int,
        cls: np.ndarray,
        patch_mean: np.ndarray | None = None,
        patches: np.ndarray | None = None,
    ) -> None:
        """Write rows ``start : start + len(cls)``; blocks come in order, without gaps.

        The order is what lets each dataset's checksum be computed from the values
        handed over, block by block; it is recorded after every block.
        """
        if start != self._next:
            raise ValueError(f"rows must be written in order: expected start {self._next}")
        given = {"cls": cls, "patch_mean": patch_mean, "patches": patches}
        for name in self._datasets:
            if given[name] is None:
                what = "patch_mean" if name == "patch_mean" else "a patch grid"
                raise ValueError(f"this store has {what}; pass it")
        stop = start + len(cls)
        for name, ds in self._datasets.items():
            # Convert once, so that the bytes hashed are the bytes h5py stores.
            values = np.ascontiguousarray(given[name], dtype=ds.dtype)
            ds[start:stop] = values
            self._hashers[name].update(values)
            ds.attrs[CHECKSUM_ATTR] = self._hashers[name].hexdigest()
        self._next = stop

    def write_images(
        self,
        paths: Sequence[str],
        labels: np.ndarray,
        splits: Sequence[str],
        status: Sequence[str],
        errors: Sequence[str],
        sizes: Sequence[int] | None = None,
        mtimes: Sequence[int] | None = None,
    ) -> None:
        """The per-row metadata, all at once (a few bytes per row).

        ``sizes`` and ``mtimes`` (nanoseconds) are the image files' as they were when
        extracted, so that a changed image is noticed; -1 where unknown.
        """
        unknown = [-1] * self.num_rows
        columns: dict[str, Sequence[Any] | np.ndarray] = {
            "paths": paths,
            "labels": labels,
            "splits": splits,
            "status": status,
            "errors": errors,
            "sizes": unknown if sizes is None else sizes,
            "mtimes": unknown if mtimes is None else mtimes,
        }
        for name, values in columns.items():
            if len(values) != self.num_rows:
                raise ValueError(f"{name}: expected {self.num_rows} rows, got {len(values)}")
        sdt = _str_dtype()
        group = self._images
        write_checked(group, "path", paths, sdt)
        write_checked(group, "label", np.asarray(labels, dtype=np.int64))
        write_checked(group, "split", splits, sdt)
        write_checked(group, "status", status, sdt)
        write_checked(group, "error", errors, sdt)
        write_checked(group, "size", np.asarray(columns["sizes"], dtype=np.int64))
        write_checked(group, "mtime_ns", np.asarray(columns["mtimes"], dtype=np.int64))


def _read_str(ds: h5py.Dataset) -> np.ndarray:
    if ds.shape[0] == 0:
        return np.zeros(0, dtype=object)
    return np.asarray(ds.asstr()[:], dtype=object)


class Store:
    """A read-only view of one store file; use as a context manager or call :meth:`close`.

    Row selections (``split``, ``include_failed``) are the same for every method, so
    ``features(split="train")[i]``, ``labels(split="train")[i]`` and
    ``paths(split="train")[i]`` always describe the same image.
    """

    def __init__(self, path: str | Path) -> None:
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise FeatkitError(f"store {self.path}: expected an HDF5 store file, found nothing")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as err:
            raise FeatkitError(
                f"store {self.path}: expected a featkit HDF5 store, the file cannot be "
                f"opened ({err})"
            ) from None
        try:
            self._load_meta()
        except (KeyError, ValueError, TypeError) as err:
            self._h5.close()
            raise FeatkitError(
                f"store {self.path}: expected a featkit store (format {FORMAT_VERSION}), "
                f"got a file without the store layout ({err})"
            ) from None
        damage = self._check_rows()
        if damage:
            self._h5.close()
            raise self._damaged(damage)
        # Feature datasets whose checksum a full read has confirmed (see _read_rows).
        self._verified: set[str] = set()

    def _damaged(self, damage: str) -> StoreDamagedError:
        return StoreDamagedError(
            f"store {self.path}: damaged: {damage}; extract it again with --overwrite "
            "(or import it again)"
        )

    def _check_rows(self) -> str:
        """The first damage in the per-row arrays (small, so checked at every open)."""
        images = self._h5["images"]
        n = self.num_rows
        loaded = {
            "path": self._paths,
            "label": self._labels,
            "split": self._splits,
            "status": self._status,
            "error": self._errors,
        }
        if self._stats is not None:
            loaded["size"], loaded["mtime_ns"] = self._stats
        for name, values in loaded.items():
            if len(values) != n:
                return f"/images/{name} has {len(values)} rows, /images/path has {n}"
        for name in self.feature_kinds:
            rows = self._h5["features"][name].shape[0]
            if rows != n:
                return f"/features/{name} has {rows} rows, the store has {n}"
        classes = len(self.label_names)
        bad = np.flatnonzero((self._labels < -1) | (self._labels >= classes))
        if len(bad):
            row = int(bad[0])
            return (
                f"label {int(self._labels[row])} in row {row} ({self._paths[row]}) is out of "
                f"range for {classes} classes ({len(bad)} such rows)"
            )
        odd = sorted(set(self._status.tolist()) - {STATUS_OK, STATUS_FAILED})
        if odd:
            return f"status values {', '.join(repr(v) for v in odd[:3])} are not ok/failed"
        # Checksums last: a label out of range says more than "does not match".
        for name, values in loaded.items():
            recorded = images[name].attrs.get(CHECKSUM_ATTR)
            if recorded is not None:
                hasher = Hasher(values.dtype)
                hasher.update(values)
                if hasher.hexdigest() != str(recorded):
                    return f"/images/{name} does not match its checksum"
        return ""

    def _load_meta(self) -> None:
        attrs = self._h5.attrs
        version = int(attrs["format_version"])
        if version > FORMAT_VERSION:
            raise ValueError(f"format_version {version} is newer than this featkit reads")
        self.dataset: str = str(attrs["dataset"])
        self.model: str = str(attrs["model"])
        self.label_names: tuple[str, ...] = tuple(json.loads(attrs["label_names"]))
        self.fingerprint: dict[str, Any] = json.loads(attrs["fingerprint"])
        images = self._h5["images"]
        self._paths = _read_str(images["path"])
        self._labels = np.asarray(images["label"][:], dtype=np.int64)
        self._splits = _read_str(images["split"])
        self._status = _read_str(images["status"])
        self._errors = _read_str(images["error"])
        self.num_rows: int = len(self._paths)
        feats = self._h5["features"]
        kinds = [k for k in ("cls", "patch_mean", "patches") if k in feats]
        self.feature_kinds: tuple[str, ...] = tuple(kinds)
        self.dim: int = int(feats["cls"].shape[1])
        stats = [images[k] for k in ("size", "mtime_ns") if k in images]
        self._stats: tuple[np.ndarray, np.ndarray] | None = (
            (np.asarray(stats[0][:], np.int64), np.asarray(stats[1][:], np.int64))
            if len(stats) == 2
            else None
        )

    def file_stats(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(size, mtime_ns) of every row's image when it was extracted; None if not recorded."""
        return self._stats

    def verify(self) -> list[str]:
        """Every damage found by reading the whole store (empty when it is whole).

        Checks the per-row arrays (as at open), every dataset against the checksum
        recorded when it was written, and that the features of ok rows are finite.
        """
        damage = [d for d in [self._check_rows()] if d]
        ok = self._status == STATUS_OK
        feats = self._h5["features"]
        for name in self.feature_kinds:
            ds = feats[name]
            recorded = ds.attrs.get(CHECKSUM_ATTR)
            hasher = Hasher(ds.dtype)
            finite = True
            row_bytes = max(1, int(np.prod(ds.shape[1:])) * ds.dtype.itemsize)
            step = max(1, (16 << 20) // row_bytes)
            for start in range(0, self.num_rows, step):
                block = ds[start : start + step]
                hasher.update(block)
                sel = ok[start : start + len(block)]
                finite = finite and bool(np.isfinite(block[sel]).all())
            if recorded is not None and hasher.hexdigest() != str(recorded):
                damage.append(f"/features/{name} does not match its checksum")
            if not finite:
                damage.append(f"/features/{name} has NaN or inf in ok rows")
        if not self.has_checksums():
            damage.append("no checksums recorded (written by an older featkit)")
        return damage

    def has_checksums(self) -> bool:
        return all(CHECKSUM_ATTR in self._h5["features"][name].attrs for name in self.feature_kinds)

    def attr(self, name: str, default: Any = None) -> Any:
        """A file attribute beyond the contract (e.g. the extraction ``plan_id``)."""
        return self._h5.attrs.get(name, default)

    # -- context manager ------------------------------------------------------------
    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, rows={self.num_rows}, model={self.model!r})"

    # -- row selection ----------------------------------------------------------------
    def mask(self, split: str | None = None, *, include_failed: bool = False) -> np.ndarray:
        """Boolean ``[N]``: the rows a read with these arguments returns."""
        keep = np.ones(self.num_rows, dtype=bool)
        if not include_failed:
            keep &= self._status == STATUS_OK
        if split is not None:
            present = set(self._splits.tolist())
            if split not in present:
                shown = ", ".join(repr(s) for s in sorted(present)) or "none"
                raise FeatkitError(
                    f"store {self.path}: expected a split present in the store, got "
                    f"{split!r} (splits here: {shown})"
                )
            keep &= self._splits == split
        return keep

    def rows(self, split: str | None = None, *, include_failed: bool = False) -> np.ndarray:
        """Row numbers (int64, ascending) of the selection."""
        return np.flatnonzero(self.mask(split, include_failed=include_failed)).astype(np.int64)

    def _read_rows(self, name: str, keep: np.ndarray) -> np.ndarray:
        ds = self._h5["features"][name]
        out = np.empty((int(keep.sum()), *ds.shape[1:]), dtype=np.float32)
        recorded = ds.attrs.get(CHECKSUM_ATTR)
        # The first read of a dataset reads every block and checks the checksum on the
        # way (hashing costs far less than the read); later reads skip unselected blocks.
        hasher = Hasher(ds.dtype) if recorded is not None and name not in self._verified else None
        ok = self._status == STATUS_OK
        row_size = int(np.prod(ds.shape[1:]))
        filled, bad_rows = 0, 0
        for start in range(0, self.num_rows, READ_BLOCK):
            sel = keep[start : start + READ_BLOCK]
            count = int(sel.sum())
            if count == 0 and hasher is None:
                continue
            # One contiguous slice per block, masked in memory.
            block = ds[start : start + len(sel)]
            if hasher is not None:
                hasher.update(block)
            picked = block[sel]
            okay = picked[ok[start : start + len(sel)][sel]].reshape(-1, row_size)
            bad_rows += int((~np.isfinite(okay).all(axis=1)).sum())
            out[filled : filled + count] = picked
            filled += count
        if bad_rows:
            raise StoreDamagedError(
                f"store {self.path}: expected finite {name} features, got NaN/inf in "
                f"{bad_rows} image(s) marked ok: the store is damaged; extract it again "
                "with --overwrite"
            )
        if hasher is not None:
            if hasher.hexdigest() != str(recorded):
                raise self._damaged(f"/features/{name} does not match its checksum")
            self._verified.add(name)
        return out

    def _require(self, kind: str) -> None:
        if kind in self.feature_kinds:
            return
        if kind == "patch_mean":
            raise FeatkitError(
                f"store {self.path}: expected patch_mean features, but this store has only "
                f"{', '.join(self.feature_kinds)} (imported features or --patches none); "
                "use kind='cls'"
            )
        raise FeatkitError(
            f"store {self.path}: expected a patch grid, but it was not stored "
            "(extract again with --patches full)"
        )

    # -- reads ---------------------------------------------------------------------
    def features(
        self, kind: str = "cls", split: str | None = None, *, include_failed: bool = False
    ) -> np.ndarray:
        """float32 ``[n, D]`` (``[n, 2D]`` for ``"cls+patch_mean"``) of the selected rows."""
        if kind not in FEATURE_KINDS:
            raise FeatkitError(
                f"feature kind: expected one of {', '.join(FEATURE_KINDS)}, got {kind!r}"
            )
        keep = self.mask(split, include_failed=include_failed)
        parts = kind.split("+")
        for part in parts:
            self._require(part)
        arrays = [self._read_rows(part, keep) for part in parts]
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=1)

    def labels(self, split: str | None = None, *, include_failed: bool = False) -> np.ndarray:
        """int64 ``[n]`` indices into :attr:`label_names` (-1 = unlabelled)."""
        return self._labels[self.mask(split, include_failed=include_failed)].copy()

    def paths(self, split: str | None = None, *, include_failed: bool = False) -> list[str]:
        return [str(p) for p in self._paths[self.mask(split, include_failed=include_failed)]]

    def splits(self, *, include_failed: bool = False) -> list[str]:
        """The split of each selected row, ``""`` when the data named none."""
        return [str(s) for s in self._splits[self.mask(include_failed=include_failed)]]

    def status(self) -> list[str]:
        """``"ok"`` or ``"failed"`` for every row."""
        return [str(s) for s in self._status]

    def errors(self) -> list[str]:
        """The failure reason of every row (``""`` for ok rows)."""
        return [str(e) for e in self._errors]

    def raw_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of ``/features/<name>`` as stored, failed rows included."""
        self._require(name)
        return np.asarray(self._h5["features"][name][start:stop])

    def failures(self) -> list[tuple[str, str]]:
        """(path, reason) of every failed row, in path order."""
        bad = self._status != STATUS_OK
        return [(str(p), str(e)) for p, e in zip(self._paths[bad], self._errors[bad], strict=True)]

    @property
    def grid(self) -> tuple[int, int] | None:
        """(h, w) of the stored patch grid, or None when no grid was stored."""
        if "patches" not in self.feature_kinds:
            return None
        shape = self._h5["features"]["patches"].shape
        return int(shape[1]), int(shape[2])

    def iter_patches(
        self, block: int = 256, split: str | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(idx, grid)`` blocks of the stored patch grid for the ok rows of ``split``.

        ``idx`` (int64 ``[b]``) are positions in the selection, i.e. the same positions as
        in ``features(split=split)``; ``grid`` is float16 ``[b, h, w, D]``. Memory stays at
        one block whatever the store size.
        """
        if block < 1:
            raise FeatkitError(f"iter_patches block: expected a positive int, got {block}")
        self._require("patches")
        ds = self._h5["features"]["patches"]
        keep = self.mask(split)
        position = np.cumsum(keep) - 1
        for start in range(0, self.num_rows, block):
            sel = keep[start : start + block]
            if not sel.any():
                continue
            rows = np.flatnonzero(sel)
            # Slice only the span that holds selected rows, then mask in memory.
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            grid = ds[start + lo : start + hi][sel[lo:hi]]
            yield position[start + rows].astype(np.int64), grid

    def summary(self) -> dict[str, Any]:
        """Everything ``featkit info`` shows, as plain JSON-able values."""
        ok = self._status == STATUS_OK
        label_counts: dict[str, int] = {}
        counts = Counter(self._labels[ok].tolist())
        for i, name in enumerate(self.label_names):
            label_counts[name] = int(counts.get(i, 0))
        if counts.get(-1):
            label_counts["(unlabelled)"] = int(counts[-1])
        split_counts = {str(k): int(v) for k, v in sorted(Counter(self._splits[ok]).items())}
        grid = self.grid
        return {
            "path": str(self.path),
            "dataset": self.dataset,
            "model": self.model,
            "rows": self.num_rows,
            "ok": int(ok.sum()),
            "failed": int((~ok).sum()),
            "failures": self.failures(),
            "label_counts": label_counts,
            "split_counts": split_counts,
            "feature_kinds": list(self.feature_kinds),
            "dim": self.dim,
            "grid": list(grid) if grid else None,
            "fingerprint": self.fingerprint,
            "file_size": self.path.stat().st_size,
        }


def open_store(path: str | Path) -> Store:
    """Open a store for reading (``with featkit.open_store(p) as store: ...``)."""
    return Store(path)


# -- import ------------------------------------------------------------------------
def _read_labels_csv(labels_csv: Path, num_rows: int) -> tuple[list[str], list[str], list[str]]:
    """(labels, paths, splits) of an import CSV, validated against the feature count."""
    import pandas as pd

    if not labels_csv.is_file():
        raise FeatkitError(f"labels CSV {labels_csv}: expected a CSV file, found nothing")
    try:
        frame = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise FeatkitError(f"labels CSV {labels_csv}: expected a readable CSV ({err})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if "label" not in frame.columns:
        raise FeatkitError(
            f"labels CSV {labels_csv}: expected a 'label' column, got columns "
            f"{', '.join(frame.columns) or '(none)'}"
        )
    if len(frame) != num_rows:
        raise FeatkitError(
            f"labels CSV {labels_csv}: expected {num_rows} rows (one per feature row), "
            f"got {len(frame)}"
        )
    labels = [s.strip() for s in frame["label"].tolist()]
    width = max(6, len(str(num_rows)))
    if "path" in frame.columns:
        paths = [s.strip() for s in frame["path"].tolist()]
        dupes = [p for p, c in Counter(paths).items() if c > 1]
        if dupes or any(not p for p in paths):
            raise FeatkitError(
                f"labels CSV {labels_csv}: expected a unique, non-empty 'path' per row, "
                f"got {'duplicates such as ' + repr(dupes[0]) if dupes else 'empty paths'}"
            )
    else:
        # Zero-padded row numbers sort like the rows themselves.
        paths = [f"{i:0{width}d}" for i in range(num_rows)]
    if "split" in frame.columns:
        splits = [s.strip().lower() for s in frame["split"].tolist()]
        bad = sorted({s for s in splits if s not in SPLITS})
        if bad:
            raise FeatkitError(
                f"labels CSV {labels_csv}: expected split values train, val, test or empty, "
                f"got {', '.join(repr(b) for b in bad[:5])}"
            )
    else:
        splits = [""] * num_rows
    return labels, paths, splits


def import_features(
    features: np.ndarray,
    labels_csv: Path,
    name: str,
    workspace: Path,
    *,
    dataset: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``features`` (``[N, D]``, finite) with the labels of ``labels_csv`` as a store.

    The store lands at ``<workspace>/<dataset>/<name>.h5`` (``dataset`` defaults to the
    CSV's stem) with feature kind ``"cls"`` only. Rows are sorted by the CSV's ``path``
    column (or kept in order when there is none). Returns the store path.
    """
    from featkit import __version__
    from featkit.workspace import store_path

    labels_csv = Path(labels_csv)
    arr = np.asarray(features)
    if arr.ndim != 2:
        raise FeatkitError(f"features: expected a 2-D array [N, D], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise FeatkitError(f"features: expected a real numeric array, got dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise FeatkitError(f"features: expected at least one row and column, got {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    bad_rows = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if len(bad_rows):
        shown = ", ".join(str(int(r)) for r in bad_rows[:5])
        more = f" and {len(bad_rows) - 5} more" if len(bad_rows) > 5 else ""
        raise FeatkitError(
            f"features: expected finite values, got NaN or inf in {len(bad_rows)} row(s): "
            f"{shown}{more} (0-based)"
        )
    labels, paths, splits = _read_labels_csv(labels_csv, arr.shape[0])
    dataset = dataset or labels_csv.stem
    out = store_path(Path(workspace), dataset, name)
    if out.exists() and not overwrite:
        raise FeatkitError(
            f"store {out}: expected a new store name, a store already exists "
            "(pass --overwrite / overwrite=True to replace it)"
        )
    require_free_space(
        out.parent,
        arr.nbytes + arr.shape[0] * 256 + (1 << 16),
        f"importing {arr.shape[0]} rows into {out.name}",
    )
    label_names = sorted({lab for lab in labels if lab})
    index = {lab: i for i, lab in enumerate(label_names)}
    order = np.argsort(np.asarray(paths, dtype=object), kind="stable")
    fingerprint = {
        "featkit_version": __version__,
        "model": name,
        "source": "import",
        "features_sha256": hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest(),
        "dim": int(arr.shape[1]),
    }
    _remove_stale_imports(out)
    # Imports take no extraction lock: a private temporary name keeps two racing imports
    # from writing into one file; the last complete one wins the os.replace.
    with atomic_hdf5(out, out.with_name(f".{out.name}.{os.getpid()}{TMP_SUFFIX}")) as h5:
        writer = StoreWriter(
            h5,
            num_rows=arr.shape[0],
            dim=arr.shape[1],
            dataset=dataset,
            model=name,
            label_names=label_names,
            fingerprint=fingerprint,
            patch_mean=False,
        )
        for start in range(0, len(order), READ_BLOCK):
            writer.write_features(start, arr[order[start : start + READ_BLOCK]])
        writer.write_images(
            paths=[paths[i] for i in order],
            labels=np.array([index[labels[i]] if labels[i] else -1 for i in order]),
            splits=[splits[i] for i in order],
            status=[STATUS_OK] * len(order),
            errors=[""] * len(order),
        )
    return out


def _remove_stale_imports(out: Path) -> None:
    """Delete temporary files of earlier imports of ``out`` whose process is gone.

    A killed import leaves ``.<name>.<pid>.tmp`` (as large as the store); one whose
    process still runs is another import in progress and is left alone.
    """
    prefix = f".{out.name}."
    if not out.parent.is_dir():
        return
    for tmp in out.parent.glob(f"{prefix}*{TMP_SUFFIX}"):
        pid = tmp.name[len(prefix) : -len(TMP_SUFFIX)]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                tmp.unlink()
        except OSError:
            pass  # alive but not ours (EPERM): leave it
