"""Stores evaluated side by side: one worker process per store, as many as there are free cores.

A probe is single-threaded Python around small numeric kernels (one BLAS thread each,
see ``featkit.protocols.base.threads_for``), so a second core helps only through a
second process. Workers are forked: the imported protocols come with them, and each
reads its own store, so no feature array is copied between processes. Each worker
evaluates one store at a time and sends its progress back through a queue; the parent
draws it and receives every store's rows as soon as that store is done, in any order.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_module
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featkit.progress import Progress, ProgressTask

if TYPE_CHECKING:
    from featkit.evaluation.rows import ProbeResults

# The queue a worker reports to. Set once in each worker process by _start (a forked
# worker's own copy), never in the parent.
_REPORTS: Any = None


def _start(reports: Any) -> None:
    global _REPORTS
    _REPORTS = reports


class _ReportedTask:
    def __init__(self, key: int) -> None:
        self.key = key

    def advance(self, n: int = 1, **fields: object) -> None:
        _REPORTS.put(("advance", self.key, n, {k: str(v) for k, v in fields.items()}))

    def close(self) -> None:
        pass


class _ReportedProgress:
    """The worker's side of the progress: every call becomes a message to the parent."""

    def __init__(self, key: int) -> None:
        self.key = key

    def task(self, description: str, total: int | None) -> ProgressTask:
        _REPORTS.put(("task", self.key, description, total))
        return _ReportedTask(self.key)


# What a worker runs for one store: (store path, settings, progress, BLAS threads) → rows
# (featkit.evaluation.probe.probe_store; passed in, so this module needs no probe import).
# The settings are passed through untouched (typed Any: naming ProbeSettings here would
# import the probe back).
StoreWork = Callable[[Path, Any, Progress, int], "ProbeResults"]


def _evaluate(work: StoreWork, key: int, path: Path, settings: Any) -> ProbeResults:
    return work(path, settings, _ReportedProgress(key), 1)


def _relay(
    reports: Any, tasks: dict[int, ProgressTask], finished: set[int], progress: Progress
) -> None:
    """Draw what the workers reported since the last call (a store already finished, whose
    last messages can arrive after its rows, is not drawn again)."""
    while True:
        try:
            message = reports.get_nowait()
        except queue_module.Empty:
            return
        key = message[1]
        if key in finished:
            continue
        if message[0] == "task":
            tasks[key] = progress.task(message[2], message[3])
        elif key in tasks:
            tasks[key].advance(message[2], **message[3])


def can_fork() -> bool:
    """Whether worker processes can be forked here (Linux; not Windows)."""
    return "fork" in mp.get_all_start_methods()


def in_parallel(
    work: StoreWork,
    stores: Sequence[tuple[int, Path]],
    settings: Any,
    workers: int,
    progress: Progress,
) -> Iterator[tuple[int, ProbeResults]]:
    """``(key, work(store))`` of each ``(key, store path)``, as the ``workers`` processes
    finish them.

    Each worker's numeric libraries get one thread: the processes are the parallelism.
    A failure in a worker is raised here, and the stores not yet started are cancelled.
    """
    context = mp.get_context("fork")
    reports = context.Queue()
    tasks: dict[int, ProgressTask] = {}
    finished: set[int] = set()
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_start, initargs=(reports,)
    ) as pool:
        running: dict[Future[ProbeResults], int] = {
            pool.submit(_evaluate, work, key, path, settings): key for key, path in stores
        }
        try:
            while running:
                done, _ = wait(running, timeout=0.1, return_when=FIRST_COMPLETED)
                _relay(reports, tasks, finished, progress)
                for future in done:
                    key = running.pop(future)
                    result = future.result()
                    _relay(reports, tasks, finished, progress)
                    finished.add(key)
                    if key in tasks:
                        tasks.pop(key).close()
                    yield key, result
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            for task in tasks.values():
                task.close()
