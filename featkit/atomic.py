"""Crash-safe file replacement.

Every file featkit writes for keeps (CSV results, checkpoints, adapters, manifests)
goes through :func:`atomic_path`: the content is written to a private temporary file
in the same folder, flushed to disk, and renamed over the target, and the rename
itself is made durable. A crash at any moment leaves the old file or the new one,
never half of one. (HDF5 stores use the same recipe in ``featkit.store.reader.atomic_hdf5``.)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from featkit.diskspace import disk_full, is_disk_full

# mkstemp creates files readable by their owner only; results and weights are shared.
FILE_MODE = 0o644


def fsync_dir(folder: Path) -> None:
    """Make a rename durable: fsync the folder entry (no-op where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` durably.

    On an exception the temporary file is removed and ``path`` is untouched; running out
    of space raises :class:`~featkit.errors.DiskFullError` (one line, rerun resumes).
    After a ``kill -9`` a hidden ``.<name>.*.tmp`` file may remain, and ``path`` is
    untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            yield tmp
            fsync_file(tmp)
        except OSError as err:
            if is_disk_full(err):
                raise disk_full(path) from None
            raise
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
