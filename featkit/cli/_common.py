"""Shared CLI plumbing: one-line errors, rich progress bars, logging, common options."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import pickle
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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

from featkit.cli._console import PipeSafeConsole
from featkit.diskspace import is_disk_full
from featkit.errors import DiskFullError, FeatkitError
from featkit.progress import SILENT, OnceFilter, Progress, ProgressTask

console = PipeSafeConsole(stderr=True)
out = PipeSafeConsole()

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Rule:
    """What one option accepts; a value outside it is refused before any work starts."""

    flag: str
    expected: str
    accepts: Callable[[Any], bool]


def _number(
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> Callable[[Any], bool]:
    def accepts(value: Any) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if low is not None and (value <= low if open_low else value < low):
            return False
        return not (high is not None and (value >= high if open_high else value > high))

    return accepts


def _not_a_file(value: Any) -> bool:
    return not Path(value).is_file()


def _not_a_folder(value: Any) -> bool:
    return not Path(value).is_dir()


_POSITIVE_INT = ("an integer >= 1", _number(1))
_COUNT = ("an integer >= 0", _number(0))
_POSITIVE = ("a finite number > 0", _number(0, open_low=True))
_NON_NEGATIVE = ("a finite number >= 0", _number(0))

# Every numeric (and output path) option of every command, by parameter name: one rule
# per option, declared here once, checked by @user_errors before the command runs. A
# parameter name means the same thing in every command that has it.
RULES: dict[str, Rule] = {
    "batch_size": Rule("--batch-size", *_POSITIVE_INT),
    "episodes": Rule("--episodes", *_POSITIVE_INT),
    "epochs": Rule("--epochs", *_POSITIVE_INT),
    "steps": Rule("--steps", *_POSITIVE_INT),
    "shard_size": Rule("--shard-size", *_POSITIVE_INT),
    "image_size": Rule("--image-size", *_POSITIVE_INT),
    "kmeans_n_init": Rule("--kmeans-n-init", *_POSITIVE_INT),
    "logistic_max_iter": Rule("--logistic-max-iter", *_POSITIVE_INT),
    "lora_r": Rule("--lora-r", *_POSITIVE_INT),
    "blocks": Rule("--blocks", *_POSITIVE_INT),
    "cpu_threads": Rule("--cpu-threads", *_POSITIVE_INT),
    "max_per_class": Rule("--max-per-class", *_POSITIVE_INT),
    "out_dim": Rule("--out-dim", *_POSITIVE_INT),
    "hidden_dim": Rule("--hidden-dim", *_POSITIVE_INT),
    "bottleneck_dim": Rule("--bottleneck-dim", *_POSITIVE_INT),
    "workers": Rule("--workers", *_COUNT),
    "local_crops": Rule("--local-crops", *_COUNT),
    "warmup_epochs": Rule("--warmup-epochs", *_COUNT),
    "teacher_temp_warmup": Rule("--teacher-temp-warmup", *_COUNT),
    # numpy seeds must fit in 32 unsigned bits.
    "seed": Rule("--seed", "an integer in 0..4294967295", _number(0, 2**32 - 1)),
    "lr": Rule("--lr", *_POSITIVE),
    "lora_alpha": Rule("--lora-alpha", *_POSITIVE),
    "teacher_temp": Rule("--teacher-temp", *_POSITIVE),
    "koleo": Rule("--koleo", *_NON_NEGATIVE),
    "test_fraction": Rule(
        "--test-fraction",
        "a number between 0 and 1 (exclusive)",
        _number(0, 1, open_low=True, open_high=True),
    ),
    "lora_dropout": Rule("--lora-dropout", "a number in [0, 1)", _number(0, 1, open_high=True)),
    "momentum_teacher": Rule("--momentum-teacher", "a number in [0, 1]", _number(0, 1)),
    "threshold": Rule("--threshold", "a number in (0, 1]", _number(0, 1, open_low=True)),
    # A fraction (0.8) or a percent (80) of the metric.
    "target": Rule(
        "--target", "a fraction in (0, 1] or a percent in (1, 100]", _number(0, 100, open_low=True)
    ),
    "out_dir": Rule("--out", "a folder, not an existing file", _not_a_file),
    "out_path": Rule("--out", "a file name, not an existing folder", _not_a_folder),
}


def check_options(values: dict[str, Any]) -> None:
    """Raise a one-line FeatkitError for the first option whose value its rule refuses."""
    for name, value in values.items():
        rule = RULES.get(name)
        if rule is None or value is None or isinstance(value, bool):
            continue
        if not rule.accepts(value):
            raise FeatkitError(f"{rule.flag}: expected {rule.expected}, got {value}")


@contextmanager
def safe_loads(option: str, source: object) -> Iterator[None]:
    """Turn a file that a weights-only load refuses (a pickle with code) into one line."""
    try:
        yield
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "refused"
        raise FeatkitError(
            f"{option} {source}: expected weights without pickled code (safetensors or a "
            f"weights-only torch file), got a file a safe load refuses ({first[:120]})"
        ) from None


def user_errors(func: F) -> F:
    """Turn a FeatkitError (a user mistake) into one red line and exit code 2.

    Options are checked against :data:`RULES` first, so a bad value never starts work.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _setup_logging()
        try:
            check_options(kwargs)
            return func(*args, **kwargs)
        except FeatkitError as error:
            console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            if isinstance(error, DiskFullError):
                _exit_now(2)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: rerun the same command to resume")
            raise typer.Exit(130) from None
        except pickle.UnpicklingError as error:
            # A weights file refused by a weights-only load, met outside safe_loads.
            first = str(error).strip().splitlines()[0] if str(error).strip() else "refused"
            console.print(
                f"[bold red]error:[/] expected weights without pickled code, got a file a "
                f"safe load refuses ({first[:120]})",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(2) from None
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


def _exit_now(code: int) -> None:
    """End the process without interpreter teardown, after a full disk.

    HDF5 can keep a file open that it failed to close for lack of space; at teardown it
    retries those writes and the process dies (SIGBUS or SIGSEGV, seen on a full tmpfs)
    after the one-line message. Every file featkit keeps is already fsynced and renamed,
    so nothing is lost by skipping teardown. Under a test runner (stderr replaced) this
    returns and the caller exits normally.
    """
    if sys.stderr is not sys.__stderr__:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    os._exit(code)


def _setup_logging() -> None:
    logger = logging.getLogger("featkit")
    if not logger.handlers:
        # A plain console: log lines are padded to the console's width, and the pipe-safe
        # one is 4096 columns wide off a terminal.
        handler = RichHandler(console=Console(stderr=True), show_time=False, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        # A warning logged in every episode prints once.
        handler.addFilter(OnceFilter())
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
def progress_bars() -> Iterator[Progress]:
    """Rich bars on stderr when it is a terminal; nothing otherwise (logs stay clean)."""
    if not console.is_terminal:
        yield SILENT
        return
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
