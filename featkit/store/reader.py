"""The HDF5 embedding store: one file per (dataset, model), read by every protocol.

Layout (``format_version`` 1)::

    /features/cls         [N, D]       float32
    /features/patch_mean  [N, D]       float32   (absent with --patches none or after import)
    /features/patches     [N, h, w, D] float16   (only with --patches full)
    /features/cls_layers  [N, n, D]    float32   CLS of the last n blocks (only with --layers n>1)
    /images/path          [N] utf-8     relative path, rows sorted by it
    /images/label         [N] int64     index into label_names, -1 = unlabelled
    /images/split         [N] utf-8     "train" | "val" | "test" | ""
    /images/status        [N] utf-8     "ok" | "failed"
    /images/error         [N] utf-8     "" when ok, else the reason
    /images/size          [N] int64     file size in bytes when extracted (-1: unknown)
    /images/mtime_ns      [N] int64     file modification time when extracted (-1: unknown)
    attrs: format_version, dataset, model, label_names (JSON), fingerprint (JSON)
    every dataset: attrs["sha256"], the checksum of the values written (featkit.store.integrity)

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

import json
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

# The writer, the import and the row table live in their own modules; their names stay
# importable here (extraction and the tests read them from this module).
from featkit.atomic import fsync_dir as fsync_dir
from featkit.errors import FeatkitError, StoreDamagedError
from featkit.store.importer import import_features as import_features
from featkit.store.integrity import CHECKSUM_ATTR, Hasher
from featkit.store.rows import RowTable
from featkit.store.rows import _read_str as _read_str
from featkit.store.writer import FEATURE_KINDS as FEATURE_KINDS
from featkit.store.writer import FEATURE_KINDS_HELP, layer_kind
from featkit.store.writer import FORMAT_VERSION as FORMAT_VERSION
from featkit.store.writer import READ_BLOCK as READ_BLOCK
from featkit.store.writer import SPLITS as SPLITS
from featkit.store.writer import STATUS_FAILED as STATUS_FAILED
from featkit.store.writer import STATUS_OK as STATUS_OK
from featkit.store.writer import TMP_SUFFIX as TMP_SUFFIX
from featkit.store.writer import StoreWriter as StoreWriter
from featkit.store.writer import _str_dtype as _str_dtype
from featkit.store.writer import atomic_hdf5 as atomic_hdf5


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
        damage = self._rows.length_damage()
        if damage:
            return damage
        for name in self.feature_kinds:
            rows = self._h5["features"][name].shape[0]
            if rows != self.num_rows:
                return f"/features/{name} has {rows} rows, the store has {self.num_rows}"
        return self._rows.value_damage(self._h5["images"], len(self.label_names))

    def _load_meta(self) -> None:
        attrs = self._h5.attrs
        version = int(attrs["format_version"])
        if version > FORMAT_VERSION:
            raise ValueError(f"format_version {version} is newer than this featkit reads")
        self.dataset: str = str(attrs["dataset"])
        self.model: str = str(attrs["model"])
        self.label_names: tuple[str, ...] = tuple(json.loads(attrs["label_names"]))
        self.fingerprint: dict[str, Any] = json.loads(attrs["fingerprint"])
        self._rows = RowTable.read(self._h5["images"])
        self.num_rows: int = len(self._rows)
        feats = self._h5["features"]
        kinds = [k for k in ("cls", "patch_mean", "patches", "cls_layers") if k in feats]
        self.feature_kinds: tuple[str, ...] = tuple(kinds)
        self.dim: int = int(feats["cls"].shape[1])
        # CLS tokens of how many last blocks the store holds (1: only /features/cls).
        self.layers: int = int(feats["cls_layers"].shape[1]) if "cls_layers" in feats else 1

    def file_stats(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(size, mtime_ns) of every row's image when it was extracted; None if not recorded."""
        return self._rows.stats

    def verify(self) -> list[str]:
        """Every damage found by reading the whole store (empty when it is whole).

        Checks the per-row arrays (as at open), every dataset against the checksum
        recorded when it was written, and that the features of ok rows are finite.
        """
        damage = [d for d in [self._check_rows()] if d]
        ok = self._rows.ok
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
        return self._rows.mask(split, include_failed=include_failed, where=f"store {self.path}")

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
        ok = self._rows.ok
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
        """float32 ``[n, D]`` (``[n, 2D]`` for ``"cls+patch_mean"``, ``[n, kD]`` for
        ``"cls<k>"``, ``[n, (k+1)D]`` for ``"cls<k>+avgpool"``) of the selected rows."""
        layer = layer_kind(kind)
        if kind not in FEATURE_KINDS and layer is None:
            raise FeatkitError(f"feature kind: expected one of {FEATURE_KINDS_HELP}, got {kind!r}")
        keep = self.mask(split, include_failed=include_failed)
        if layer is not None:
            return self._layer_features(*layer, keep)
        parts = kind.split("+")
        for part in parts:
            self._require(part)
        arrays = [self._read_rows(part, keep) for part in parts]
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=1)

    def _layer_features(self, k: int, avgpool: bool, keep: np.ndarray) -> np.ndarray:
        """CLS of the last ``k`` blocks, oldest first, then the patch mean if ``avgpool``."""
        if k > self.layers:
            raise FeatkitError(
                f"store {self.path}: expected the CLS tokens of the last {k} blocks, but it "
                f"holds {self.layers}; extract again with --layers {k} (and --overwrite, or "
                "--name to keep both)"
            )
        # The last block's entry of cls_layers is /features/cls itself, so cls1 reads it.
        stack = self._read_rows("cls_layers", keep)[:, -k:] if k > 1 else None
        parts = [self._read_rows("cls", keep) if stack is None else stack.reshape(len(stack), -1)]
        if avgpool:
            self._require("patch_mean")
            parts.append(self._read_rows("patch_mean", keep))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def labels(self, split: str | None = None, *, include_failed: bool = False) -> np.ndarray:
        """int64 ``[n]`` indices into :attr:`label_names` (-1 = unlabelled)."""
        return self._rows.labels[self.mask(split, include_failed=include_failed)].copy()

    def paths(self, split: str | None = None, *, include_failed: bool = False) -> list[str]:
        return [str(p) for p in self._rows.paths[self.mask(split, include_failed=include_failed)]]

    def splits(self, *, include_failed: bool = False) -> list[str]:
        """The split of each selected row, ``""`` when the data named none."""
        return [str(s) for s in self._rows.splits[self.mask(include_failed=include_failed)]]

    def status(self) -> list[str]:
        """``"ok"`` or ``"failed"`` for every row."""
        return [str(s) for s in self._rows.status]

    def errors(self) -> list[str]:
        """The failure reason of every row (``""`` for ok rows)."""
        return [str(e) for e in self._rows.errors]

    def raw_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of ``/features/<name>`` as stored, failed rows included."""
        self._require(name)
        return np.asarray(self._h5["features"][name][start:stop])

    def failures(self) -> list[tuple[str, str]]:
        """(path, reason) of every failed row, in path order."""
        return self._rows.failures()

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
        ok = self._rows.ok
        label_counts, split_counts = self._rows.counts(self.label_names)
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
