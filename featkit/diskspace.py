"""Full disks: recognising the error, free space, and the one-line message a user acts on.

A full disk must stop a run with one line that names the file, the free space and that
a rerun resumes; HDF5 can crash on an out-of-space write, so long writers check the free
space before they start.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from featkit.errors import DiskFullError

_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


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
