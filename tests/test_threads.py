"""The probe's thread plan: threads for the cores actually free."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from threadpoolctl import threadpool_info

from featkit.threads import (
    PASSIVE_WAIT,
    limit_threads,
    passive_wait_defaults,
    plan_threads,
    planned_threads,
)


@pytest.mark.parametrize(
    ("cpus", "load", "expected"),
    [
        (2, 0.0, 2),  # a quiet 2-core machine: both cores
        (2, 0.3, 2),  # background noise does not take a core
        (2, 1.0, 1),  # one other CPU-bound process: the core left
        (2, 6.0, 1),  # overloaded: never fewer than one
        (16, 3.4, 13),  # 12.6 free cores round to 13
        (16, 3.6, 12),
        (1, 0.0, 1),
        (4, -1.0, 4),  # a nonsense load never gives more than the cores
    ],
)
def test_plan_uses_the_free_cores(cpus: int, load: float, expected: int) -> None:
    assert plan_threads(cpus, load) == expected


def test_passive_wait_is_a_default_the_user_can_override() -> None:
    environ: dict[str, str] = {}
    passive_wait_defaults(environ)
    assert environ == PASSIVE_WAIT and environ["OMP_WAIT_POLICY"] == "PASSIVE"
    chosen = {"OMP_WAIT_POLICY": "ACTIVE"}
    passive_wait_defaults(chosen)
    assert chosen["OMP_WAIT_POLICY"] == "ACTIVE"


def _blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_limit_applies_inside_and_restores_after() -> None:
    import numpy as np

    np.ones((2, 2)) @ np.ones((2, 2))  # BLAS loaded
    before = _blas_threads()
    with limit_threads(1) as threads:
        assert threads == 1
        assert _blas_threads() == {1}
    assert _blas_threads() == before


def test_planned_threads_stay_within_the_usable_cores() -> None:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= planned_threads() <= (usable or 1)


def test_busy_cores_from_two_proc_stat_lines() -> None:
    from featkit.threads import busy_cores

    # user nice system idle iowait irq softirq steal: 100 jiffies, 25 of them busy, 2 cores.
    before = [1000, 0, 500, 8000, 100, 0, 0, 0]
    after = [1020, 0, 505, 8070, 105, 0, 0, 0]
    assert busy_cores(before, after, 2) == pytest.approx(0.5)
    assert busy_cores(before, before, 2) == 0.0  # no time passed: nothing measured
    # One core of two busy all the time, the other idle: one core is free.
    assert plan_threads(2, busy_cores([0, 0, 0, 0, 0], [100, 0, 0, 100, 0], 2)) == 1


def test_small_problems_get_one_thread_in_libraries_loaded_after_the_first_limit() -> None:
    """threads_for keeps its view of the loaded libraries only until the next import."""
    script = """
import json
import numpy
from threadpoolctl import threadpool_info
from featkit.protocols.base import threads_for
with threads_for(10):
    before = {i["filepath"] for i in threadpool_info()}
import faiss  # brings its own OpenMP runtime
with threads_for(10):
    inside = threadpool_info()
print(json.dumps({"new": sorted({i["filepath"] for i in inside} - before),
                  "threads": [i["num_threads"] for i in inside]}))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["new"], "the import loaded no new thread pool: the check would be vacuous"
    assert found["threads"] and set(found["threads"]) == {1}


def test_others_busy_leaves_out_this_process_own_work() -> None:
    from featkit.threads import CpuSample, busy_cores, others_busy

    # 2 cores over 1 s: 200 jiffies, 150 of them busy; this process used 1 CPU second.
    start = CpuSample([0, 0, 0, 0, 0], own=10.0, wall=100.0)
    end = CpuSample([150, 0, 0, 50, 0], own=11.0, wall=101.0)
    assert others_busy(start, end, 2) == pytest.approx(0.5)
    # Counting its own core as taken would leave one thread; 1.5 free cores give two.
    assert plan_threads(2, busy_cores(start.stat, end.stat, 2)) == 1
    assert plan_threads(2, others_busy(start, end, 2)) == 2
    assert others_busy(start, CpuSample(None, 11.0, 101.0), 2) is None  # no /proc/stat
    assert others_busy(end, end, 2) == 0.0  # no time passed: nothing measured
