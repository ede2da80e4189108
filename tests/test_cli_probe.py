"""`featkit probe` as a user runs it: tables, files, reruns, one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from featkit.cli import app
from tests.test_evaluate import make_store

runner = CliRunner()
FAST = ["--protocols", "knn,prototype,kmeans", "--episodes", "2"]


def _probe(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["probe", *args])
    return result.exit_code, result.output


def test_probe_prints_the_table_and_writes_the_csvs(tmp_path: Path) -> None:
    make_store(tmp_path, "model_a")
    make_store(tmp_path, "model_b", seed=1)
    code, output = _probe("-w", str(tmp_path), "--shots", "1,5", "--knn-k", "3,10", *FAST)
    assert code == 0, output
    assert "balanced accuracy" in output and "5-shot" in output
    # The report's labels: a protocol run with several settings shows its params.
    assert "k=3;" in output and "k=10;" in output and "model_b" in output
    files = {p.name for p in (tmp_path / "results").iterdir() if not p.name.startswith(".")}
    assert files == {"results.csv", "summary.csv", "per_class.csv", "confusion.csv"}
    rows = pd.read_csv(tmp_path / "results" / "results.csv")
    code, _ = _probe("-w", str(tmp_path), "--shots", "1,5", "--knn-k", "3,10", *FAST)
    assert code == 0
    assert len(pd.read_csv(tmp_path / "results" / "results.csv")) == len(rows)  # no duplicates


def test_probe_runs_logistic_and_balanced_on_a_named_store(tmp_path: Path) -> None:
    store = make_store(tmp_path / "elsewhere", "m")
    code, output = _probe(
        str(store),
        "-w",
        str(tmp_path / "ws"),
        "--shots",
        "all",
        "--protocols",
        "logistic,balanced",
        "--logistic-c",
        "0.5",
        "--balanced-base",
        "knn",
        "--feature",
        "patch_mean",
    )
    assert code == 0, output
    rows = pd.read_csv(tmp_path / "ws" / "results" / "results.csv")
    assert set(rows["protocol"]) == {"logistic", "balanced"}
    assert set(rows["feature"]) == {"patch_mean"}
    assert rows.loc[rows["protocol"] == "logistic", "params"].str.contains("c=0.5").all()


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("unlabelled", [], "expected labels for protocol(s) knn"),
        ("single", [], "expected at least 2 classes"),
        ("ok", ["--shots", "500"], "--shots 500: expected at most"),
        ("nan", [], "expected finite cls features, got NaN/inf in 1 image"),
        ("ok", ["--protocols", "knnn"], "did you mean knn?"),
        ("ok", ["--feature", "patches"], "--feature: expected cls"),
        ("ok", ["--knn-k", "ten"], "--knn-k: expected a comma-separated list of int"),
        ("none", [], "expected stores"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(
    tmp_path: Path, setup: str, args: list[str], message: str
) -> None:
    if setup == "unlabelled":
        make_store(tmp_path, labels=False)
    elif setup == "single":
        make_store(tmp_path, sizes=(20,))
    elif setup == "nan":
        make_store(tmp_path, nan_row=5)
    elif setup == "ok":
        make_store(tmp_path)
    code, output = _probe("-w", str(tmp_path), *FAST, *args)
    assert code == 2, output
    assert message in " ".join(output.split())
    assert "Traceback" not in output


def test_help_has_examples() -> None:
    code, output = _probe("--help")
    assert code == 0 and "Examples:" in output and "--knn-k" in output


def test_import_then_probe(tmp_path: Path) -> None:
    """Features computed elsewhere: `featkit import` (store named after the .npy), then probe."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [20, 15, 10])
    features = (rng.normal(size=(3, 8))[y] * 3 + rng.normal(size=(45, 8))).astype(np.float32)
    csv = tmp_path / "labels.csv"
    pd.DataFrame({"label": [f"c{c}" for c in y]}).to_csv(csv, index=False)
    np.save(tmp_path / "mine.npy", features)
    ws = str(tmp_path / "ws")
    imported = runner.invoke(
        app, ["import", str(tmp_path / "mine.npy"), "--labels", str(csv), "-w", ws]
    )
    assert imported.exit_code == 0, imported.output
    assert (tmp_path / "ws" / "labels" / "mine.h5").is_file()
    code, output = _probe("-w", ws, "--shots", "1,all", *FAST)
    assert code == 0, output
    assert "mine" in output
    rows = pd.read_csv(tmp_path / "ws" / "results" / "results.csv")
    assert set(rows["model"]) == {"mine"} and set(rows["dataset"]) == {"labels"}
