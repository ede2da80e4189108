"""The logistic probe's C selection and scale invariance, on real digits."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from featkit.metrics import balanced_accuracy
from featkit.protocols import create_protocol
from featkit_protocols.logistic import c_grid, pick_c, selection_folds


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sklearn's 8x8 digits scaled to [0, 1]: a pool to draw supports from and a test set."""
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    perm = np.random.default_rng(0).permutation(y.size)
    test = np.concatenate([perm[y[perm] == c][-60:] for c in range(10)])
    pool = np.setdiff1d(np.arange(y.size), test)
    return X, y, pool, test


def test_selected_c_is_near_the_test_oracle_and_more_shots_do_not_hurt(digits) -> None:
    """Nested 9/10/11-shot supports: the chosen C scores close to the best C on test.

    The old rule chose C at 10 and 11 shots from a single 10 % hold-out (one image per
    class) with ties to the smallest C; its chosen C scored 4.2 points below the
    test-oracle C on these episodes and 11 shots fell 1.9 points below 10. The
    1-point target holds over 10 episodes and the full grid (docs/protocols.md); with 4
    episodes and a 12-point grid the oracle's own optimism is larger, hence 1.5.
    """
    X, y, pool, test = digits
    n_c, shots = 12, (9, 10, 11)
    accuracy = {s: [] for s in shots}
    gaps = []
    for episode in range(4):
        rng = np.random.default_rng(100 + episode)
        order = [rng.permutation(pool[y[pool] == c]) for c in range(10)]
        for s in shots:
            support = np.concatenate([members[:s] for members in order])
            chosen = create_protocol("logistic", n_c=n_c).fit(X[support], y[support])
            score = balanced_accuracy(y[test], chosen.predict(X[test]))
            oracle = max(
                balanced_accuracy(
                    y[test],
                    create_protocol("logistic", c=float(c))
                    .fit(X[support], y[support])
                    .predict(X[test]),
                )
                for c in c_grid(n_c)
            )
            accuracy[s].append(score)
            gaps.append(oracle - score)
    assert 100 * np.mean(gaps) < 1.5, np.round(100 * np.array(gaps), 1)
    mean = {s: 100 * np.mean(v) for s, v in accuracy.items()}
    assert mean[10] > mean[9] - 1.0 and mean[11] > mean[10] - 1.0, mean


def test_selection_cross_validates_until_the_holdout_has_five_per_class() -> None:
    y = np.repeat([0, 1, 2], [10, 12, 30])
    folds = selection_folds(y)
    assert len(folds) == 5  # a 10 % hold-out of 10 images would be one image
    assert np.array_equal(np.sum(folds, axis=0), np.ones(y.size))  # each image held out once
    for mask in folds:
        assert np.bincount(y[mask]).tolist() in ([2, 2, 6], [2, 3, 6], [2, 2, 5], [2, 3, 5])
    assert len(selection_folds(np.repeat([0, 1], [3, 40]))) == 3  # folds ≤ smallest class
    y = np.repeat([0, 1], [45, 200])  # 10 % of 45 rounds (half up) to 5
    (mask,) = selection_folds(y)
    assert np.bincount(y[mask]).tolist() == [5, 20]
    assert len(selection_folds(np.repeat([0, 1], [44, 200]))) == 5  # 4.4 → 4 < 5


def test_ties_go_to_the_middle_of_the_tied_points() -> None:
    assert pick_c(np.array([0.5, 0.9, 0.9, 0.9, 0.9, 0.9, 0.7])) == 3
    assert pick_c(np.array([0.9, 0.9, 0.9, 0.9, 0.2])) == 1  # even count: the lower middle
    assert pick_c(np.array([0.9, 0.1, 0.9, 0.1, 0.1, 0.9])) == 2  # gaps: the median point
    assert pick_c(np.array([0.1, 0.2, 0.3])) == 2


def test_a_c_at_the_grid_end_is_recorded_with_a_warning() -> None:
    X, y = load_digits(return_X_y=True)
    keep = np.isin(y, [0, 1])
    X, y = X[keep][:40].astype(np.float32), y[keep][:40]
    separable = create_protocol("logistic", n_c=3).fit(X, y)  # every C is perfect: middle
    assert separable.fitted_params_ == {"C": c_grid(3)[1], "c_selection": "5-fold"}
    noise = np.random.default_rng(0).normal(size=X.shape).astype(np.float32)
    rng_y = np.random.default_rng(1).permutation(y)
    low = create_protocol("logistic", n_c=2).fit(noise, rng_y)
    params = low.fitted_params_
    if low.c_index_ == 0:
        assert params["c_grid_edge"] == "low" and "low end of the grid" in params["warning"]
    else:
        assert params["c_grid_edge"] == "high" and "high end of the grid" in params["warning"]
    fixed = create_protocol("logistic", c=1e-6).fit(X, y)  # a user's C is not flagged
    assert fixed.fitted_params_ == {"C": 1e-6, "c_selection": "fixed"}


# -- feature scale --------------------------------------------------------------------


def test_predictions_do_not_depend_on_the_feature_scale(digits) -> None:
    X, y, pool, test = digits
    support = np.concatenate([pool[y[pool] == c][:10] for c in range(10)])
    reference = create_protocol("logistic", n_c=12).fit(X[support], y[support])
    expected = reference.predict(X[test])
    for factor in (1e-4, 1e4):
        scaled = create_protocol("logistic", n_c=12).fit(X[support] * factor, y[support])
        assert scaled.C_ == reference.C_
        agree = np.mean(scaled.predict(X[test] * factor) == expected)
        assert agree == 1.0, (factor, agree)


def test_tiny_feature_variation_is_not_chance(digits) -> None:
    """Features with a large offset and 1e-5 variation (a LayerScale-damped CLS token)."""
    X, y, pool, test = digits
    support = np.concatenate([pool[y[pool] == c][:10] for c in range(10)])
    damped = (5.0 + 1e-5 * X).astype(np.float32)
    model = create_protocol("logistic", n_c=12).fit(damped[support], y[support])
    score = balanced_accuracy(y[test], model.predict(damped[test]))
    assert score > 0.8, score  # the old probe stopped at W = 0: one class, 10 %


def test_standardised_fit_equals_sklearn_on_standardised_features() -> None:
    """``standardize`` divides the centred features by one training RMS: sklearn on those."""
    X, y = load_digits(return_X_y=True)
    X, y = X[:150].astype(np.float32), y[:150]
    ours = create_protocol("logistic", c=0.3, max_iter=2000, tol=1e-7).fit(X, y)
    centred = X.astype(np.float64) - X.mean(axis=0)
    scaled = centred / np.sqrt(np.mean(centred**2))
    ref = LogisticRegression(C=0.3, max_iter=5000, tol=1e-10).fit(scaled, y)
    probe = (X[:40].astype(np.float64) - X.mean(axis=0)) / np.sqrt(np.mean(centred**2))
    np.testing.assert_allclose(ours.predict_proba(X[:40]), ref.predict_proba(probe), atol=2e-3)
