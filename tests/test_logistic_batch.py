"""Logistic fits solved together (``fit_many``) equal the fits made one by one."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits

import featkit_protocols.logistic_search as search
from featkit.protocols import create_protocol


@pytest.fixture(autouse=True)
def one_blas_thread():
    with threadpool_limits(1):
        yield


def _episodes(shots: int, n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` few-shot training sets of real digits: ``shots`` images of each class."""
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    sets = []
    for _ in range(n):
        rows = np.concatenate([rng.choice(np.flatnonzero(y == c), shots, False) for c in range(10)])
        sets.append((X[rows], y[rows]))
    return sets


def _assert_same(together, alone_settings, sets) -> None:
    X_test, _ = load_digits(return_X_y=True)
    X_test = (X_test[::7] / 16.0).astype(np.float32)
    for model, (X, y) in zip(together, sets, strict=True):
        alone = create_protocol("logistic", **alone_settings).fit(X, y)
        assert model.C_ == alone.C_
        assert model.selection_ == alone.selection_
        if alone.c_scores_ is not None:
            np.testing.assert_array_equal(model.c_scores_, alone.c_scores_)
        np.testing.assert_allclose(model.coef_, alone.coef_, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(model.intercept_, alone.intercept_, rtol=1e-3, atol=1e-4)
        np.testing.assert_array_equal(model.predict(X_test), alone.predict(X_test))


@pytest.mark.parametrize("shots", [1, 5])
def test_episodes_fitted_together_equal_each_fitted_alone(shots: int) -> None:
    sets = _episodes(shots, 4)
    together = create_protocol("logistic", n_c=12).fit_many(sets)
    _assert_same(together, {"n_c": 12}, sets)


@pytest.fixture
def batch_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of sets in each C search, as the solver is called."""
    calls: list[int] = []
    real = search._search

    def counted(sets, *args):  # type: ignore[no-untyped-def]
        calls.append(len(sets))
        return real(sets, *args)

    monkeypatch.setattr(search, "_search", counted)
    return calls


def test_unlike_sets_and_small_batches_are_solved_apart(
    monkeypatch: pytest.MonkeyPatch, batch_sizes: list[int]
) -> None:
    """Sets with other classes, other folds or a given C go to their own batches, and
    a batch never holds more than BATCH_VALUES logits."""
    monkeypatch.setattr(search, "BATCH_VALUES", 2 * 5 * 10 * 50)  # two 5-shot sets
    five, three = _episodes(5, 3), _episodes(3, 2, seed=1)  # 5 folds; 3 folds
    X, y = five[0]
    fewer_classes = (X[y < 4], y[y < 4])
    sets = [five[0], three[0], fewer_classes, five[1], three[1], five[2]]
    together = create_protocol("logistic", n_c=8).fit_many(sets)
    assert sorted(batch_sizes) == [1, 1, 2, 2]  # five: 2 + 1, three: 2, fewer classes: 1
    _assert_same(together, {"n_c": 8}, sets)

    fixed = create_protocol("logistic", c=0.3).fit_many(five)
    _assert_same(fixed, {"c": 0.3}, five)


def test_sets_solved_in_float32_alone_are_not_batched_with_float64_ones(
    monkeypatch: pytest.MonkeyPatch, batch_sizes: list[int]
) -> None:
    """A search large enough for float32 products keeps them in a batch, and a smaller
    one keeps float64: each batch member is solved exactly as alone."""
    import featkit_protocols.logistic_solver as solver

    five, six = _episodes(5, 2), _episodes(6, 2, seed=2)  # 5 folds each
    # Between them: 5 folds × 50 rows × 49 basis columns below, 5 × 60 × 59 above.
    monkeypatch.setattr(solver, "FLOAT32_FROM", 15_000)
    sets = [five[0], six[0], five[1], six[1]]
    together = create_protocol("logistic", n_c=8).fit_many(sets)
    assert batch_sizes == [2, 2]
    _assert_same(together, {"n_c": 8}, sets)
