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
from featkit_protocols.logistic_search import fold_balanced_accuracy
from featkit_protocols.logistic_solver import Problem, minimize


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
    """Independent truth: scikit-learn fitted cold at every C on every selection fold.

    Each fold's features are centred on its own training rows. That leaves the optimum's
    predictions unchanged (the unpenalised intercept absorbs any shift) and keeps
    scikit-learn's answer right at tiny C: there the optimal intercept moves from the
    log prior by ``−W·z̄`` (about 1e-6 at C = 1e-6), which decides near-ties, and its
    gradient is below scikit-learn's stopping test, so its L-BFGS leaves the intercept
    where it started. With each fold's mean at zero that shift is zero.
    """
    Z = (X - model.mean_) * model.scale_
    folds = selection_folds(np.unique(y, return_inverse=True)[1])
    scores = np.zeros(n_c)
    for i, c in enumerate(c_grid(n_c)):
        for held in folds:
            centre = Z[~held].mean(axis=0)
            ref = LogisticRegression(C=c, tol=1e-8, max_iter=10000)
            ref.fit(Z[~held] - centre, y[~held])
            predicted = ref.predict(Z[held] - centre)
            scores[i] += balanced_accuracy(y[held], predicted) / len(folds)
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
    model = create_protocol("logistic", n_c=n_c, tol=1e-8, max_iter=10000).fit(X, y)
    truth = _exhaustive_scores(model, X, y, n_c)
    one_image = 1.0 / min(np.bincount(y)) / len(np.unique(y))
    assert model.c_index_ == pick_c(truth) or truth[model.c_index_] >= truth.max() - one_image
    np.testing.assert_allclose(model.c_scores_, truth, atol=one_image + 1e-9)


def _stacked_episodes() -> tuple[Problem, np.ndarray, np.ndarray]:
    """Three groups of 5 folds (zero-padded to one shape), a point and penalties."""
    rng = np.random.default_rng(4)
    groups = []
    for n, d in ((40, 6), (35, 5), (40, 6)):
        y = np.arange(n) % 4
        X = (rng.normal(size=(n, d)) + rng.normal(size=(4, d))[y]).astype(np.float32)
        masks = [~m for m in selection_folds(y, n_folds=5)]
        groups.append(Problem.from_folds(X, y, rng.uniform(0.5, 2.0, n), masks, 4))
    problem = Problem.stack(groups)
    theta = rng.normal(scale=0.3, size=problem.shape)
    return problem, theta, rng.uniform(0.01, 1.0, size=problem.shape[0])


def test_curvature_diagonal_is_the_hessian_diagonal() -> None:
    """Against central differences of the gradient, coordinate by coordinate."""
    problem, theta, lam = _stacked_episodes()
    diagonal = problem.curvature_diagonal(theta, lam)
    h = 1e-5
    for j in range(problem.shape[1]):
        step = np.zeros_like(theta)
        step[:, j] = h
        _, up = problem.loss_grad(theta + step, lam)
        _, down = problem.loss_grad(theta - step, lam)
        np.testing.assert_allclose(diagonal[:, j], (up[:, j] - down[:, j]) / (2 * h), rtol=1e-5)


@pytest.mark.parametrize("min_rows", [8, 12])
def test_rows_in_blocks_evaluate_as_all_rows_at_once(
    min_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Objective, gradient and Hessian diagonal summed block by block equal those of
    one block; the blocks cover every row once."""
    import featkit_protocols.logistic_solver as solver

    whole, theta, lam = _stacked_episodes()
    assert len(whole._blocks) == 1  # a small problem is one block
    loss, grad = whole.loss_grad(theta, lam)
    diagonal = whole.curvature_diagonal(theta, lam)
    monkeypatch.setattr(solver, "BLOCK_BYTES", 1)
    monkeypatch.setattr(solver, "MIN_BLOCK_ROWS", min_rows)
    problem, _, _ = _stacked_episodes()
    blocks = problem._blocks
    sizes = [rows.Z.shape[1] for rows in blocks]
    assert len(blocks) == problem.Z.shape[1] // min_rows and max(sizes) - min(sizes) < len(blocks)
    np.testing.assert_array_equal(np.concatenate([rows.Z for rows in blocks], axis=1), problem.Z)
    np.testing.assert_array_equal(
        np.concatenate([rows.targets for rows in blocks], axis=2), problem.targets
    )
    kept: list[np.ndarray] = []
    block_loss, block_grad = problem.loss_grad(theta, lam, kept)
    assert len(kept) == len(blocks)
    np.testing.assert_allclose(block_loss, loss, rtol=1e-12)
    np.testing.assert_allclose(block_grad, grad, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(problem.curvature_diagonal(theta, lam), diagonal, rtol=1e-9)
    np.testing.assert_allclose(problem.curvature_diagonal(theta, lam, kept), diagonal, rtol=1e-9)


def test_narrowed_problem_evaluates_the_folds_left_as_the_whole() -> None:
    """Done folds drop out by whole groups and by fold positions done in every group
    left; the folds kept have the objective and gradient they have in the whole."""
    problem, theta, lam = _stacked_episodes()
    active = np.zeros(problem.shape[0], bool)
    active[[1, 3, 11, 13]] = True  # groups 0 and 2, positions 1 and 3; group 1 done
    assert problem.narrowed(active, at_most=3) is None  # 4 folds would be kept
    narrowed = problem.narrowed(active, at_most=4)
    assert narrowed is not None
    narrower, rows = narrowed
    np.testing.assert_array_equal(rows, [1, 3, 11, 13])
    assert narrower.Z.shape[0] == 2
    loss, grad = problem.loss_grad(theta, lam)
    part_loss, part_grad = narrower.loss_grad(theta[rows], lam[rows])
    np.testing.assert_allclose(part_loss, loss[rows], rtol=1e-12)
    np.testing.assert_allclose(part_grad, grad[rows], rtol=1e-10, atol=1e-14)


def test_folds_left_alone_reach_the_optimum_of_the_whole_batch() -> None:
    """Folds that finish early leave the loop; the rest, solved on alone, reach the same
    optimum as each fold solved by itself."""
    problem, _, lam = _stacked_episodes()
    lam = np.geomspace(1e-4, 1.0, problem.shape[0])  # folds finish at different times
    theta = minimize(problem, lam, problem.prior_start(), max_iter=2000, tol=1e-8)
    loss, _ = problem.loss_grad(theta, lam)
    for f in (0, 7, 14):
        narrowed = problem.narrowed(np.arange(problem.shape[0]) == f)
        assert narrowed is not None
        one, rows = narrowed
        alone = minimize(one, lam[rows], one.prior_start(), max_iter=2000, tol=1e-8)
        assert loss[f] == pytest.approx(one.loss_grad(alone, lam[rows])[0][0], rel=1e-9)
