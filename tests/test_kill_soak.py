"""The kill -9 soak (benchmarks/kill_soak.py): a short run by default, the full one as a benchmark.

A `featkit probe` and a `featkit report` on a tiny imported workspace are each killed
once at a seeded random moment and rerun; the outcome must equal an uninterrupted run
and everything a reader sees must stay readable at the moment of the kill. The
soak's own checks are tested against damage made by hand, so that a pass means
something.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from typer.testing import CliRunner

from featkit.cli import app
from featkit.store.reader import import_features

REPO = Path(__file__).resolve().parents[1]


def _load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kill_soak", REPO / "benchmarks/kill_soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["kill_soak"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


soak = _load_soak()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with one imported store of real digits, another run's results and a report."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("soak")
    digits = load_digits()
    keep = np.concatenate([np.flatnonzero(digits.target == c)[:8] for c in range(10)])
    labels = root / "digits.csv"
    labels.write_text("path,label\n" + "".join(f"{i:04d}.png,{digits.target[i]}\n" for i in keep))
    ws = root / "ws"
    import_features(digits.data[keep].astype(np.float32), labels, "px", ws, dataset="digits")
    # Another configuration's results (prototype): a probe of knn must keep them.
    runner = CliRunner()
    for args in (
        ["probe", "--shots", "1", "--episodes", "1", "--protocols", "prototype", "-w", ws],
        ["report", str(ws)],
    ):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    return root


PROBE = soak.Command(
    "probe",
    ["probe", "--shots", "1,all", "--episodes", "2", "--protocols", "knn", "-w", "{ws}"],
    ("results",),
)
REPORT = soak.Command("report", ["report", "{ws}"], ("report",))


@pytest.mark.parametrize("command", [PROBE, REPORT], ids=lambda c: c.name)
def test_one_kill_then_the_rerun_equals_an_uninterrupted_run(
    base: Path, tmp_path: Path, command: object
) -> None:
    row = soak.soak(command, base, tmp_path, 1, np.random.default_rng(0), log=lambda _: None)
    assert row.failures == []
    assert (row.tried, row.survived, row.readable) == (1, 1, 1)


def test_the_checks_find_damage_made_by_hand(base: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(base / "ws", ws)
    kept = soak._run_ids(ws)
    assert kept and soak.check_readable(ws, kept) == []
    truth = soak.outcome(ws, soak.Command("all", [], ("report", "results", "digits")))

    png = next((ws / "report").glob("*.png"))
    png.write_bytes(png.read_bytes()[:100])  # a figure cut mid-write
    html = ws / "report" / "report.html"
    html.write_text(html.read_text()[:500])
    (ws / "digits" / "px.h5").write_bytes(b"")
    (ws / "report" / ".comparison.csv.tmp").write_text("")
    problems = soak.check_readable(ws, kept | {"a-run-that-is-gone"})
    for expected in (png.name, "HTML cut short", "px.h5", "earlier runs lost"):
        assert any(expected in p for p in problems), (expected, problems)
    assert soak._temporaries(ws) == ["report/.comparison.csv.tmp"]

    csv = ws / "results" / "results.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]) + "\n")  # one result row lost
    got = soak.outcome(ws, soak.Command("all", [], ("report", "results")))
    assert got["results/results.csv"] != truth["results/results.csv"]
    assert got[f"report/{png.name}"] is False


@pytest.mark.benchmark
def test_every_writing_command_survives_a_kill() -> None:
    rows = soak.main(["--kills", "1", "--per-class", "8"])
    assert [r.failures for r in rows] == [[] for _ in rows]
