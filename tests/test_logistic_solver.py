"""The logistic probe's batched solver against independent truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize as scipy_minimize
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from featkit.metrics import balanced_accuracy
from featkit.protocols import create_protocol
from featkit_protocols.logistic import c_grid, pick_c, selection_folds
from featkit_protocols.logistic_solver import Problem, fold_balanced_accuracy, minimize


@pytest.fixture(autouse=True)
def one_blas_thread():
    """scipy's and scikit-learn's small L-BFGS steps slow down 5-50x with two BLAS
    threads on a busy machine; the references here run on one."""
    with threadpool_limits(1):
        yield


def test_fold_balanced_accuracy_equals_the_metric_per_fold() -> None:
    rng = np.random.default_rng(0)
    F, h, k = 4, 23, 5
    y = rng.integers(0, k, size=(F, h))
    predicted = np.where(rng.random((F, h)) < 0.6, y, rng.integers(0, k, size=(F, h)))
    valid = np.arange(h) < np.array([23, 20, 17, 9])[:, None]
    got = fold_balanced_accuracy(predicted, y, valid, k)
    for f in range(F):
        assert got[f] == pytest.approx(balanced_accuracy(y[f][valid[f]], predicted[f][valid[f]]))


def _folds_problem(seed: int) -> tuple[Problem, np.ndarray, np.ndarray, list, np.ndarray]:
    """Four cross-validation folds of a weighted 4-class problem, as one batch."""
    rng = np.random.default_rng(seed)
    n, d, k = 60, 12, 4
    y = rng.permutation(np.arange(n) % k)
    X = (rng.normal(size=(n, d)) + 1.5 * rng.normal(size=(k, d))[y]).astype(np.float32)
    w = rng.uniform(0.5, 2.0, size=n)
    fit_masks = [~mask for mask in selection_folds(y, n_folds=4)]
    return Problem.from_folds(X, y, w, fit_masks, k), X, y, fit_masks, w


@pytest.mark.parametrize("c", [1e-3, 0.3, 30.0])
def test_batched_folds_reach_each_folds_own_optimum(c: float) -> None:
    """Every fold's solution equals scipy's L-BFGS-B on that fold alone."""
    problem, X, y, fit_masks, w = _folds_problem(1)
    lam = 1.0 / (c * np.array([w[m].sum() for m in fit_masks]))
    theta = minimize(problem, lam, problem.prior_start(), max_iter=1000, tol=1e-7)
    ours, _ = problem.loss_grad(theta, lam)
    for f, mask in enumerate(fit_masks):
        alone = Problem.from_folds(X, y, w, [mask], 4)

        def objective(t: np.ndarray, one: Problem = alone, f: int = f) -> tuple[float, np.ndarray]:
            loss, grad = one.loss_grad(t[None], lam[f : f + 1])
            return float(loss[0]), grad[0]

        reference = scipy_minimize(
            objective, np.zeros(theta.shape[1]), jac=True, method="L-BFGS-B",
            options={"maxiter": 1000, "gtol": 1e-7, "ftol": 1e-15},
        )  # fmt: skip
        assert ours[f] == pytest.approx(reference.fun, rel=1e-8, abs=1e-10)


def test_batched_fold_solution_predicts_as_sklearn() -> None:
    """The objective is scikit-learn's: a fold's probabilities match LogisticRegression."""
    problem, X, y, fit_masks, w = _folds_problem(2)
    c = 0.5
    lam = 1.0 / (c * np.array([w[m].sum() for m in fit_masks]))
    theta = minimize(problem, lam, problem.prior_start(), max_iter=1000, tol=1e-7)
    scores = problem.logits(theta, X.astype(problem.Z.dtype)).transpose(0, 2, 1)  # [F, n, K]
    for f in (0, 3):
        mask = fit_masks[f]
        ref = LogisticRegression(C=c, tol=1e-7, max_iter=1000)
        ref.fit(X[mask].astype(np.float64), y[mask], sample_weight=w[mask])
        logits = scores[f] - scores[f].max(axis=1, keepdims=True)
        proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(proba, ref.predict_proba(X.astype(np.float64)), atol=1e-4)


def _exhaustive_scores(model, X: np.ndarray, y: np.ndarray, n_c: int) -> np.ndarray:
    """Independent truth: scikit-learn fitted cold at every C on every selection fold."""
    Z = (X - model.mean_) * model.scale_
    folds = selection_folds(np.unique(y, return_inverse=True)[1])
    scores = np.zeros(n_c)
    for i, c in enumerate(c_grid(n_c)):
        for held in folds:
            ref = LogisticRegression(C=c, tol=1e-6, max_iter=1000).fit(Z[~held], y[~held])
            scores[i] += balanced_accuracy(y[held], ref.predict(Z[held])) / len(folds)
    return scores


@pytest.mark.parametrize("source", ["digits", "random"])
def test_search_picks_the_exhaustive_c_or_a_tie(source: str) -> None:
    """The warm-started batched path chooses the C that per-C sklearn fits choose, or
    one whose cross-validated score is within one held-out image of it."""
    rng = np.random.default_rng(3)
    if source == "digits":
        X, y = load_digits(return_X_y=True)
        keep = rng.permutation(np.flatnonzero(y < 5))[:60]
        X, y = (X[keep] / 16.0).astype(np.float32), y[keep]
    else:
        y = np.repeat(np.arange(3), 20)
        X = (rng.normal(size=(60, 4)) + 0.8 * rng.normal(size=(3, 4))[y]).astype(np.float32)
    n_c = 6
    model = create_protocol("logistic", n_c=n_c, tol=1e-6, max_iter=1000).fit(X, y)
    truth = _exhaustive_scores(model, X, y, n_c)
    one_image = 1.0 / min(np.bincount(y)) / len(np.unique(y))
    assert model.c_index_ == pick_c(truth) or truth[model.c_index_] >= truth.max() - one_image
    np.testing.assert_allclose(model.c_scores_, truth, atol=one_image + 1e-9)
