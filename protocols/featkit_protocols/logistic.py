"""L2-regularised multinomial logistic regression with a cross-validated C search.

The objective is scikit-learn's (and DINOv2/v3 ``eval/log_regression.py``'s)::

    min_{W, b}  Σᵢ sᵢ·CE(zᵢW + b, yᵢ) / S  +  ‖W‖² / (2·C·S)        S = Σᵢ sᵢ

(the intercept ``b`` is not penalised; ``sᵢ`` are sample weights, 1 by default),
solved with L-BFGS, where ``zᵢ`` are the features **standardised with the training
statistics**: centred with the training mean and divided by one number, the root mean
square of the centred training features (``standardize=False`` keeps the raw features,
the official setting). Without it the meaning of ``C`` depends on the features' scale:
features that vary by 1e-4 make every C of the official grid a near-zero model and the
probe sits at chance. One scale for all columns keeps the features' geometry; dividing
each column by its own deviation would blow up columns that barely vary (rare pixels,
near-constant dimensions).

``C`` is chosen on the official grid ``10^linspace(-6, 5, 45)`` inside the training
data only, by balanced accuracy:

* the official single hold-out (``holdout`` = 10% of each class, refit on all) when it
  holds at least ``min_holdout`` (5) images of the smallest class, i.e. from about 45
  images per class on;
* otherwise stratified ``min(n_folds, smallest class)``-fold cross-validation
  (``n_folds`` = 5): a 10% hold-out of 10 shots is one image per class, and the C it
  picks is mostly noise;
* some class has a single image → no hold-out exists: ``C = fallback_c / m``, where
  ``m`` is the mean squared norm of the (standardised) centred features.

Ties go to the median of the tied grid points (:func:`pick_c`), and
``fitted_params_`` records the chosen C with a warning when it is an end of the grid.

What makes it fast (measured against scikit-learn fitted once per C by
benchmarks/probe.py; docs/performance.md):

* **warm starts along the path**: each ``C`` starts from the last two solutions
  extrapolated (linearly in ``log C``), the first from ``W = 0`` with the intercept at
  the log class prior (its optimum for ``W = 0``), so the strongly regularised end
  converges in a few iterations and the rest in tens
  (:func:`featkit_protocols.logistic_search.fit_sets`);
* **a preconditioned L-BFGS**: the Hessian's exact diagonal at each ``C``'s start as
  its initial inverse Hessian (:mod:`featkit_protocols.logistic_solver`);
* **standardising**: centring does not change ``W`` (the unpenalised intercept absorbs
  the shift) and unit-variance columns condition the problem;
* **exact dimension reduction when n < d** (where the basis is cheap next to the fit,
  :func:`_basis_pays`): the optimal ``W`` lies in the span of the centred training
  features (representer theorem for L2 penalties), so few-shot problems are solved in
  that ``≤ n``-dimensional basis (smaller still for low-rank features) and mapped
  back, with the same optimum;
* all folds of one C solved as one batch by a limited-memory BFGS with every fold's
  own state (:mod:`featkit_protocols.logistic_solver`): the folds share their rows, so
  one product with all folds' weights side by side serves every fold, and all folds
  are scored at once; scipy's L-BFGS-B spent more time in its own bookkeeping than in
  the objective here;
* :meth:`Logistic.fit_many` solves the episodes of a sweep together
  (:mod:`featkit_protocols.logistic_search`), each with exactly the C, scores and
  coefficients of its own fit: on the demo stores, ten 5-shot searches ran 1.2-1.7x
  faster together than one after the other, ten 10-shot ones 1.1-1.2x (where the
  products themselves dominate).
No early stop of the path: every ``C`` of the grid is fitted and scored. The stopping
rule is scikit-learn's gradient tolerance (``tol``, 1e-4 on the mean loss), which
leaves a solution short of its optimum where the objective is flat (weak
regularisation); starting from the extrapolated path keeps that gap small there (on
the workspace of :mod:`featkit_protocols.logistic_search`, the objective ends 15-280
times closer to its optimum at ``C ≥ 1e3`` than from the previous solution, where the
path stopped moving). ``tol=1e-6, max_iter=1000`` follows the path to convergence at
several times the cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from featkit.errors import FeatkitError
from featkit.protocols.base import Protocol, softmax, threads_for
from featkit_protocols.logistic_search import (  # noqa: F401 (pick_c: this module's API)
    Solution,
    TrainingSet,
    c_grid,
    fit_sets,
    pick_c,
    selection_folds,
)


def _row_basis(centred: NDArray[np.float32]) -> NDArray[np.float32]:
    """Orthonormal basis ``[d, r]`` of the span of the rows of ``centred [n, d]``, n < d.

    From the eigenvectors of the ``n × n`` Gram matrix (``n²·d`` work instead of an SVD's
    larger constant): ``V = Xᵀ·U / s``. Directions below 1e-5 of the largest singular
    value are float32 rounding noise, not data (in the Gram matrix: 1e-10 of the
    largest eigenvalue, well above float64's resolution).
    """
    X = centred.astype(np.float64)
    eigenvalues, U = np.linalg.eigh(X @ X.T)
    top = eigenvalues[-1] if eigenvalues.size else 0.0
    keep = eigenvalues > top * 1e-10 if top > 0 else np.zeros_like(eigenvalues, bool)
    return ((X.T @ U[:, keep]) / np.sqrt(eigenvalues[keep])).astype(np.float32)


def _basis_pays(n: int, d: int, k: int) -> bool:
    """Whether to solve in the span of ``n`` centred rows of width ``d`` (``k`` classes).

    The basis leaves at most ``n`` columns, and fewer when the features are low-rank
    (grey pixels upsampled from 8 × 8 have rank 64 at width 1024: 4x faster). Its
    ``n × n`` eigendecomposition (about ``5·n³`` operations) must cost at most a
    quarter of one C path without it (about 450 evaluations of ``4·n·d·k``): at
    ``n = 3,000, d = 3,072`` it took 7 s of a 17 s fit and removed almost nothing.
    """
    return n < d and 5 * n**3 <= 0.25 * 450 * 4 * n * d * k


class Logistic(Protocol):
    """Multinomial L2 logistic regression; C selected by balanced accuracy (module doc)."""

    default = True  # part of the default sweep
    display_order = 20

    supports_sample_weight = True

    def __init__(
        self,
        c: float | None = None,
        n_c: int = 45,
        holdout: float = 0.1,
        min_holdout: int = 5,
        n_folds: int = 5,
        standardize: bool = True,
        fallback_c: float = 1.0,
        max_iter: int = 100,
        tol: float = 1e-4,
        random_state: int = 0,
    ) -> None:
        self.c = c  # a fixed C skips the selection; None searches the official grid
        self.n_c = n_c  # grid size over 10^[-6, 5] (45 = official)
        self.holdout = holdout  # fraction of each class held out to choose C
        self.min_holdout = min_holdout  # smallest-class images the single hold-out needs
        self.n_folds = n_folds  # cross-validation folds when the hold-out would be smaller
        self.standardize = standardize  # scale every feature to unit training variance
        self.fallback_c = fallback_c  # scale-free C when some class has a single image
        self.max_iter = max_iter  # L-BFGS iterations per C (scikit-learn's default)
        self.tol = tol  # L-BFGS gradient tolerance (scikit-learn's default)
        self.random_state = random_state  # which images are held out

    # -- fitting -----------------------------------------------------------------------

    def _check_settings(self) -> None:
        if self.c is not None and not self.c > 0:
            raise FeatkitError(f"logistic c: expected a value > 0, got {self.c}")
        if self.n_c < 1:
            raise FeatkitError(f"logistic n_c: expected at least 1, got {self.n_c}")
        if not 0.0 < self.holdout < 1.0:
            raise FeatkitError(
                f"logistic holdout: expected a fraction in (0, 1), got {self.holdout}"
            )
        if self.n_folds < 2:
            raise FeatkitError(f"logistic n_folds: expected at least 2, got {self.n_folds}")
        if not self.fallback_c > 0:
            raise FeatkitError(f"logistic fallback_c: expected > 0, got {self.fallback_c}")

    def fit(
        self,
        X: ArrayLike,
        y: ArrayLike | None = None,
        sample_weight: ArrayLike | None = None,
        selection_offsets: ArrayLike | None = None,
    ) -> Logistic:
        """Fit; ``selection_offsets [K]`` are subtracted from the logits when scoring C.

        The offsets let a wrapper that adjusts the logits at prediction time (the
        ``balanced`` protocol's ``τ·log π̃``) choose C for the predictions it will make.
        """
        if y is None:
            raise FeatkitError("logistic labels: expected training labels, got None")
        self._check_settings()
        training = self._prepare(X, y, sample_weight, selection_offsets)
        with threads_for(self.n_features_in_ * len(training.y)):
            (solution,) = fit_sets([training], c_grid(self.n_c), self.max_iter, self.tol)
        return self._adopt_solution(solution)

    def fit_many(self, sets: Sequence[tuple[ArrayLike, ArrayLike]]) -> list[Logistic]:
        """One fit per ``(X, y)``, solved together (:mod:`featkit_protocols.logistic_search`):
        each equals this protocol's ``fit`` on that set alone."""
        self._check_settings()
        models = [Logistic(**self.get_params()) for _ in sets]
        prepared = [model._prepare(X, y) for model, (X, y) in zip(models, sets, strict=True)]
        # Threads by the largest single set: a batch of small ones stays on one thread.
        largest = max(
            (m.n_features_in_ * len(t.y) for m, t in zip(models, prepared, strict=True)), default=0
        )
        with threads_for(largest):
            solutions = fit_sets(prepared, c_grid(self.n_c), self.max_iter, self.tol)
        return [m._adopt_solution(s) for m, s in zip(models, solutions, strict=True)]

    def _prepare(
        self,
        X: ArrayLike,
        y: ArrayLike,
        sample_weight: ArrayLike | None = None,
        selection_offsets: ArrayLike | None = None,
    ) -> TrainingSet:
        """The checked set as the solver sees it; sets the classes, statistics and basis,
        and how C is chosen."""
        features, labels, weights = self._check_Xy(X, y, sample_weight)
        self.classes_, y_idx = np.unique(labels, return_inverse=True)
        k = self.classes_.size
        offsets = None
        if selection_offsets is not None:
            offsets = np.asarray(selection_offsets, dtype=np.float64)
            if offsets.shape != (k,):
                raise FeatkitError(
                    f"logistic selection_offsets: expected one per class ({k}), "
                    f"got shape {offsets.shape}"
                )
        centred = self._standardised(features)
        # Basis of the centred rows (exact) where it is cheap next to the fit itself.
        n, d = centred.shape
        self.basis_: NDArray[np.float32] | None = None
        if _basis_pays(n, d, k):
            self.basis_ = _row_basis(centred)
        Z = centred if self.basis_ is None else centred @ self.basis_
        w = np.ones(n) if weights is None else weights
        training = TrainingSet(Z, y_idx, w, k, [], offsets=offsets)
        self.c_scores_: NDArray[np.float64] | None = None
        if self.c is not None:
            training.C, self.selection_ = float(self.c), "fixed"
        elif np.bincount(y_idx, minlength=k).min() < 2:
            mean_sq = float(np.mean(np.sum(centred.astype(np.float64) ** 2, axis=1)))
            training.C, self.selection_ = self.fallback_c / max(mean_sq, 1e-12), "fallback"
        else:
            training.held_out = selection_folds(
                y_idx, self.holdout, self.min_holdout, self.n_folds, self.random_state
            )
            folds = len(training.held_out)
            self.selection_ = "holdout" if folds == 1 else f"{folds}-fold"
        return training

    def _standardised(self, features: NDArray[np.float32]) -> NDArray[np.float32]:
        """Centred training features, with ``standardize`` divided by their RMS; sets the stats.

        ``scale_`` is per column (all equal here) so that ``coef_`` folds it back the same
        way whatever the scaling rule.
        """
        self.mean_ = features.mean(axis=0, dtype=np.float64).astype(np.float32)
        centred = features - self.mean_
        scale = np.ones(features.shape[1], np.float32)
        if self.standardize:
            rms = float(np.sqrt(np.mean(centred.astype(np.float64) ** 2)))
            scale[:] = 1.0 / rms if rms > 0 else 0.0
        self.scale_ = scale
        return centred * scale

    def _adopt_solution(self, solution: Solution) -> Logistic:
        """Coefficients on the raw features from the solver's, in the basis of centred,
        scaled features."""
        self.C_ = solution.C
        if solution.scores is not None:
            self.c_scores_ = solution.scores  # mean held-out balanced accuracy per C
            self.c_index_ = solution.index
        W = solution.W if self.basis_ is None else solution.W @ self.basis_.T  # [K, D]
        self.coef_ = (W * self.scale_).astype(np.float32)
        # The solver saw centred inputs; fold the centring into the intercept.
        b = solution.b - self.coef_.astype(np.float64) @ self.mean_
        self.intercept_ = b.astype(np.float32)
        return self

    @property
    def grid_edge_(self) -> str:
        """``"low"``/``"high"`` when the selected C is the grid's first/last value, else ``""``."""
        if self.c_scores_ is None or self.n_c < 2:
            return ""
        return "low" if self.c_index_ == 0 else "high" if self.c_index_ == self.n_c - 1 else ""

    @property
    def fitted_params_(self) -> dict[str, Any]:
        """What fitting chose, for the result record: ``C``, how, and a warning at a grid end."""
        params: dict[str, Any] = {"C": self.C_, "c_selection": self.selection_}
        if self.grid_edge_:
            params["c_grid_edge"] = self.grid_edge_
            bound = "10^-6" if self.grid_edge_ == "low" else "10^5"
            params["warning"] = (
                f"logistic: the selected C = {self.C_:.3g} is the {self.grid_edge_} end of "
                f"the grid ({bound}); the best C may lie outside it"
            )
        return params

    # -- predicting --------------------------------------------------------------------

    def decision_function(self, X: ArrayLike) -> NDArray[np.float32]:
        """Logits ``[N, C]`` in ``classes_`` order."""
        features = self._check_X(X)
        return features @ self.coef_.T + self.intercept_

    def predict_proba(self, X: ArrayLike) -> NDArray[np.float64]:
        return softmax(self.decision_function(X))

    def predict(self, X: ArrayLike) -> NDArray[np.int64]:
        scores = self.decision_function(X)  # checks X and fit first
        return self.classes_[np.argmax(scores, axis=1)]
