"""Splits and episodes: deterministic in (paths, labels, seed), nested, honest about shots."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featkit.errors import FeatkitError
from featkit.evaluation.shots import Shots, parse_shots
from featkit.evaluation.splits import episodes, sample_episode, train_test_split


def _data(sizes: list[int]) -> tuple[list[str], np.ndarray]:
    labels = np.repeat(np.arange(len(sizes)), sizes)
    paths = [f"class{c}/img{i:04d}.png" for i, c in enumerate(labels)]
    return paths, labels


def test_stratified_split_keeps_a_test_image_per_class() -> None:
    paths, y = _data([50, 10, 2, 1])
    train, test = train_test_split(paths, y, seed=0, test_fraction=0.2)
    assert np.intersect1d(train, test).size == 0
    assert np.union1d(train, test).tolist() == list(range(len(y)))
    counts = np.bincount(y[test], minlength=4)
    assert counts.tolist() == [10, 2, 1, 0]  # round(0.2·n), ≥1 for n ≥ 2, none for n = 1
    assert np.bincount(y[train], minlength=4).tolist() == [40, 8, 1, 1]


def test_split_ignores_row_order_and_depends_on_seed() -> None:
    paths, y = _data([30, 20, 12])
    _, test = train_test_split(paths, y, seed=3)
    perm = np.random.default_rng(0).permutation(len(paths))
    _, test_perm = train_test_split([paths[i] for i in perm], y[perm], seed=3)
    assert sorted(paths[i] for i in test) == sorted(paths[perm[i]] for i in test_perm)
    _, other = train_test_split(paths, y, seed=4)
    assert set(test.tolist()) != set(other.tolist())


def test_unlabelled_images_are_in_neither_set() -> None:
    paths, y = _data([10, 10])
    y = y.copy()
    y[:3] = -1
    train, test = train_test_split(paths, y)
    assert not set(range(3)) & set(np.concatenate([train, test]).tolist())


def test_explicit_splits_are_used_as_given() -> None:
    paths, y = _data([6, 6])
    names = ["train", "val", "test"] * 4
    train, test = train_test_split(paths, y, names)
    assert all(names[i] in ("train", "val") for i in train)
    assert [names[i] for i in test] == ["test"] * 4
    # train/val only: val is the evaluation set
    names = ["train", "train", "val"] * 4
    train, test = train_test_split(paths, y, names)
    assert {names[i] for i in test} == {"val"} and {names[i] for i in train} == {"train"}
    with pytest.raises(FeatkitError, match="name a split"):
        train_test_split(paths, y, ["train", ""] * 6)
    with pytest.raises(FeatkitError, match="train/val/test"):
        train_test_split(paths, y, ["train", "holdout"] * 6)


def test_parse_shots_round_trip_and_errors() -> None:
    shots = parse_shots("10, 1,all,10%,5,1")
    assert [str(s) for s in shots] == ["1", "5", "10", "10%", "all"]
    assert Shots.parse("0").kind == "zero"
    for bad in ("five", "-1", "0%", "150%", ""):
        with pytest.raises(FeatkitError, match="--shots"):
            parse_shots(bad)


def test_episodes_are_nested_and_counted() -> None:
    paths, y = _data([40, 30, 25])
    draws = list(episodes(paths, y, None, "1,5,10,20%,all", n_episodes=3, seed=1))
    by_key = {(str(d.shots), d.episode): d for d in draws}
    assert sorted({str(d.shots) for d in draws}) == ["1", "10", "20%", "5", "all"]
    assert sum(1 for d in draws if str(d.shots) == "all") == 1
    for e in range(3):
        one, five, ten = (set(by_key[(k, e)].train.tolist()) for k in ("1", "5", "10"))
        assert one < five < ten
        assert np.bincount(y[list(five)]).tolist() == [5, 5, 5]
        frac = by_key[("20%", e)]
        # 20% of 32, 24, 20 training images per class, in the same per-episode order
        assert np.bincount(y[frac.train]).tolist() == [6, 5, 4]
        assert one <= set(frac.train.tolist()) <= ten  # same order: nested with counts
    assert set(by_key[("5", 0)].train.tolist()) != set(by_key[("5", 1)].train.tolist())
    test = by_key[("all", 0)].test
    assert all(np.array_equal(d.test, test) for d in draws)
    assert not set(by_key[("all", 0)].train.tolist()) & set(test.tolist())


def test_episode_does_not_depend_on_the_number_of_episodes() -> None:
    paths, y = _data([20, 20])
    few = list(episodes(paths, y, None, "5", n_episodes=2))
    many = list(episodes(paths, y, None, "5", n_episodes=6))
    assert np.array_equal(few[1].train, many[1].train)


def test_short_class_uses_all_it_has_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    paths, y = _data([30, 30, 6])  # class 2 has 5 training images
    with caplog.at_level(logging.WARNING, logger="featkit"):
        draws = list(episodes(paths, y, None, "10", n_episodes=1, label_names=["a", "b", "c"]))
    assert draws[0].effective_shots == 5
    assert np.bincount(y[draws[0].train]).tolist() == [10, 10, 5]
    assert "'c' (5)" in caplog.text and "10-shot" in caplog.text


def test_shots_larger_than_every_class_is_an_error() -> None:
    paths, y = _data([12, 8])
    with pytest.raises(FeatkitError, match=r"--shots 50: expected at most 10"):
        list(episodes(paths, y, None, "1,50"))


def test_single_class_and_no_labels_are_errors() -> None:
    paths, y = _data([20])
    with pytest.raises(FeatkitError, match="at least 2 classes"):
        list(episodes(paths, y, None, "1"))
    with pytest.raises(FeatkitError, match="labelled images"):
        list(episodes(paths, np.full(20, -1), None, "1"))


def test_zero_shots_have_no_training_images() -> None:
    paths, y = _data([10, 10])
    draws = list(episodes(paths, y, None, "0", n_episodes=4))
    assert len(draws) == 4 and all(d.train.size == 0 and d.effective_shots == 0 for d in draws)
    assert sample_episode(paths, y, draws[0].test, Shots("zero"), 0)[0].size == 0


def test_two_stores_of_the_same_images_get_the_same_splits(tmp_path: Path) -> None:
    """Different models, different features, rows given in another order: same images."""
    from featkit.evaluation.probe import load_store
    from featkit.store.reader import import_features

    paths, y = _data([15, 12, 9])
    perm = np.random.default_rng(0).permutation(len(paths))
    rng = np.random.default_rng(1)
    stores = []
    for name, order, dim in (("model_a", np.arange(len(paths)), 8), ("model_b", perm, 5)):
        csv = tmp_path / f"{name}.csv"
        frame = pd.DataFrame(
            {"path": [paths[i] for i in order], "label": [f"c{y[i]}" for i in order]}
        )
        frame.to_csv(csv, index=False)
        features = rng.normal(size=(len(paths), dim)).astype(np.float32)
        stores.append(import_features(features, csv, name, tmp_path / "ws", dataset="same"))
    draws = []
    for store in stores:
        data = load_store(store, ["cls"])
        draws.append(
            {
                (str(d.shots), d.episode): (
                    sorted(data.paths[i] for i in d.train),
                    sorted(data.paths[i] for i in d.test),
                )
                for d in episodes(data.paths, data.labels, data.splits, "1,5,all", 3, seed=7)
            }
        )
    assert draws[0] == draws[1]
