"""Shared CLI plumbing: one-line errors, rich progress bars, logging, common options."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgressBar

from featkit.errors import FeatkitError
from featkit.integrity import is_disk_full
from featkit.progress import ProgressTask
from featkit.workspace import DEFAULT_WORKSPACE


class TrainPrecision(str, Enum):
    """--precision of the training commands (fp16 training is not offered)."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


console = Console(stderr=True)
out = Console()

F = TypeVar("F", bound=Callable[..., Any])

WORKSPACE_OPTION = typer.Option(
    None,
    "--workspace",
    "-w",
    help="Workspace folder for stores and results (default: $FEATKIT_WORKSPACE or ./featkit_runs).",
)


def resolve_workspace(workspace: Path | None) -> Path:
    """The CLI (not the library) reads the environment."""
    if workspace is not None:
        return workspace
    return Path(os.environ.get("FEATKIT_WORKSPACE", str(DEFAULT_WORKSPACE)))


def user_errors(func: F) -> F:
    """Turn a FeatkitError (a user mistake) into one red line and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _setup_logging()
        try:
            return func(*args, **kwargs)
        except FeatkitError as error:
            console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: rerun the same command to resume")
            raise typer.Exit(130) from None
        except OSError as error:
            # A full disk met outside featkit's own writers (a library writing for us).
            if not is_disk_full(error):
                raise
            console.print(
                f"[bold red]error:[/] disk full: {' '.join(str(error).split())}; free space "
                "and rerun the same command, it resumes where it stopped",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _setup_logging() -> None:
    logger = logging.getLogger("featkit")
    if not logger.handlers:
        handler = RichHandler(console=console, show_time=False, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


class _RichTask:
    def __init__(self, bar: RichProgressBar, task_id: TaskID) -> None:
        self._bar = bar
        self._id = task_id

    def advance(self, n: int = 1, **fields: object) -> None:
        info = "  ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()
        )
        self._bar.update(self._id, advance=n, info=info)

    def close(self) -> None:
        self._bar.update(self._id, visible=True)


class RichProgress:
    """featkit.progress.Progress drawn with rich bars on stderr."""

    def __init__(self, bar: RichProgressBar) -> None:
        self._bar = bar

    def task(self, description: str, total: int | None) -> ProgressTask:
        return _RichTask(self._bar, self._bar.add_task(description, total=total, info=""))


@contextmanager
def progress_bars() -> Iterator[RichProgress]:
    bar = RichProgressBar(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )
    with bar:
        yield RichProgress(bar)
