"""Numbers to trust: no run deletes another's rows, intervals include the test set,
the four result files change as one generation, unchanged reruns are not recomputed."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from featkit.bootstrap import (
    StratifiedBootstrap,
    bootstrap_metrics,
    bootstrap_se,
    stratified_bootstrap_indices,
)
from featkit.cli import app
from featkit.errors import FeatkitError
from featkit.evaluation.probe import EvalData, ProbeSettings, evaluate_arrays, probe
from featkit.evaluation.records import decode_correct, encode_correct
from featkit.evaluation.splits import parse_shots
from featkit.metrics import (
    Z95,
    balanced_accuracy,
    macro_f1,
    mcnemar,
    paired_bootstrap_balanced,
    summarize,
)
from featkit.results import files as result_files
from featkit.results.io import (
    read_confusion,
    read_per_class,
    read_results,
    read_summary,
    write_results,
)
from tests.helpers import digits_folder
from tests.test_evaluate import FAST, make_store, toy_arrays

runner = CliRunner()
CSV_READERS = (read_results, read_summary, read_per_class, read_confusion)


def _cli(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _rows_per_dataset(workspace: Path) -> dict[str, list[int]]:
    counts: dict[str, list[int]] = {}
    for read in CSV_READERS:
        frame = read(workspace)
        for name, n in frame["dataset"].value_counts().items():
            counts.setdefault(str(name), []).append(int(n))
    return counts


def test_two_datasets_extracted_with_pixels_keep_every_row(tmp_path: Path) -> None:
    # The same model on two data sets must not give both the same run ids, or the
    # second store's rows replace the first's in all four CSVs.
    probe_args = ["--protocols", "knn", "--shots", "1,all", "--episodes", "1"]
    ws = tmp_path / "ws"
    for name in ("A", "B"):
        data = digits_folder(tmp_path / "data", per_class=4, size=8, name=name)
        _cli("extract", data, "--model", "pixels", "-w", ws)
    _cli("probe", "-w", ws, *probe_args)
    together = _rows_per_dataset(ws)
    for name in ("A", "B"):
        (store,) = (ws / name).glob("*.h5")
        _cli("probe", store, "-w", tmp_path / f"alone_{name}", *probe_args)
        alone = _rows_per_dataset(tmp_path / f"alone_{name}")[name]
        assert len(alone) == 4 and min(alone) > 0
        assert together.get(name) == alone  # 0 rows lost in results/summary/per_class/confusion


def _toy(sizes: tuple[int, ...], dataset: str = "toy") -> EvalData:
    X, y, paths = toy_arrays(sizes)
    names = tuple(f"class{c}" for c in range(len(sizes)))
    return EvalData(dataset, "m", paths, y, {"cls": X}, None, names, {"sha": "x"}, "toy.h5")


def test_changed_data_with_fewer_episodes_replaces_the_old_rows(tmp_path: Path) -> None:
    # 5 episodes on the old images, then 2 on more images: the summary
    # must be of the 2 new episodes only, not of new 0–1 with old 2–4.
    settings = ProbeSettings(protocols=FAST[:1], shots=parse_shots("1"), bootstrap=0)
    old = evaluate_arrays(_toy((10, 8, 6)), ProbeSettings(**{**settings.__dict__, "episodes": 5}))
    write_results(tmp_path, old.results, old.per_class, old.confusion)
    new = evaluate_arrays(_toy((30, 20, 12)), ProbeSettings(**{**settings.__dict__, "episodes": 2}))
    write_results(tmp_path, new.results, new.per_class, new.confusion)
    stored = read_results(tmp_path)
    assert set(stored["data_id"]) == set(new.results["data_id"])
    assert sorted(set(stored["episode"].astype(int))) == [0, 1]
    assert set(read_per_class(tmp_path)["run_id"]) == set(new.results["run_id"])
    summary = read_summary(tmp_path)
    row = summary[summary["metric"] == "accuracy"].iloc[0]
    expected = new.results[new.results["metric"] == "accuracy"]["value"].mean()
    assert row["n_episodes"] == 2 and row["mean"] == pytest.approx(expected)


def _scored_by_index(y: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> dict[str, list[float]]:
    # Independent truth: each draw's images scored with the plain metric functions.
    return {
        "accuracy": [float(np.mean(y[i] == pred[i])) for i in idx],
        "balanced_accuracy": [balanced_accuracy(y[i], pred[i]) for i in idx],
        "macro_f1": [macro_f1(y[i], pred[i]) for i in idx],
    }


@pytest.fixture
def imbalanced_prediction() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(4), [120, 60, 15, 3])
    pred = np.where(rng.random(y.size) < 0.7, y, rng.integers(0, 5, y.size))  # 4 = never true
    return y, pred


def test_counted_bootstrap_is_resampling_image_indices(
    imbalanced_prediction: tuple[np.ndarray, np.ndarray],
) -> None:
    y, pred = imbalanced_prediction
    idx = stratified_bootstrap_indices(y, 300, 7)
    assert all(np.bincount(y[i], minlength=4).tolist() == [120, 60, 15, 3] for i in idx[:20])
    bootstrap = StratifiedBootstrap(y, 300, 7)
    for other in (pred, np.roll(pred, 5), np.full(y.size, 9)):  # one set of draws, any prediction
        draws = bootstrap.draws(other)
        for name, values in _scored_by_index(y, other, idx).items():
            np.testing.assert_allclose(draws[name], values, rtol=0, atol=1e-12, err_msg=name)
    with pytest.raises(FeatkitError, match="y_pred: expected 198 labels"):
        bootstrap.draws(pred[:-1])


def test_sampled_bootstrap_matches_resampling_image_indices_and_is_fast(
    imbalanced_prediction: tuple[np.ndarray, np.ndarray],
) -> None:
    # The route for large test sets draws confusion counts, not images: the same
    # distribution, so its spread agrees with index resampling's within Monte Carlo error.
    y, pred = imbalanced_prediction
    by_index = _scored_by_index(y, pred, stratified_bootstrap_indices(y, 1500, 7))
    draws = StratifiedBootstrap(y, 1500, 11, counts_limit=0).draws(pred)
    for name, values in by_index.items():
        assert np.mean(draws[name]) == pytest.approx(np.mean(values), abs=0.005), name
        assert np.std(draws[name]) == pytest.approx(np.std(values), rel=0.1), name
    big_y = np.repeat(np.arange(100), 100)  # 10,000 test images, 100 classes: sampled
    start = time.perf_counter()
    bootstrap_se(big_y, np.roll(big_y, 7), n_boot=1000, seed=0)
    # Milliseconds here; the bound is loose so a slow CI machine passes, while a
    # per-draw Python loop over 10,000 images (minutes) would not.
    assert time.perf_counter() - start < 10
    assert bootstrap_metrics(y, pred, 1500, 11)["accuracy"].shape == (1500,)


def test_bootstrap_interval_covers_the_true_accuracy() -> None:
    # Synthetic truth: each test image is right with probability 0.8, so the accuracy of
    # a fresh 60-image test set is the truth the interval must cover ~95 % of the time.
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    covered = 0
    for trial in range(200):
        pred = np.where(rng.random(y.size) < 0.8, y, (y + 1) % 3)
        se = bootstrap_se(y, pred, n_boot=200, seed=trial)["accuracy"]
        covered += abs(np.mean(pred == y) - 0.8) <= Z95 * se
    assert 0.88 <= covered / 200 <= 0.99


def test_summary_interval_adds_test_variance_to_episode_variance(tmp_path: Path) -> None:
    base = {"dataset": "d", "model": "m", "feature": "cls", "protocol": "knn", "params": ""}
    rows = [
        {**base, "shots": "5", "episode": e, "seed": 0, "run_id": f"r{e}", "metric": "accuracy"}
        | {"value": v, "test_se": se, "effective_shots": 5 - e, "n_test": 40}
        for e, (v, se) in enumerate([(0.6, 0.05), (0.7, 0.07), (0.8, 0.06)])
    ]
    write_results(tmp_path, rows)
    (row,) = read_summary(tmp_path).to_dict("records")
    episodes = summarize([0.6, 0.7, 0.8])
    h_ep = (episodes.ci95_high - episodes.ci95_low) / 2
    half = math.sqrt(h_ep**2 + (1.959964 * 0.06) ** 2)
    assert row["ci95_low"] == pytest.approx(0.7 - half, abs=1e-6)
    assert row["ci95_high"] == pytest.approx(0.7 + half, abs=1e-6)
    assert row["ci95_low_episodes"] == pytest.approx(episodes.ci95_low)
    assert row["test_se"] == pytest.approx(0.06) and row["effective_shots"] == 3


def test_full_split_cells_get_a_test_set_interval() -> None:
    settings = ProbeSettings(protocols=FAST[:1], shots=parse_shots("all"), bootstrap=200)
    data = _toy((30, 20, 12))
    data.features["cls"] = np.random.default_rng(0).normal(size=data.features["cls"].shape)
    rows = evaluate_arrays(data, settings).results
    balanced = rows[rows["metric"] == "balanced_accuracy"]
    assert len(balanced) == 1 and balanced["test_se"].iloc[0] > 0.01


def test_mcnemar_matches_a_hand_computation() -> None:
    # 10 images only A gets right, 2 only B, 30 both, 8 neither:
    # chi² = (|10 − 2| − 1)² / 12 = 49/12; p = erfc(sqrt(chi²/2)) for 1 degree of freedom.
    a = np.array([1] * 10 + [0] * 2 + [1] * 30 + [0] * 8, bool)
    b = np.array([0] * 10 + [1] * 2 + [1] * 30 + [0] * 8, bool)
    result = mcnemar(a, b)
    assert (result.a_only, result.b_only) == (10, 2)
    assert result.statistic == pytest.approx(49 / 12)
    assert result.p_value == pytest.approx(stats.chi2.sf(49 / 12, 1))
    assert result.p_value == pytest.approx(0.0433, abs=1e-4)
    # The same images in 3 identical episodes: images, not pairs, are the units.
    assert mcnemar(np.tile(a, (3, 1)), np.tile(b, (3, 1))).p_value == pytest.approx(result.p_value)
    assert mcnemar(a, a).p_value == 1.0


def test_correct_bits_round_trip_per_class_in_path_order() -> None:
    correct = np.array([True, False, True, True, False])
    paths = ["e", "a", "c", "b", "d"]
    labels = np.array([1, 0, 1, 0, 1])
    text = encode_correct(correct, paths, labels)
    blocks = decode_correct(text, 5)
    assert blocks is not None
    assert [b.tolist() for b in blocks] == [[False, True], [True, False, True]]  # a b | c d e
    assert decode_correct("zz", 5) is None and decode_correct(text, 40) is None


def test_paired_bootstrap_sees_a_lost_minority_class_that_mcnemar_cannot() -> None:
    # 47 images of class 0 both get right; the 3 of class 1 only A gets right.
    a = [np.ones(47, bool), np.ones(3, bool)]
    b = [np.ones(47, bool), np.zeros(3, bool)]
    assert mcnemar(np.concatenate(a), np.concatenate(b)).p_value > 0.2  # (3-1)²/3 → p 0.25
    difference, p = paired_bootstrap_balanced(a, b, n_boot=500)
    assert difference == pytest.approx(0.5) and p == 0.0  # balanced accuracy 100 vs 50
    difference, p = paired_bootstrap_balanced(a, a, n_boot=500)
    assert difference == 0 and p == 1.0


def test_paired_bootstrap_is_resampling_images_within_classes() -> None:
    # Reference: each draw picks every class's images by index, the same picks for A and
    # B, and averages the per-class mean differences; p counts draws on either side of 0.
    rng = np.random.default_rng(4)
    for trial in range(40):
        episodes = int(rng.integers(1, 11))  # blocks are correctness averaged over episodes
        sizes = rng.integers(1, 40, int(rng.integers(1, 8)))
        a = [rng.integers(0, episodes + 1, n) / episodes for n in sizes]
        b = [x.copy() for x in a] if trial % 3 == 0 else [rng.permutation(x) for x in a]
        b[0][0] = 1 - b[0][0]
        draws = np.random.default_rng(trial)
        picks = [draws.integers(0, n, size=(300, n)) for n in sizes]
        pairs = zip(a, b, picks, strict=True)
        diffs = np.mean([(x - y)[i].mean(axis=1) for x, y, i in pairs], axis=0)
        diffs[np.abs(diffs) <= 1e-12] = 0.0  # cancelling differences are ties
        expected_p = min(1.0, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
        difference, p = paired_bootstrap_balanced(a, b, n_boot=300, seed=trial)
        observed = [np.mean(x - y) for x, y in zip(a, b, strict=True)]
        assert difference == pytest.approx(np.mean(observed))
        assert p == expected_p


def test_a_crash_between_renames_is_rolled_forward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = ProbeSettings(protocols=FAST[:1], shots=parse_shots("1"), episodes=2, bootstrap=0)
    first = evaluate_arrays(_toy((10, 8, 6)), settings)
    write_results(tmp_path, first.results, first.per_class, first.confusion)
    second = evaluate_arrays(_toy((12, 9, 7)), settings)
    real_replace = os.replace
    calls: list[str] = []

    def dies_after_the_first_rename(src: object, dst: object) -> None:
        if str(src).endswith(".tmp") and ".generation" not in str(dst):
            calls.append(str(dst))
            if len(calls) == 2:
                raise KeyboardInterrupt  # stands in for kill -9 between two renames
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(result_files.os, "replace", dies_after_the_first_rename)
    with pytest.raises(KeyboardInterrupt):
        write_results(tmp_path, second.results, second.per_class, second.confusion)
    monkeypatch.undo()
    per_class_ids = set(pd.read_csv(tmp_path / "results" / "per_class.csv")["run_id"])
    assert per_class_ids == set(second.results["run_id"])  # torn: per_class new …
    assert set(pd.read_csv(tmp_path / "results" / "results.csv")["run_id"]) != per_class_ids
    # … until the next reader rolls the committed generation forward.
    assert set(read_results(tmp_path)["run_id"]) == per_class_ids
    assert set(read_confusion(tmp_path)["run_id"]) == per_class_ids
    assert not [p for p in os.listdir(tmp_path / "results") if p.endswith(".tmp")]


def test_stale_temporaries_are_removed_at_the_next_write(tmp_path: Path) -> None:
    write_results(tmp_path, [{"run_id": "a", "metric": "accuracy", "value": 0.5}])
    stale = tmp_path / "results" / ".results.csv.dead.tmp"
    stale.write_text("partial")
    write_results(tmp_path, [{"run_id": "b", "metric": "accuracy", "value": 0.6}])
    assert not stale.exists()


def test_an_unchanged_rerun_returns_the_stored_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path, "m")
    settings = ProbeSettings(protocols=FAST, shots=parse_shots("1,all"), episodes=2)
    first = probe([store], settings, workspace=tmp_path)

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("an unchanged rerun evaluated again")

    monkeypatch.setattr("featkit.evaluation.probe.evaluate_arrays", must_not_run)
    start = time.perf_counter()
    again = probe([store], settings, workspace=tmp_path)
    assert time.perf_counter() - start < 15  # ~0.3 s here; loose for slow machines
    key = ["run_id", "metric"]
    pd.testing.assert_frame_equal(
        again.results.sort_values(key)[["run_id", "metric", "value"]].reset_index(drop=True),
        first.results.sort_values(key)[["run_id", "metric", "value"]].reset_index(drop=True),
    )
    assert len(again.per_class) == len(first.per_class)
    with pytest.raises(AssertionError, match="evaluated again"):
        probe([store], settings, workspace=tmp_path, force=True)
    other = ProbeSettings(protocols=FAST, shots=parse_shots("1,all"), episodes=2, seed=1)
    with pytest.raises(AssertionError, match="evaluated again"):
        probe([store], other, workspace=tmp_path)
