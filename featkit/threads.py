"""How many threads the numeric libraries (BLAS, OpenMP, torch) get during a probe.

One plan for the whole run, made from the cores this process may use and the work
other processes keep them busy with. ``plan_threads`` is a pure function of those numbers;
``planned_threads`` and ``limit_threads`` are the thin applier that reads them (the
only place featkit looks at the machine's state) and sets the limits.

More threads than free cores make every parallel region wait for a descheduled
thread: on a 2-core machine with other CPU-bound work, two OpenBLAS threads made
scipy's L-BFGS bookkeeping 6× slower than one (9 ms against 1.4 ms a call for 5,000
parameters). The CLI also makes idle OpenMP threads sleep instead of spin
(:func:`passive_wait_defaults`).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass


def plan_threads(cpus: int, load_average: float) -> int:
    """Threads for ``cpus`` usable cores when others keep ``load_average`` of them busy.

    The cores left free, rounded to the nearest whole core, at least 1 and at most
    ``cpus``: a quiet 2-core machine gets 2, one other CPU-bound process leaves 1.
    """
    free = cpus - max(load_average, 0.0)
    return max(1, min(cpus, math.floor(free + 0.5)))


# Environment defaults for the command line: set before any OpenMP runtime starts.
PASSIVE_WAIT = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def passive_wait_defaults(environ: MutableMapping[str, str]) -> None:
    """Idle OpenMP threads sleep instead of spinning, unless the user chose otherwise.

    Spinning threads burn the cores that another process (or the next BLAS call) needs;
    on a shared machine that cost more than the wake-up latency saves.
    """
    for name, value in PASSIVE_WAIT.items():
        environ.setdefault(name, value)


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def busy_cores(before: Sequence[int], after: Sequence[int], cpus: int) -> float:
    """Cores kept busy between two ``/proc/stat`` ``cpu`` lines (jiffies per state:
    user, nice, system, idle, iowait, ...) on a machine of ``cpus`` cores."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta)
    if total <= 0:
        return 0.0
    idle = delta[3] + (delta[4] if len(delta) > 4 else 0)
    return cpus * (total - idle) / total


def _cpu_line() -> list[int] | None:
    try:
        with open("/proc/stat") as stat:
            return [int(field) for field in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class CpuSample:
    """The machine's CPU counters and this process's own CPU time at one moment."""

    stat: list[int] | None  # the /proc/stat "cpu" line; None where there is none
    own: float  # this process's CPU seconds, all its threads
    wall: float  # time.monotonic()


def cpu_sample() -> CpuSample:
    return CpuSample(_cpu_line(), time.process_time(), time.monotonic())


def others_busy(start: CpuSample, end: CpuSample, cpus: int) -> float | None:
    """Cores that other processes kept busy between two samples; None without counters.

    This process's own CPU time is taken out, so the span may cover its own work.
    """
    if start.stat is None or end.stat is None or len(start.stat) != len(end.stat):
        return None
    wall = end.wall - start.wall
    own = (end.own - start.own) / wall if wall > 0 else 0.0
    return max(0.0, busy_cores(start.stat, end.stat, cpus) - own)


def planned_threads(since: CpuSample | None = None, window: float = 0.2) -> int:
    """The plan for this machine now: the usable cores and what other processes keep busy.

    Measured from ``/proc/stat`` over at least ``window`` seconds from ``since`` (default:
    now), so a caller can start the span before its own set-up work; elsewhere from the
    1-minute load average, which also counts this process's own recent work. Made once,
    at the start of a run.
    """
    start = since or cpu_sample()
    if start.stat is not None:
        time.sleep(max(0.0, window - (time.monotonic() - start.wall)))
        busy = others_busy(start, cpu_sample(), os.cpu_count() or 1)
        if busy is not None:
            return plan_threads(_usable_cpus(), busy)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return plan_threads(_usable_cpus(), load)


@contextmanager
def limit_threads(threads: int) -> Iterator[int]:
    """BLAS/OpenMP (and torch, when already imported) limited to ``threads``; yields it."""
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")  # never imports torch: a probe may not need it
    before = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(limits=threads):
        if torch is not None:
            torch.set_num_threads(threads)
        try:
            yield threads
        finally:
            if torch is not None and before is not None:
                torch.set_num_threads(before)
