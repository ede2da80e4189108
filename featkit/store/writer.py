"""Writing stores: the one crash-safe recipe (:func:`atomic_hdf5`) and :class:`StoreWriter`.

The layout is described in :mod:`featkit.store.reader`; every dataset written here carries the
checksum of the values written (:mod:`featkit.store.integrity`), and a file is verified on
disk before it is renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featkit.atomic import fsync_dir
from featkit.diskspace import disk_full, free_bytes, is_disk_full
from featkit.errors import StoreDamagedError
from featkit.store.integrity import CHECKSUM_ATTR, Hasher, verify_file, write_checked

if TYPE_CHECKING:
    import h5py

FORMAT_VERSION = 1
FEATURE_KINDS = ("cls", "patch_mean", "cls+patch_mean")
# The official linear-evaluation features (DINO v1 eval_linear.py, DINOv2 eval/linear.py):
# "cls<k>" concatenates the normed CLS tokens of the last k blocks, oldest first;
# "+avgpool" appends the mean of the last block's patch tokens (= patch_mean).
LAYER_KIND = re.compile(r"cls([1-9][0-9]*)(\+avgpool)?")
FEATURE_KINDS_HELP = "cls, patch_mean, cls+patch_mean, cls<k>, cls<k>+avgpool (k = 1, 2, ...)"


def layer_kind(kind: str) -> tuple[int, bool] | None:
    """(k, with avgpool) for a ``cls<k>[+avgpool]`` kind; None for any other name."""
    found = LAYER_KIND.fullmatch(kind)
    return (int(found.group(1)), bool(found.group(2))) if found else None


def is_feature_kind(kind: str) -> bool:
    """Whether ``kind`` names stored features (whether a store has them is its own check)."""
    return kind in FEATURE_KINDS or layer_kind(kind) is not None


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
    checksum recorded when it was written (see :mod:`featkit.store.integrity`); only a file
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
        h5 = h5py.File(tmp, "w")
        try:
            yield h5
            h5.flush()
            h5.close()
        except BaseException:
            _abandon(h5, tmp)
            raise
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        damage = verify_file(tmp)
        if damage:
            free = free_bytes(tmp.parent)
            if free is not None and free < (1 << 20):
                # HDF5 lost the out-of-space error while closing; say what happened.
                raise disk_full(path)
            raise StoreDamagedError(
                f"{path}: the file just written failed verification ({damage[0]}), so it "
                "was not kept; the disk may be full or failing: free space and rerun the "
                "same command, it resumes where it stopped"
            )
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except (OSError, RuntimeError) as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if is_disk_full(err):
            raise disk_full(path) from None
        raise
    except BaseException:
        # A Python-level failure cleans up; a kill -9 leaves the temp file for the next run.
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _abandon(h5: h5py.File, tmp: Path) -> None:
    """Close a file whose writing failed, without letting HDF5 fail again.

    After an out-of-space error HDF5 still holds unwritten data and retries it when the
    file is closed; a close that fails leaves the library in a state that can crash the
    process later. Truncating the abandoned file first frees its space, so that the close
    succeeds; the file is deleted anyway.
    """
    for _ in range(3):
        with contextlib.suppress(OSError):
            os.truncate(tmp, 0)
        try:
            # Drops h5py's references to every object of the file, then the file.
            h5.close()
            return
        except Exception:
            continue  # the close wrote part of its cache again; free it and retry


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
        layers: int = 1,
        patch_mean_is_cls: bool = False,
    ) -> None:
        """``patch_mean_is_cls``: the patch mean equals the CLS (a backbone whose one
        "patch" is the whole input, such as ``pixels``); ``/features/patch_mean`` is then
        a soft link to ``/features/cls``, one copy on disk, and is not passed to
        :meth:`write_features`."""
        import h5py

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
        if patch_mean and not patch_mean_is_cls:
            shapes["patch_mean"] = ((dim,), "f4", (chunk_rows, dim))
        if grid is not None:
            shapes["patches"] = ((*grid, dim), "f2", (1, *grid, dim))
        if layers > 1:  # CLS of the last `layers` blocks, oldest first (--layers)
            rows = max(1, chunk_rows // layers)
            shapes["cls_layers"] = ((layers, dim), "f4", (rows, layers, dim))
        self._datasets: dict[str, h5py.Dataset] = {}
        self._hashers: dict[str, Hasher] = {}
        for name, (shape, dtype, chunks) in shapes.items():
            ds = feats.create_dataset(
                name, shape=(num_rows, *shape), dtype=dtype, chunks=chunks if num_rows else None
            )
            self._datasets[name] = ds
            self._hashers[name] = Hasher(dtype)
            ds.attrs[CHECKSUM_ATTR] = self._hashers[name].hexdigest()
        if patch_mean and patch_mean_is_cls:
            # A soft link, not a hard one: the file says which name is the copy, and
            # checksum verification (which visits objects, not links) hashes it once.
            feats["patch_mean"] = h5py.SoftLink(f"{feats.name}/cls")
        self._next = 0
        self._images = h5.create_group("images")

    def write_features(
        self,
        start: int,
        cls: np.ndarray,
        patch_mean: np.ndarray | None = None,
        patches: np.ndarray | None = None,
        *,
        cls_layers: np.ndarray | None = None,
    ) -> None:
        """Write rows ``start : start + len(cls)``; blocks come in order, without gaps.

        The order is what lets each dataset's checksum be computed from the values
        handed over, block by block; it is recorded after every block.
        """
        if start != self._next:
            raise ValueError(f"rows must be written in order: expected start {self._next}")
        given = {"cls": cls, "patch_mean": patch_mean, "patches": patches}
        given["cls_layers"] = cls_layers
        for name in self._datasets:
            if given[name] is None:
                what = {"patches": "a patch grid"}.get(name, name)
                raise ValueError(f"this store has {what}; pass it")
        stop = start + len(cls)
        for name, ds in self._datasets.items():
            # Convert once, so that the bytes hashed are the bytes h5py stores.
            values = np.ascontiguousarray(given[name], dtype=ds.dtype)
            ds[start:stop] = values
            self._hashers[name].update(values)
            ds.attrs[CHECKSUM_ATTR] = self._hashers[name].hexdigest()
            # Written through now, so that a full disk raises here and not, unseen,
            # when h5py closes the dataset.
            ds.flush()
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
