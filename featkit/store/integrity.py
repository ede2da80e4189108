"""Checksums recorded at write time, and verification before a file is trusted.

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

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import h5py

CHECKSUM_ATTR = "sha256"
# Rows hashed per read when verifying: a few MiB at a time whatever the file size.
VERIFY_BYTES = 16 << 20


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
