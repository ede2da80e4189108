"""Grids chosen on a validation split of the training images, never on test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score
from typer.testing import CliRunner

from featkit.cli import app
from featkit.evaluation.probe import EvalData, ProbeSettings, ProtocolSpec, evaluate_arrays
from featkit.evaluation.selection import SelectOnValidation, select_grids, validation_split
from featkit.evaluation.splits import parse_shots
from tests.test_evaluate import make_store


def test_validation_split_by_hand() -> None:
    y = np.array([0] * 10 + [1] * 5 + [2])
    fit, val = validation_split(y, seed=3)
    # 20 % of 10 → 2, of 5 → 1 (half up), a single image stays in the fit part.
    assert np.bincount(y[val], minlength=3).tolist() == [2, 1, 0]
    assert np.intersect1d(fit, val).size == 0
    assert np.union1d(fit, val).tolist() == list(range(y.size))


def _blobs(seed: int, n: int = 60, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n // 3)
    X = rng.normal(0, 1.0, (n, d)) + 1.5 * np.eye(3, d)[y]
    return X.astype(np.float32), y


def test_choice_equals_a_hand_computed_validation_score() -> None:
    X, y = _blobs(0)
    grid = [ProtocolSpec.of("knn", k=k) for k in (1, 3, 25)]
    model = SelectOnValidation(grid).fit(X, y)
    fit, val = validation_split(y, seed=0)
    scores = [
        balanced_accuracy_score(y[val], spec.create().fit(X[fit], y[fit]).predict(X[val]))
        for spec in grid
    ]
    assert model.chosen_ is grid[int(np.argmax(scores))]  # first of the best on ties
    chosen = model.fitted_params_
    assert chosen["selected"] == grid[int(np.argmax(scores))].params_string()
    assert chosen["validation_images"] == val.size
    # The chosen setting is refitted on every training image.
    again = grid[int(np.argmax(scores))].create().fit(X, y)
    assert (model.predict(X) == again.predict(X)).all()


def test_one_image_per_class_has_nothing_to_validate_on() -> None:
    X, y = _blobs(1, n=3)
    grid = [ProtocolSpec.of("knn", k=k) for k in (1, 2)]
    model = SelectOnValidation(grid).fit(X, y)
    assert model.chosen_ is grid[0] and "no validation images" in model.fitted_params_["warning"]


def test_grids_become_one_method_and_singletons_pass_through() -> None:
    specs = (
        ProtocolSpec.of("knn", k=5),
        ProtocolSpec.of("knn", k=20),
        ProtocolSpec.of("prototype"),
        ProtocolSpec.of("kmeans"),
    )
    folded = select_grids(specs)
    assert [s.name for s in folded] == ["knn", "prototype", "kmeans"]
    assert folded[0].params_string().startswith("select=")
    assert folded[1:] == specs[2:]


def test_the_test_images_never_influence_the_choice() -> None:
    X, y = _blobs(2, n=90)
    paths = [f"{i:03d}.png" for i in range(y.size)]
    settings = ProbeSettings(
        protocols=tuple(ProtocolSpec.of("knn", k=k) for k in (1, 5, 25)),
        shots=parse_shots("10,all"),
        episodes=3,
        select=True,
    )

    def chosen(features: np.ndarray) -> list[str]:
        data = EvalData("d", "m", paths, y, {"cls": features})
        rows = evaluate_arrays(data, settings).results
        grid = "|".join(spec.params_string() for spec in settings.protocols)
        assert set(rows["params"]) == {f"select={grid}"}
        firsts = rows.groupby(["shots", "episode"])["fitted"].first()
        return [json.loads(f)["selected"] for f in firsts]

    before = chosen(X)
    # Scramble every test image (the test split depends on paths and labels only).
    from featkit.evaluation.splits import train_test_split

    _, test = train_test_split(paths, y)
    scrambled = X.copy()
    scrambled[test] = np.random.default_rng(9).normal(0, 50, (test.size, X.shape[1]))
    assert chosen(scrambled) == before


def test_cli_select_prints_one_selected_row(tmp_path: Path) -> None:
    make_store(tmp_path, "model_a")
    args = ["probe", "-w", str(tmp_path), "--protocols", "knn", "--knn-k", "1,25"]
    result = CliRunner().invoke(app, [*args, "--shots", "5", "--episodes", "2", "--select"])
    assert result.exit_code == 0, result.output
    assert "knn (selected)" in result.output
