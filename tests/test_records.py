"""One owner of the evaluation record: the same predictions give the same rows from a
probe and from a fine-tune; the run identity follows the data, not the row order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featkit.evaluation.probe import ProbeSettings, evaluate_arrays, probe
from featkit.evaluation.records import data_id
from featkit.evaluation.shots import Shots, parse_shots, shots_sort_key
from featkit.evaluation.splits import (
    episodes,
    round_half_up,
    stratified_folds,
    train_test_split,
)
from featkit.results.io import read_confusion, read_per_class, read_results
from featkit.tune.run import EpisodeOutcome, FinetuneRun, LabelledImages, write_results
from tests.test_evaluate import FAST, make_store, toy_data


def _sorted(frame, columns):
    return frame[columns].astype(str).sort_values(columns).reset_index(drop=True)


# Columns that name the route, not the numbers: they differ between a probe and a tune
# by design (the route's cost, the fitted hyper-parameters of a probe).
ROUTE_COLUMNS = {"protocol", "params", "run_id", "fitted", "seconds", "peak_mb"}


def test_probe_and_finetune_rows_of_the_same_predictions_are_identical(tmp_path: Path) -> None:
    """Both stages turn predictions into rows with evaluation.records.episode_records: the same
    predictions on the same draws (from one Sweep) give identical rows, column for column,
    bootstrap errors and per-image correctness bits included."""
    data = toy_data()
    rng = np.random.default_rng(1)
    # Noisy features: wrong predictions, so recalls, confusion cells and test_se vary.
    data.features["cls"] = data.features["cls"] + rng.normal(
        scale=4.0, size=data.features["cls"].shape
    ).astype(np.float32)
    spec = FAST[1]  # prototype: deterministic predictions and scores
    settings = ProbeSettings(protocols=(spec,), shots=parse_shots("5,all"), episodes=2)
    probed = evaluate_arrays(data, settings)
    X, y = data.features["cls"], data.labels
    run = FinetuneRun(data.dataset, data.model, "finetune-linear", "", sweep=settings.sweep)
    run.fingerprint = {"sha": "x"}
    for draw in settings.sweep.draws(data.paths, y, None, data.label_names):
        model = spec.create().fit(X[draw.train], y[draw.train])
        run.outcomes.append(
            EpisodeOutcome(
                shots=str(draw.shots),
                episode=draw.episode,
                effective_shots=draw.effective_shots,
                train_paths=[data.paths[i] for i in draw.train],
                test_paths=[data.paths[i] for i in draw.test],
                y_train=y[draw.train],
                y_true=y[draw.test],
                y_pred=model.predict(X[draw.test]),
                scores=model.predict_proba(X[draw.test]),
                losses=[],
                seconds=0.0,
                trainable=1,
                total=1,
            )
        )
    images = LabelledImages(
        "toy", tmp_path, tuple(data.paths), y, ("",) * len(y), data.label_names,
        store=Path(data.store),
    )  # fmt: skip
    write_results(run, images, tmp_path)
    tuned = {
        "results": read_results(tmp_path),
        "per_class": read_per_class(tmp_path),
        "confusion": read_confusion(tmp_path),
    }
    mine = {"results": probed.results, "per_class": probed.per_class, "confusion": probed.confusion}
    assert 0.3 < probed.results.query("metric == 'accuracy'")["value"].max() < 1.0  # not trivial
    for name, frame in mine.items():
        columns = sorted((set(frame.columns) & set(tuned[name].columns)) - ROUTE_COLUMNS)
        a, b = _sorted(frame, columns), _sorted(tuned[name], columns)
        assert len(a) == len(b) > 0, name
        for column in columns:  # floats through a CSV round trip
            if column in ("value", "test_se", "recall"):
                np.testing.assert_allclose(a[column].astype(float), b[column].astype(float))
            else:
                assert a[column].tolist() == b[column].tolist(), (name, column)


def test_data_id_follows_images_labels_and_splits_not_row_order() -> None:
    paths, labels = ["a", "b", "c"], [0, 1, 1]
    base = data_id("d", paths, labels, None, ("x", "y"))
    assert data_id("d", paths[::-1], labels[::-1], None, ("x", "y")) == base
    assert data_id("d", paths, [0, 1, 0], None, ("x", "y")) != base
    assert data_id("d", paths, labels, ["train", "test", "train"], ("x", "y")) != base
    assert data_id("e", paths, labels, None, ("x", "y")) != base


def test_round_half_up_on_hold_out_sizes() -> None:
    assert [round_half_up(x) for x in (0.5, 1.5, 2.5, 0.3 * 5, 2.4999)] == [1, 2, 3, 2, 2]
    # 25 images, 10 % test: 2.5 → 3 test images (round() gave 2).
    paths = [f"p{i}" for i in range(50)]
    labels = [0] * 25 + [1] * 25
    _, test = train_test_split(paths, labels, test_fraction=0.1)
    assert np.bincount(np.asarray(labels)[test]).tolist() == [3, 3]


def test_folds_test_every_labelled_image_once() -> None:
    paths = [f"p{i:02d}" for i in range(23)]
    labels = np.array([0] * 11 + [1] * 7 + [2] * 4 + [3] * 1)
    folds = stratified_folds(paths, labels, 5)
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested.tolist()) == list(range(22))  # the single-image class trains only
    for train, test in folds:
        assert not set(train) & set(test) and 22 in train
    draws = list(episodes(paths, labels, None, [Shots("all")], 1, n_splits=5))
    assert [d.episode for d in draws] == [0, 1, 2, 3, 4]


def test_shots_has_one_order() -> None:
    shots = ["all", "10", "10%", "1", "0", "5", "1%", "100", "weird"]
    assert sorted(shots, key=shots_sort_key) == [
        "0", "1", "5", "10", "100", "1%", "10%", "all", "weird"
    ]  # fmt: skip


def test_stores_of_one_dataset_with_other_images_are_refused(tmp_path: Path) -> None:
    from featkit.errors import FeatkitError

    a = make_store(tmp_path / "a", "m1")
    b = make_store(tmp_path / "b", "m2", sizes=(30, 20, 10))
    settings = ProbeSettings(protocols=FAST[:1], shots=parse_shots("1"), episodes=1)
    with pytest.raises(FeatkitError, match="--allow-different-images"):
        probe([a, b], settings)
    assert len(probe([a, b], settings, allow_different_images=True).results) > 0


def test_two_stores_of_one_dataset_and_model_are_refused_before_any_write(
    tmp_path: Path,
) -> None:
    from featkit.errors import FeatkitError

    a = make_store(tmp_path / "a", "m1")
    b = make_store(tmp_path / "b", "m1", seed=1)  # same images, other features
    settings = ProbeSettings(protocols=FAST[:1], shots=parse_shots("1"), episodes=1)
    with pytest.raises(FeatkitError, match="one store per dataset and model"):
        probe([a, b], settings, workspace=tmp_path / "ws")
    assert not (tmp_path / "ws" / "results").exists()


def test_folds_and_the_standard_split_never_share_a_run(tmp_path: Path) -> None:
    store = make_store(tmp_path, "m")
    plain = ProbeSettings(protocols=FAST[:1], shots=parse_shots("all"), episodes=1)
    folded = ProbeSettings(protocols=FAST[:1], shots=parse_shots("all"), episodes=1, splits=3)
    folds = probe([store], folded, workspace=tmp_path).results
    assert sorted(set(folds["episode"].astype(int))) == [0, 1, 2]
    tested = folds[folds["metric"] == "accuracy"]["n_test"].sum()
    assert tested == 62  # 3 folds test every image of the 30 + 20 + 12 once
    again = probe([store], plain, workspace=tmp_path)  # must not return fold 0 as the split
    stored = read_results(tmp_path)
    assert sorted(set(stored["episode"].astype(int))) == [0]
    assert set(stored["run_id"]) == set(again.results["run_id"])
    rows = again.results[again.results["metric"] == "accuracy"]
    assert rows["n_test"].tolist() == [12]  # the standard split: 6 + 4 + 2 test images


def test_imported_features_without_paths_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from featkit.store.reader import import_features
    from tests.test_evaluate import toy_arrays

    X, y, paths = toy_arrays()
    for name, with_paths in (("named", True), ("numbered", False)):
        csv = tmp_path / name / "toy.csv"
        csv.parent.mkdir()
        lines = [f"{p},{c}" if with_paths else f"{c}" for p, c in zip(paths, y, strict=True)]
        csv.write_text(("path,label\n" if with_paths else "label\n") + "\n".join(lines) + "\n")
        store = import_features(X, csv, name, tmp_path / "ws", dataset=name)
        caplog.clear()
        probe([store], ProbeSettings(protocols=FAST[:1], shots=parse_shots("1"), episodes=1))
        warned = "imported without a 'path' column" in caplog.text
        assert warned == (not with_paths), name


def test_records_refuse_the_resamples_of_another_test_set() -> None:
    from featkit.bootstrap import StratifiedBootstrap
    from featkit.errors import FeatkitError
    from featkit.evaluation.records import episode_records

    y_test = np.array([0, 0, 1, 1, 2])
    base = {c: "x" for c in ("dataset", "model", "feature", "protocol", "params", "shots")}
    base |= {"episode": 0, "run_id": "r"}
    shared = StratifiedBootstrap(y_test, n_boot=50, seed=3)
    rows, _, _ = episode_records(base, y_test, y_test, y_test[::-1], (), bootstrap=shared)
    alone, _, _ = episode_records(base, y_test, y_test, y_test[::-1], (), n_boot=50, seed=3)
    assert [r["test_se"] for r in rows] == [r["test_se"] for r in alone]
    with pytest.raises(FeatkitError, match="bootstrap: expected the resamples of this test set"):
        episode_records(base, y_test, y_test[::-1], y_test, (), bootstrap=shared)
