"""What a route costs: wall seconds and peak memory of extraction, probes and fine-tunes.

Peak memory is that of the device that did the work: on a GPU the most memory torch
allocated on it since :func:`reset_peak` (``torch.cuda.max_memory_allocated``); on the
CPU the peak resident set of the process so far (``getrusage``'s ``ru_maxrss``), a
high-water mark that never goes down, so it bounds the step from above.

torch is imported only for a CUDA device: the probe path never loads it.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COST_ATTR = "cost"  # store attribute: JSON of the extraction pass (see extraction_cost)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def reset_peak(device: str = "cpu") -> None:
    """Start a new peak for :func:`peak_mb` on a CUDA device (no-op on the CPU)."""
    if _cuda(device):
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: str = "cpu") -> float:
    """Peak memory in MiB of ``device`` (see the module docstring)."""
    if _cuda(device):
        import torch

        return float(torch.cuda.max_memory_allocated(device)) / (1024 * 1024)
    return peak_rss_mb()


@dataclass
class Measured:
    """Filled in when the ``measure`` block ends."""

    seconds: float = 0.0
    peak_mb: float = 0.0


@contextmanager
def measure(device: str = "cpu") -> Iterator[Measured]:
    """``with measure(device) as m: ...`` → ``m.seconds`` (wall) and ``m.peak_mb``."""
    measured = Measured()
    reset_peak(device)
    start = time.perf_counter()
    try:
        yield measured
    finally:
        measured.seconds = time.perf_counter() - start
        measured.peak_mb = peak_mb(device)


def extraction_cost(
    images: int, seconds: float, device: str, precision: str, batch_size: int
) -> dict[str, Any]:
    """The store's ``cost`` attribute for a pass that ran ``images`` through the backbone."""
    return {
        "images": int(images),
        "seconds": round(float(seconds), 4),
        "seconds_per_image": round(seconds / images, 6) if images else None,
        "images_per_second": round(images / seconds, 3) if seconds > 0 else None,
        "peak_mb": round(peak_mb(device), 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "device": str(device),
        "precision": precision,
        "batch_size": int(batch_size),
    }


def read_cost(text: Any) -> dict[str, Any] | None:
    """A store's ``cost`` attribute as a dict (None when absent or unreadable)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def store_cost(path: Path | None) -> dict[str, Any] | None:
    """The recorded extraction cost of the store at ``path`` (None when there is none)."""
    if path is None or not Path(path).is_file():
        return None
    from featkit.errors import FeatkitError
    from featkit.store.reader import open_store

    try:
        with open_store(path) as store:
            return read_cost(store.attr(COST_ATTR))
    except (FeatkitError, OSError):
        return None
