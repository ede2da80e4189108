"""One console comparison table: probe, finetune and report print the same cells."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from featkit.cli import app
from featkit.cli.finetune import _print_summary
from featkit.results.io import read_results, write_results
from tests.test_evaluate import make_store

runner = CliRunner()
TITLE = "(%, mean ± 95% CI"  # the title, which wraps on a narrow table


def _table(output: str) -> list[str]:
    """The comparison table's lines, title to bottom rule (the report prints more)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if TITLE in line)
    end = next(i for i in range(start, len(lines)) if lines[i].lstrip().startswith("└"))
    return [line.rstrip() for line in lines[start : end + 1]]


def _report(workspace: Path) -> list[str]:
    result = runner.invoke(app, ["report", str(workspace)])
    assert result.exit_code == 0, result.output
    return _table(result.stdout)


def test_probe_prints_the_reports_table(tmp_path: Path) -> None:
    make_store(tmp_path, "model_a")
    args = ["probe", "-w", str(tmp_path), "--shots", "5", "--episodes", "2"]
    result = runner.invoke(app, [*args, "--protocols", "knn,prototype"])
    assert result.exit_code == 0, result.output
    shown = _table(result.stdout)
    assert any("model_a" in line and "prototype" in line for line in shown)
    assert shown == _report(tmp_path)


def test_finetune_prints_the_reports_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fine-tune's rows (here the probe's, relabelled) print as the report prints them."""
    make_store(tmp_path / "probed", "model_a")
    args = ["probe", "-w", str(tmp_path / "probed"), "--shots", "1,5", "--episodes", "2"]
    assert runner.invoke(app, [*args, "--protocols", "prototype"]).exit_code == 0
    rows = read_results(tmp_path / "probed").assign(protocol="finetune-lora")
    workspace = tmp_path / "tuned"
    write_results(workspace, rows)
    outcome = SimpleNamespace(shots="1", seconds=2.0, trainable=10, total=1000)
    run = SimpleNamespace(
        dataset="toy",
        model="model_a",
        protocol="finetune-lora",
        params=str(rows["params"].iloc[0]),
        outcomes=[outcome, SimpleNamespace(**{**vars(outcome), "shots": "5"})],
        seconds=4.0,
        results_dir=workspace / "results",
        failed=[],
    )
    _print_summary(run, workspace)  # type: ignore[arg-type]
    printed = capsys.readouterr().out
    shown = _table(printed)
    assert any("finetune-lora" in line for line in shown)
    assert shown == _report(workspace)
    assert "training seconds per episode by shots: 1 2.0, 5 2.0" in printed
