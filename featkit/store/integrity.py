"""Checksums recorded at write time, verification before a file is trusted, full disks.

Every HDF5 dataset featkit writes carries a ``sha256`` attribute computed from the
in-memory values that were handed to h5py, never from a read-back: a read-back can be
served from the chunk cache while the disk holds something else. A file is verified by
reopening it and hashing what is on disk. HDF5 can lose an out-of-space error while a
file is closed (the data never reaches the disk, no exception is raised), so
verification after closing is the only reliable way to know that a file is whole.

The hash of a numeric dataset is SHA-256 of its C-order bytes in the dataset's dtype;
the hash of a string dataset is SHA-256 of each UTF-8 value prefixed with its length,
so ``["ab", "c"]`` and ``["a", "bc"]`` differ. Both can be fed block by block.
"""

from __future__ import annotations

import errno
import hashlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featkit.errors import DiskFullError

if TYPE_CHECKING:
    import h5py

CHECKSUM_ATTR = "sha256"
# Rows hashed per read when verifying: a few MiB at a time whatever the file size.
VERIFY_BYTES = 16 << 20
_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


class Hasher:
    """The incremental checksum of one dataset, fed with the rows in order."""

    def __init__(self, dtype: Any) -> None:
        self._sha = hashlib.sha256()
        self._dtype = np.dtype(dtype)
        self._strings = self._dtype.kind == "O"

    def update(self, values: Any) -> None:
        if self._strings:
            for value in np.asarray(values, dtype=object).ravel().tolist():
                raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
                self._sha.update(len(raw).to_bytes(8, "little"))
                self._sha.update(raw)
        else:
            self._sha.update(np.ascontiguousarray(values, dtype=self._dtype).tobytes())

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def _is_string(ds: h5py.Dataset) -> bool:
    import h5py

    return h5py.check_string_dtype(ds.dtype) is not None


def dataset_checksum(ds: h5py.Dataset) -> str:
    """The checksum of what ``ds`` holds on disk, read in blocks."""
    strings = _is_string(ds)
    hasher = Hasher(object if strings else ds.dtype)
    if ds.shape is None or ds.size == 0:
        return hasher.hexdigest()
    if ds.ndim == 0:
        hasher.update(np.asarray(ds[()]).reshape(1))
        return hasher.hexdigest()
    row_bytes = max(1, int(np.prod(ds.shape[1:])) * ds.dtype.itemsize)
    step = max(1, VERIFY_BYTES // row_bytes)
    source = ds.asstr() if strings else ds
    for start in range(0, ds.shape[0], step):
        hasher.update(source[start : start + step])
    return hasher.hexdigest()


def write_checked(group: h5py.Group, name: str, data: Any, dtype: Any = None) -> h5py.Dataset:
    """``group.create_dataset(name, data=...)`` that also records the data's checksum."""
    if dtype is None:
        array = np.asarray(data)
        ds = group.create_dataset(name, data=array)
        hasher = Hasher(ds.dtype)
        hasher.update(array)
    else:
        array = np.asarray(data, dtype=object)
        ds = group.create_dataset(name, data=array, dtype=dtype)
        hasher = Hasher(object)
        hasher.update(array)
    ds.attrs[CHECKSUM_ATTR] = hasher.hexdigest()
    # Written through now, so that a full disk raises here and not, unseen, when h5py
    # drops the dataset object.
    ds.flush()
    return ds


def _datasets(h5: h5py.File) -> list[h5py.Dataset]:
    import h5py

    found: list[h5py.Dataset] = []
    h5.visititems(lambda _, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return found


def verify_file(path: Path, *, require: bool = True) -> list[str]:
    """The damage found in the HDF5 file at ``path`` (empty when it is whole).

    Opens the file and compares every dataset's recorded checksum with its content.
    ``require``: a dataset without a checksum is damage too (files featkit writes now
    always have one; stores from older versions are read with ``require=False``).
    """
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            problems = []
            for ds in _datasets(h5):
                recorded = ds.attrs.get(CHECKSUM_ATTR)
                if recorded is None:
                    if require:
                        problems.append(f"{ds.name} has no checksum")
                    continue
                try:
                    actual = dataset_checksum(ds)
                except (OSError, ValueError) as err:
                    problems.append(f"{ds.name} cannot be read ({err})")
                    continue
                if actual != str(recorded):
                    problems.append(f"{ds.name} does not match its checksum")
            return problems
    except (OSError, ValueError, KeyError) as err:
        return [f"the file cannot be opened ({' '.join(str(err).split())[:160]})"]


# -- full disks --------------------------------------------------------------------
def is_disk_full(error: BaseException) -> bool:
    """True for the errors a full disk or an exhausted quota raises (also via HDF5)."""
    # h5py raises OSError or RuntimeError for a failed HDF5 write, with errno in the text.
    if not isinstance(error, (OSError, RuntimeError)):
        return False
    if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
        return True
    # h5py wraps the C error into a message and often drops errno.
    text = str(error)
    return "No space left on device" in text or "errno = 28" in text or "Disk quota" in text


def human_bytes(num: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num < 1024 or unit == "GiB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    return f"{num:.1f} GiB"


def free_bytes(folder: Path) -> int | None:
    """Free bytes where ``folder`` (or its nearest existing parent) lives; None if unknown."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return int(shutil.disk_usage(folder).free)
    except OSError:
        return None


def disk_full(path: Path, needed: int | None = None) -> DiskFullError:
    """The one-line error for a write to ``path`` that ran out of space."""
    free = free_bytes(Path(path).parent)
    parts = [f"disk full: writing {path}"]
    if free is not None:
        parts.append(f"{human_bytes(free)} free in {Path(path).parent}")
    if needed is not None:
        parts.append(f"about {human_bytes(needed)} needed")
    return DiskFullError(
        "; ".join(parts) + "; free space and rerun the same command, it resumes where it stopped"
    )


def require_free_space(folder: Path, needed: int, what: str) -> None:
    """Refuse to start ``what`` when ``folder`` has clearly less than ``needed`` bytes free.

    Starting anyway would fail part-way, and HDF5 does not always survive a write that
    runs out of space (it can crash the process), so the check comes first.
    """
    free = free_bytes(folder)
    if free is not None and free < needed:
        raise DiskFullError(
            f"disk full: {what} needs about {human_bytes(needed)} in {folder}, "
            f"{human_bytes(free)} free; free space and rerun the same command, "
            "it resumes where it stopped"
        )
