"""Progress reporting without printing.

Library functions take a :class:`Progress` and report to it; the CLI passes one that
draws rich progress bars, tests pass nothing (the silent default). Bars are drawn
only on a terminal (``featkit/cli/_console.py``): redirected to a log, a bar is a
stream of fragments, so the CLI passes :data:`SILENT` there.
"""

from __future__ import annotations

import logging
from typing import Protocol


class ProgressTask(Protocol):
    def advance(self, n: int = 1, **fields: object) -> None:
        """Mark ``n`` more units done; ``fields`` (loss=…, img_s=…) are shown beside the bar."""

    def close(self) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: int | None) -> ProgressTask:
        """Start a bar for ``total`` units (None when unknown)."""


class _SilentTask:
    def advance(self, n: int = 1, **fields: object) -> None:
        pass

    def close(self) -> None:
        pass


class SilentProgress:
    """The default: reports nothing."""

    def task(self, description: str, total: int | None) -> ProgressTask:
        return _SilentTask()


SILENT = SilentProgress()


class OnceFilter:
    """A :mod:`logging` filter that lets each distinct message through once.

    Loops log the same warning for every episode, image or store ("skipping the PCA
    picture of …", a precision fallback); a handler with this filter shows it once.
    Messages are compared after formatting, so two different paths stay two lines.
    Install it on a handler (``handler.addFilter(OnceFilter())``), not on the logger,
    so library code keeps logging as usual.
    """

    def __init__(self) -> None:
        self._seen: set[tuple[int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, record.getMessage())
        if key in self._seen:
            return False
        self._seen.add(key)
        return True
