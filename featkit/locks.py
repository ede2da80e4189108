"""One advisory file lock for every writer that must not interleave with another process.

An ``flock`` on a small hidden file: the kernel drops it when the process dies, so a
killed writer never leaves anything locked. Where ``fcntl`` does not exist (Windows)
there is no cross-process lock; the atomic replaces (:mod:`featkit.atomic`) still keep
every file whole.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


class LockBusyError(OSError):
    """``file_lock(..., wait=False)`` found the lock held by another process."""


@contextlib.contextmanager
def file_lock(lock_path: Path, *, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created if missing) for the ``with`` block.

    ``wait=False`` raises :class:`LockBusyError` at once instead of waiting for the
    holder, for callers that should refuse rather than queue.
    """
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks
        yield
        return
    with open(lock_path, "a+b") as handle:
        flags = fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(handle.fileno(), flags)
        except BlockingIOError:
            raise LockBusyError(f"{lock_path} is held by another process") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
