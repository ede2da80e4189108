"""Output that survives a pipe: whole table headers, no bars off a terminal, warnings once."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

import featkit.cli.probe as probe_cli
from featkit.cli import _common, app
from featkit.cli._console import PipeSafeConsole
from featkit.progress import SILENT, OnceFilter
from tests.test_evaluate import make_store

HEADERS = ["dataset", "model", "protocol", "1-shot", "5-shot", "10-shot", "all"]


def _wide_table() -> Table:
    table = Table(title="balanced accuracy")
    for header in HEADERS:
        table.add_column(header)
    table.add_row("flowers", "dinov2_vitb14_reg", "balanced base=knn", *["84.3 ± 2.5"] * 4)
    return table


def test_pipe_safe_console_keeps_whole_headers_where_a_plain_console_cuts_them() -> None:
    plain, safe = io.StringIO(), io.StringIO()
    Console(file=plain).print(_wide_table())  # not a terminal: 80 columns
    PipeSafeConsole(file=safe).print(_wide_table())
    assert "…" in plain.getvalue()  # the failure this console exists for
    assert "…" not in safe.getvalue()
    header = next(line for line in safe.getvalue().splitlines() if "10-shot" in line)
    assert all(h in header for h in HEADERS)


def test_pipe_safe_console_honours_columns_and_terminals() -> None:
    narrow = io.StringIO()
    PipeSafeConsole(file=narrow, _environ={"COLUMNS": "60"}).print(_wide_table())
    assert max(len(line) for line in narrow.getvalue().splitlines()) <= 60
    assert PipeSafeConsole(file=io.StringIO(), force_terminal=True, width=100).width == 100


def test_probe_summary_headers_are_intact_under_clirunner(tmp_path: Path) -> None:
    # probe prints through featkit.cli._common.out, a PipeSafeConsole: it keeps every
    # header when stdout is not a terminal (CliRunner's is not), and draws no bars.
    assert isinstance(probe_cli.out, PipeSafeConsole)
    make_store(tmp_path, "a_model_with_a_long_name_for_the_table")
    args = ["probe", "-w", str(tmp_path), "--shots", "1,5,10", "--protocols", "knn,prototype"]
    result = CliRunner().invoke(app, [*args, "--episodes", "2"])
    assert result.exit_code == 0, result.output
    assert "10-shot" in result.output and "5-shot" in result.output
    assert "a_model_with_a_long_name_for_the_table" in result.output
    assert "…" not in result.output
    assert "0:00:" not in result.output  # no progress-bar fragments (elapsed time) in a log
    # Log lines are not padded out to the pipe-safe console's 4096 columns.
    assert max(len(line) for line in result.output.splitlines()) < 500


def test_no_progress_bars_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_common, "console", PipeSafeConsole(file=io.StringIO()))
    with _common.progress_bars() as progress:
        assert progress is SILENT
    terminal = PipeSafeConsole(file=io.StringIO(), force_terminal=True)
    monkeypatch.setattr(_common, "console", terminal)
    with _common.progress_bars() as progress:
        assert progress is not SILENT
        progress.task("work", 2).advance(2)
    assert "work" in terminal.file.getvalue()


def test_each_warning_prints_once() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(OnceFilter())
    logger = logging.getLogger("featkit.test_once")
    logger.addHandler(handler)
    try:
        for _ in range(3):
            logger.warning("skipping %s: %s", "a.jpg", "truncated")
        logger.warning("skipping %s: %s", "b.jpg", "truncated")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().splitlines() == [
        "skipping a.jpg: truncated",
        "skipping b.jpg: truncated",
    ]
