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
    code, output = _probe("-w", str(tmp_path), "--shots", "1,5", "--param", "knn.k=3,10", *FAST)
    assert code == 0, output
    assert "balanced accuracy" in output and "5-shot" in output
    # The report's labels: a protocol run with several settings shows its params.
    assert "k=3;" in output and "k=10;" in output and "model_b" in output
    files = {p.name for p in (tmp_path / "results").iterdir() if not p.name.startswith(".")}
    assert files == {"results.csv", "summary.csv", "per_class.csv", "confusion.csv"}
    rows = pd.read_csv(tmp_path / "results" / "results.csv")
    code, _ = _probe("-w", str(tmp_path), "--shots", "1,5", "--param", "knn.k=3,10", *FAST)
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
        ("ok", ["--knn-k", "ten"], "--knn-k knn.k: expected int, got 'ten'"),
        ("ok", ["--param", "knn.kk=5"], "got 'kk' (did you mean knn.k?)"),
        ("ok", ["--param", "knnn.k=5"], "did you mean knn?"),
        ("ok", ["--param", "logistic.c=1"], "got logistic (add it to --protocols)"),
        ("ok", ["--param", "knn.k"], "expected PROTOCOL.SETTING=VALUE"),
        ("ok", ["--param", "kmeans.n_init=0"], "kmeans n_init: expected an integer ≥ 1, got 0"),
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
    assert code == 0 and "Examples:" in output and "--param knn.k=10,20" in output
    assert "--list-protocols" in output and "--knn-k" not in output  # aliases are hidden


def test_list_protocols_shows_every_protocol_with_typed_settings() -> None:
    code, output = _probe("--list-protocols")
    assert code == 0, output
    text = " ".join(output.split())
    for name in ("knn", "logistic", "prototype", "balanced", "kmeans"):
        assert name in text
    assert "k: int = 20" in text and "c: float | None = None" in text
    assert "label-free" in text


def test_old_flags_are_spellings_of_param(tmp_path: Path) -> None:
    make_store(tmp_path)
    args = ["-w", str(tmp_path), "--shots", "5", "--protocols", "knn", "--episodes", "1"]
    assert _probe(*args, "--knn-k", "3", "--knn-t", "0.1")[0] == 0
    first = pd.read_csv(tmp_path / "results" / "results.csv")
    code, output = _probe(*args, "--param", "knn.k=3", "--param", "knn.temperature=0.1")
    assert code == 0 and "knn" in output
    again = pd.read_csv(tmp_path / "results" / "results.csv")
    assert set(again["run_id"]) == set(first["run_id"])  # the same runs, not new ones
    assert first["params"].str.contains("k=3").all()


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
