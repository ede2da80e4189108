"""The comparison table from a hand-written results CSV: exact means, intervals, best cells."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from featkit.errors import FeatkitError
from featkit.report.build import (
    comparison_table,
    gather_results,
    shots_sort_key,
    summarize,
    write_report,
)

# t(0.975, df) from tables, independent of scipy: df=1 -> 12.7062, df=2 -> 4.3027, df=3 -> 3.1824
T_975 = {1: 12.706205, 2: 4.302653, 3: 3.182446}

HEADER = "dataset,model,feature,protocol,params,shots,episode,metric,value\n"
# knn@1: 0.50 0.60 0.70 -> mean 60, std 10 (points), half = 4.302653*10/sqrt(3) = 24.84
# logistic@1: 0.60 0.80 -> mean 70, std 14.142, half = 12.706205*14.142/sqrt(2) = 127.06
# knn@10: 0.80 0.84 0.82 0.86 -> mean 83, std 2.582, half = 3.182446*2.582/2 = 4.108
# logistic@10: 0.90 0.90 0.90 0.90 -> mean 90, std 0, half 0
# knn@all: 0.88 (one episode) -> mean 88, shown alone
# logistic@all: 0.91 ; kmeans@0: 0.30 0.40 -> mean 35
ROWS = """\
d,m,cls,knn,k=20;t=0.07,1,0,balanced_accuracy,0.50
d,m,cls,knn,k=20;t=0.07,1,1,balanced_accuracy,0.60
d,m,cls,knn,k=20;t=0.07,1,2,balanced_accuracy,0.70
d,m,cls,logistic,,1,0,balanced_accuracy,0.60
d,m,cls,logistic,,1,1,balanced_accuracy,0.80
d,m,cls,knn,k=20;t=0.07,10,0,balanced_accuracy,0.80
d,m,cls,knn,k=20;t=0.07,10,1,balanced_accuracy,0.84
d,m,cls,knn,k=20;t=0.07,10,2,balanced_accuracy,0.82
d,m,cls,knn,k=20;t=0.07,10,3,balanced_accuracy,0.86
d,m,cls,logistic,,10,0,balanced_accuracy,0.90
d,m,cls,logistic,,10,1,balanced_accuracy,0.90
d,m,cls,logistic,,10,2,balanced_accuracy,0.90
d,m,cls,logistic,,10,3,balanced_accuracy,0.90
d,m,cls,knn,k=20;t=0.07,all,0,balanced_accuracy,0.88
d,m,cls,logistic,,all,0,balanced_accuracy,0.91
d,m,cls,kmeans,,0,0,balanced_accuracy,0.30
d,m,cls,kmeans,,0,1,balanced_accuracy,0.40
d,m,cls,knn,k=20;t=0.07,1,0,accuracy,0.99
"""


def write_workspace(root: Path, rows: str = ROWS) -> Path:
    (root / "results").mkdir(parents=True, exist_ok=True)
    (root / "results" / "results.csv").write_text(HEADER + rows)
    return root


def test_shots_order() -> None:
    shots = ["all", "10", "10%", "1", "0", "5", "1%", "100"]
    assert sorted(shots, key=shots_sort_key) == ["0", "1", "5", "10", "100", "1%", "10%", "all"]


def test_means_and_intervals_match_hand_computation(tmp_path: Path) -> None:
    summary = summarize(gather_results(write_workspace(tmp_path)), "balanced_accuracy")
    got = {(r.protocol, r.shots): r for r in summary.itertuples()}
    knn1 = got["knn", "1"]
    assert knn1.mean == pytest.approx(0.6, abs=1e-12)
    assert knn1.n == 3
    assert knn1.half == pytest.approx(T_975[2] * 0.1 / math.sqrt(3), rel=1e-5)
    log1 = got["logistic", "1"]
    assert log1.half == pytest.approx(T_975[1] * math.sqrt(0.02) / math.sqrt(2), rel=1e-5)
    knn10 = got["knn", "10"]
    std = math.sqrt(sum((v - 0.83) ** 2 for v in (0.80, 0.84, 0.82, 0.86)) / 3)
    assert knn10.mean == pytest.approx(0.83, abs=1e-12)
    assert knn10.half == pytest.approx(T_975[3] * std / 2, rel=1e-5)
    assert knn10.low == pytest.approx(0.83 - knn10.half)
    assert got["logistic", "10"].half == 0.0
    assert got["knn", "all"].n == 1 and got["knn", "all"].half == 0.0
    # Only the asked metric: the accuracy row is not mixed in.
    assert knn1.n == 3


def test_table_cells_columns_and_best(tmp_path: Path) -> None:
    summary = summarize(gather_results(write_workspace(tmp_path)), "balanced_accuracy")
    table = comparison_table(summary, "balanced_accuracy")
    assert table.columns == ["0", "1", "10", "all"]
    assert [r[2] for r in table.rows] == ["knn", "logistic", "kmeans"]
    wide = table.wide().set_index("method")
    assert wide.loc["knn", "1"] == "60.0 ± 24.8 ≈"  # ≈: tied (see the best rule)
    assert wide.loc["logistic", "1"] == "70.0 ± 127.1 ≈"
    assert wide.loc["knn", "10"] == "83.0 ± 4.1"
    assert wide.loc["logistic", "10"] == "90.0 ± 0.0"
    assert wide.loc["knn", "all"] == "88.0 ≈"  # one episode, no test_se: no interval
    assert wide.loc["kmeans", "0"] == "35.0 ± 63.5"
    assert wide.loc["kmeans", "1"] == "–"
    # No per-image outcomes here: only measured, non-overlapping intervals separate cells.
    # 10-shot logistic 90 ± 0 (4 episodes) clears knn's 83 ± 4.1; the 1-shot intervals
    # overlap and the single-episode `all` cells have no measured spread: ties. k-means,
    # alone in its column, has nothing to be better than.
    best = {(r.method, r.shots) for r in table.cells.itertuples() if r.best}
    assert best == {("logistic", "10")}
    tied = {(r.method, r.shots) for r in table.cells.itertuples() if r.tied}
    assert tied == {("knn", "1"), ("logistic", "1"), ("knn", "all"), ("logistic", "all")}

    md = table.to_markdown()
    assert "| m | logistic | – | 70.0 ± 127.1 ≈ | **90.0 ± 0.0** | 91.0 ≈ |" in md
    assert "| m | knn | – | 60.0 ± 24.8 ≈ |" in md
    assert "McNemar" in md and "≈: not separable" in md
    tex = table.to_latex()
    assert "\\textbf{90.0 $\\pm$ 0.0}" in tex and "60.0 $\\pm$ 24.8 $\\approx$" in tex
    assert "\\begin{tabular}{llrrrr}" in tex

    path = tmp_path / "comparison.csv"
    table.to_csv(path)
    csv = pd.read_csv(path, dtype={"shots": str})
    row = csv[(csv["method"] == "knn") & (csv["shots"] == "10")].iloc[0]
    assert row["mean"] == pytest.approx(83.0, abs=1e-4)
    assert row["ci95_half_width"] == pytest.approx(
        100 * T_975[3] * std_of([80, 84, 82, 86]) / 200, abs=1e-3
    )
    assert csv["best"].sum() == 1 and csv["tied"].sum() == 4


def std_of(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_method_label_shows_params_and_feature_only_when_needed(tmp_path: Path) -> None:
    rows = (
        "d,m,cls,knn,k=10,5,0,balanced_accuracy,0.5\n"
        "d,m,cls,knn,k=20,5,0,balanced_accuracy,0.6\n"
        "d,m,patch_mean,logistic,,5,0,balanced_accuracy,0.7\n"
    )
    summary = summarize(gather_results(write_workspace(tmp_path, rows)), "balanced_accuracy")
    table = comparison_table(summary, "balanced_accuracy")
    assert sorted(r[2] for r in table.rows) == [
        "knn (k=10) [cls]",
        "knn (k=20) [cls]",
        "logistic [patch_mean]",
    ]


def test_without_a_measured_spread_the_top_cells_tie(tmp_path: Path) -> None:
    rows = (
        "d,a,cls,knn,,5,0,balanced_accuracy,0.75\n"
        "d,b,cls,knn,,5,0,balanced_accuracy,0.75\n"
        "d,c,cls,knn,,5,0,balanced_accuracy,0.70\n"
    )
    table = comparison_table(
        summarize(gather_results(write_workspace(tmp_path, rows)), "balanced_accuracy"),
        "balanced_accuracy",
    )
    assert table.best_cells() == set()
    assert sorted(r.model for r in table.cells.itertuples() if r.tied) == ["a", "b", "c"]


def test_summary_csv_fallback(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "summary.csv").write_text(
        "dataset,model,feature,protocol,params,shots,metric,mean,std,ci95_low,ci95_high,n_episodes\n"
        "d,m,cls,knn,,5,balanced_accuracy,0.8,0.02,0.75,0.85,5\n"
    )
    results = gather_results(tmp_path)
    assert results.from_summary
    table = comparison_table(summarize(results, "balanced_accuracy"), "balanced_accuracy")
    assert table.wide().loc[0, "5"] == "80.0 ± 5.0"


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FeatkitError, match=r"expected results in .*results\.csv"):
        gather_results(tmp_path)
    write_workspace(tmp_path)
    with pytest.raises(FeatkitError, match="metric 'macro_f9': expected one of accuracy"):
        summarize(gather_results(tmp_path), "macro_f9")
    with pytest.raises(FeatkitError, match=r"--shots 3: expected one of .*0, 1, 10, all"):
        write_report(tmp_path, shots="3")
    (tmp_path / "results" / "results.csv").write_text("dataset,model\nd,m\n")
    with pytest.raises(FeatkitError, match="missing feature, protocol"):
        gather_results(tmp_path)
    (tmp_path / "results" / "results.csv").write_text(HEADER + "d,m,cls,knn,,1,0,accuracy,abc\n")
    with pytest.raises(FeatkitError, match="expected numbers in column 'value', got 'abc'"):
        gather_results(tmp_path)


def test_missing_values_are_not_episodes(tmp_path: Path) -> None:
    rows = (
        "d,m,cls,knn,,5,0,macro_auroc,0.9\n"
        "d,m,cls,knn,,5,1,macro_auroc,\n"
        "d,m,cls,knn,,5,2,macro_auroc,nan\n"
        "d,m,cls,knn,,5,3,macro_auroc,0.7\n"
    )
    summary = summarize(gather_results(write_workspace(tmp_path, rows)), "macro_auroc")
    assert summary.loc[0, "n"] == 2
    assert summary.loc[0, "mean"] == pytest.approx(0.8)


def test_several_datasets_get_a_column_and_their_own_best(tmp_path: Path) -> None:
    rows = (
        "a,m1,cls,knn,,5,0,balanced_accuracy,0.9\n"
        "a,m1,cls,knn,,5,1,balanced_accuracy,0.91\n"
        "a,m2,cls,knn,,5,0,balanced_accuracy,0.5\n"
        "a,m2,cls,knn,,5,1,balanced_accuracy,0.51\n"
        "b,m1,cls,knn,,5,0,balanced_accuracy,0.3\n"
        "b,m1,cls,knn,,5,1,balanced_accuracy,0.31\n"
        "b,m2,cls,knn,,5,0,balanced_accuracy,0.7\n"
        "b,m2,cls,knn,,5,1,balanced_accuracy,0.71\n"
    )
    table = comparison_table(
        summarize(gather_results(write_workspace(tmp_path, rows)), "balanced_accuracy"),
        "balanced_accuracy",
    )
    assert list(table.wide().columns) == ["dataset", "model", "method", "5"]
    assert table.best_cells() == {("a", "m1", "knn", "5"), ("b", "m2", "knn", "5")}
    files = write_report(tmp_path)
    assert {p.name for p in files.plots} == {
        "shots_balanced_accuracy_a.png",
        "shots_balanced_accuracy_b.png",
    }
