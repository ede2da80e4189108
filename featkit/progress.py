"""Progress reporting without printing.

Library functions take a :class:`Progress` and report to it; the CLI passes one that
draws rich progress bars, tests pass nothing (the silent default).
"""

from __future__ import annotations

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
