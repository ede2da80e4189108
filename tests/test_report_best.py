"""Best cells by a paired test, ties as ties, effective shots and whole outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featkit.evaluation.records import encode_correct
from featkit.report.build import comparison_table, gather_results, summarize, write_report
from featkit.results.io import write_results

PATHS = [f"img{i:03d}.png" for i in range(50)]
LABELS = np.arange(50) % 2  # two classes of 25 test images


def _rows(model: str, correct: np.ndarray, shots: str = "all", episode: int = 0) -> list[dict]:
    base = {"dataset": "d", "model": model, "feature": "cls", "protocol": "knn", "params": ""}
    return [
        {
            **base,
            "shots": shots,
            "episode": episode,
            "seed": 0,
            "run_id": f"{model}-{shots}-{episode}",
            "metric": metric,
            "value": float(correct.mean()),
            "n_test": correct.size,
            "effective_shots": 3 if shots == "5" else 10,
            "data_id": "same-images",
            "correct": encode_correct(correct, PATHS, LABELS),
        }
        for metric in ("accuracy", "balanced_accuracy")
    ]


def _outcomes(a_only: int, b_only: int) -> tuple[np.ndarray, np.ndarray]:
    both = 50 - a_only - b_only - 5
    a = np.array([1] * a_only + [0] * b_only + [1] * both + [0] * 5, bool)
    b = np.array([0] * a_only + [1] * b_only + [1] * both + [0] * 5, bool)
    return a, b


def _table(workspace: Path):
    results = gather_results(workspace)
    return comparison_table(summarize(results, "accuracy"), "accuracy", results.results)


def test_best_only_where_mcnemar_separates_it(tmp_path: Path) -> None:
    # 10 vs 2 discordant images: chi² = 49/12, p = 0.043 < 0.05 → "a" is best.
    a, b = _outcomes(10, 2)
    write_results(tmp_path / "sep", _rows("a", a) + _rows("b", b))
    table = _table(tmp_path / "sep")
    assert table.best_cells() == {("d", "a", "knn", "all")}
    assert not table.cells["tied"].any()
    # 7 vs 2: chi² = 16/9, p = 0.18 → a tie, although "a" has the higher mean (+10 points).
    a, b = _outcomes(7, 2)
    write_results(tmp_path / "tie", _rows("a", a) + _rows("b", b))
    table = _table(tmp_path / "tie")
    assert table.best_cells() == set()
    assert set(table.cells.loc[table.cells["tied"], "model"]) == {"a", "b"}
    assert table.wide().set_index("model").loc["a", "all"].endswith("≈")


def test_episodes_pair_on_the_same_images(tmp_path: Path) -> None:
    # Three episodes, each 10 vs 2 on the same images: still p = 0.043 (images are the
    # units), and a third model far below is beaten too.
    a, b = _outcomes(10, 2)
    rows = []
    for episode in range(3):
        rows += _rows("a", a, "5", episode) + _rows("b", b, "5", episode)
        rows += _rows("c", np.zeros(50, bool) | (np.arange(50) < 5), "5", episode)
    write_results(tmp_path, rows)
    table = _table(tmp_path)
    assert table.best_cells() == {("d", "a", "knn", "5")}
    cell = table.wide().set_index("model").loc["a", "5"]
    assert "(eff. 3)" in cell  # effective shots below the column's 5


def test_balanced_accuracy_best_uses_the_paired_bootstrap(tmp_path: Path) -> None:
    # B misses every class-1 image that A gets right in 10 of 25: balanced accuracy
    # differs by 20 points, and the paired bootstrap (not a mean ranking) says so.
    a = np.ones(50, bool)
    b = ~((LABELS == 1) & (np.arange(50) < 20))
    write_results(tmp_path, _rows("a", a) + _rows("b", b))
    results = gather_results(tmp_path)
    metric = "balanced_accuracy"
    table = comparison_table(summarize(results, metric), metric, results.results)
    assert table.best_cells() == {("d", "a", "knn", "all")}


def test_report_outputs_survive_a_failed_rewrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = _outcomes(10, 2)
    write_results(tmp_path, _rows("a", a) + _rows("b", b))
    files = write_report(tmp_path)
    before = {p: p.read_bytes() for p in [*files.tables, *files.plots, files.html]}
    assert all(before.values())

    def dies(self: object, target: object, *args: object, **kwargs: object) -> None:
        Path(str(target)).write_bytes(b"")  # a kill mid-write leaves a 0-byte file
        raise OSError("disk full")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", dies)
    with pytest.raises(OSError, match="disk full"):
        write_report(tmp_path)
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in before} == before  # nothing torn, nothing emptied
    assert not list(files.folder.glob(".*.tmp"))
    stale = files.folder / ".report.html.killed.tmp"  # what a kill -9 mid-write leaves
    stale.write_bytes(b"partial")
    write_report(tmp_path)
    assert not stale.exists()
    html = files.html.read_text(encoding="utf-8")
    assert "McNemar" in html and "test images" in html
    csv = pd.read_csv(files.tables[0], dtype={"shots": str})
    assert {"best", "tied", "test_se", "effective_shots"} <= set(csv.columns)
