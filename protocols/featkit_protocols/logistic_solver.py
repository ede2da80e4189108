"""The logistic probe's solver: ``F`` independent L2 multinomial problems in lockstep.

The folds of the C search (and the refit, ``F = 1``) are solved together over the
rows they share, so every matrix product serves all folds at once. The solver is a
limited-memory BFGS written for this batch instead of scipy's L-BFGS-B, because on the
few-shot problems scipy's bookkeeping (``setulb``, 1.4 ms a call for 5,000 parameters
on one thread, 9 ms with two OpenBLAS threads on a busy machine) cost more than the
objective itself. Each fold keeps its own curvature pairs, step length and stopping
test, so one fold's curvature never steers another's step. It follows scipy's choices
where they matter: 10 pairs, a first step of length at most 1, the stopping rule
(largest gradient component of the mean-loss objective at most ``tol``, at most
``max_iter`` iterations, or a relative decrease below ``64·eps``). Steps satisfy the
Armijo condition, backtracking by the minimiser of the interpolating quadratic (exact
where the penalty dominates, at small C).

Unlike scipy it is preconditioned: the initial inverse Hessian of the two-loop
recursion is the inverse of the objective's exact Hessian diagonal at the start point
(:meth:`Problem.curvature_diagonal`), scaled by the newest pair as BFGS does in the
preconditioned variables. The features' columns differ in scale by orders of magnitude
(in the basis of the training rows a column's scale is a singular value), and the
penalty adds the same ``1/C`` to every coefficient, so which directions the data
dominate changes along the C path; a scaled identity leaves the ten pairs to learn
that again at every C. On the three stores of a 1,040-image workspace (the default
probe's twelve C searches: 5 and 10 shots, ten episodes at once, and the full
training split for ``logistic`` and ``balanced``, each C then started from the
previous one's solution) it took 20-50 % fewer evaluations (random-init store:
1,648 → 802 for the 10-shot episodes, 1,153 → 905 for the full split). The solutions
are as close to their optima or closer: on the 10-shot episodes the objective ended
5-10 times closer in the middle of the path, on the full split within a factor 3
either way. The diagonal is computed once per C: recomputing it at every iteration
saved a few more evaluations and cost two products each time.

What keeps a call cheap where the products are tiny and per-operation overhead
dominates: float64 features below ``FLOAT32_FROM`` values (no casts of the parameters
at every call), float32 above (the products dominate and halve in cost); targets
stored once as weighted one-hot rows (no gathers per call); and, where the rows are
many, the objective in blocks of rows (:meth:`Problem.loss_grad`).

Tried and dropped: carrying the curvature pairs from one C to the next, corrected
exactly for the change of penalty (483 evaluations instead of 445 on a 1,000 × 768,
5-fold search); a diagonal preconditioner from Böhning's bound on the softmax
curvature (3-10× more evaluations: the bound is far above the curvature where the
model is confident, so every step came out short); the exact diagonal averaged over
the classes, which keeps each step's class sum at zero as the softmax's invariance
would have it (8 % fewer evaluations, but farther from the optimum at small C).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

# From this many feature values on, the folds' features are kept in float32: the
# products dominate and halve in cost. Below it float64 avoids casting the small
# parameter arrays at every call, which costs more than the products themselves.
FLOAT32_FROM = 1 << 20

BLOCK_BYTES, MIN_BLOCK_ROWS = 1 << 21, 256  # a block of rows holds at least both (_blocks)

MEMORY = 10  # curvature pairs kept (scipy's default)
ARMIJO = 1e-4  # sufficient-decrease constant of the backtracking line search
MAX_HALVINGS = 30  # backtracking steps before a fold counts as converged
FTOL = 64 * np.finfo(float).eps  # relative decrease that ends a fold (scipy's setting)


@dataclass(frozen=True)
class _Rows:
    """A block of a problem's rows: views of its features, weights and targets."""

    Z: NDArray[np.floating]  # [G, m, r]
    weights: NDArray[np.float64]  # [G·F, m]
    targets: NDArray[np.float64]  # [G·F, K, m]


@dataclass
class Problem:
    """``G`` groups of rows ``Z [G, n, r]``, each with ``F`` folds, solved as one batch.

    The folds of a cross-validation share their rows: a row's weight is 0 in the folds
    that hold it out. Groups are independent training sets (the episodes of a sweep)
    padded to a common ``n`` and ``r`` with zero rows and columns, which change no
    fold's optimum: a zero-weight row adds nothing, and a zero column's coefficients
    have zero gradient and stay at 0. Parameters are ``θ [G·F, K·(r + 1)]``: ``W [K, r]``
    then the intercept ``b [K]`` of each fold of each group. A group's logits come from
    one product ``[W₁ … W_F]·Zᵀ`` and its gradients from one ``[R₁ … R_F]·Z``: ``F·K``
    rows use the matrix-product kernels several times better than ``F`` products of
    ``K`` columns over each fold's copy of the rows (2-3x for 1,000 × 768, 5 folds, 10
    classes), and one stacked product serves all groups. Logits are laid out
    ``[G·F, K, n]`` so that the softmax reduces over whole contiguous rows of ``n``
    values, not over runs of ``K``.
    """

    Z: NDArray[np.floating]  # [G, n, r]
    weights: NDArray[np.float64]  # [G·F, n], each fold normalised to sum 1 (0 = not in it)
    targets: NDArray[np.float64]  # [G·F, K, n]: one-hot labels times the row's weight
    n_classes: int

    @classmethod
    def from_folds(
        cls,
        Z: NDArray[np.float32],
        y: NDArray[np.int64],
        w: NDArray[np.float64],
        fit_masks: list[NDArray[np.bool_]],
        n_classes: int,
    ) -> Problem:
        """One group: the folds ``fit_masks`` (rows each fold trains on) of ``Z [n, r]``."""
        used = np.logical_or.reduce(fit_masks)  # rows no fold trains on cost nothing
        F = len(fit_masks)
        rows = Z if used.all() else Z[used]
        weights = np.stack([np.where(mask, w, 0.0)[used] for mask in fit_masks])
        weights /= weights.sum(axis=1, keepdims=True)
        targets = np.zeros((F, n_classes, len(rows)))
        targets[:, y[used], np.arange(len(rows))] = weights
        dtype = folds_dtype(fit_masks, Z.shape[1])
        return cls(np.asarray(rows, dtype=dtype)[None], weights, targets, n_classes)

    @classmethod
    def stack(cls, groups: list[Problem]) -> Problem:
        """Single-group problems with the same folds, classes and feature type as one,
        zero-padded (each keeps the type it has alone, so its solution does not change)."""
        if len(groups) == 1:  # nothing to pad: no copy of a large training set
            return groups[0]
        n = max(g.Z.shape[1] for g in groups)
        r = max(g.Z.shape[2] for g in groups)
        F, K, dtype = len(groups[0].weights), groups[0].n_classes, groups[0].Z.dtype
        if any(g.Z.dtype != dtype or len(g.weights) != F for g in groups):
            raise ValueError("stacked problems need the same folds and feature type")
        Z = np.zeros((len(groups), n, r), dtype)
        weights = np.zeros((len(groups) * F, n))
        targets = np.zeros((len(groups) * F, K, n))
        for i, group in enumerate(groups):
            rows, width = group.Z.shape[1:]
            Z[i, :rows, :width] = group.Z[0]
            weights[i * F : (i + 1) * F, :rows] = group.weights
            targets[i * F : (i + 1) * F, :, :rows] = group.targets
        return cls(Z, weights, targets, K)

    @property
    def shape(self) -> tuple[int, int]:
        """``(G·F, K·(r + 1))``: folds of all groups and parameters per fold."""
        return len(self.weights), (self.Z.shape[2] + 1) * self.n_classes

    def narrowed(
        self, active: NDArray[np.bool_], at_most: int | None = None
    ) -> tuple[Problem, NDArray[np.int64]] | None:
        """The problem over the folds that still move, ``active [G·F]``, and their rows;
        None where that keeps more than ``at_most`` folds (nothing is copied then).

        Whole groups drop out once all their folds are done; within the groups left,
        fold positions that are done in all of them drop out too, so the layout stays
        the same number of folds per group and the products keep their shape.
        """
        G = len(self.Z)
        by_group = active.reshape(G, -1)
        groups = np.flatnonzero(by_group.any(axis=1))
        folds = np.flatnonzero(by_group[groups].any(axis=0))
        if at_most is not None and groups.size * folds.size > at_most:
            return None
        rows = (groups[:, None] * by_group.shape[1] + folds).ravel()
        Z = self.Z if groups.size == G else self.Z[groups]
        return Problem(Z, self.weights[rows], self.targets[rows], self.n_classes), rows

    def prior_start(self) -> NDArray[np.float64]:
        """``W = 0`` and each fold's intercept at its optimum for ``W = 0`` (log prior).

        The most regularised C's solution is a hair away from this point; from all zeros
        the intercept alone took ~100 iterations against a penalty 1e3-1e6 times stiffer.
        """
        F, p = self.shape
        log_prior = np.log(np.maximum(self.targets.sum(axis=2), 1e-12))  # [F, K]
        theta = np.zeros((F, p))
        theta[:, -self.n_classes :] = log_prior - log_prior.mean(axis=1, keepdims=True)
        return theta

    def split(self, theta: NDArray[np.float64]) -> tuple[NDArray, NDArray]:
        """``W [G·F, K, r]``, ``b [G·F, K]`` views of ``θ [G·F, p]``."""
        F, K = theta.shape[0], self.n_classes
        return theta[:, :-K].reshape(F, K, -1), theta[:, -K:]

    def logits(self, theta: NDArray[np.float64], Z: NDArray[np.floating]) -> NDArray[np.float64]:
        """Logits ``[G·F, K, m]`` of each group's rows ``Z [G, m, r]`` (or ``[m, r]`` for
        every group) under every fold's model of that group."""
        W, b = self.split(theta)
        G, K, m = len(self.Z), self.n_classes, Z.shape[-2]
        stacked = W.reshape(G, -1, W.shape[2]).astype(Z.dtype, copy=False)  # [G, F·K, r]
        products = (stacked @ np.swapaxes(Z, -1, -2)).astype(np.float64, copy=False)
        return products.reshape(-1, K, m) + b[..., None]

    @cached_property
    def _blocks(self) -> list[_Rows]:
        """Views of the rows in equal blocks of at least ``BLOCK_BYTES`` of features and
        ``MIN_BLOCK_ROWS`` rows (one block below two: a short last block cost more in
        per-call overhead than it saved)."""
        G, n, r = self.Z.shape
        rows = max(MIN_BLOCK_ROWS, BLOCK_BYTES // (G * r * self.Z.itemsize))
        size = -(-n // max(1, n // rows))
        return [
            _Rows(self.Z[:, block], self.weights[:, block], self.targets[:, :, block])
            for block in (slice(start, start + size) for start in range(0, n, size))
        ]

    def _softmax(
        self, theta: NDArray[np.float64], rows: _Rows
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """For the block ``rows``: each fold's logits less their row maximum, the
        probabilities ``[G·F, K, m]`` and the normalisers ``[G·F, m]``."""
        logits = self.logits(theta, rows.Z)
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        total = probabilities.sum(axis=1)
        probabilities /= total[:, None]
        return logits, probabilities, total

    def _accumulate(
        self, into: NDArray[np.float64], weights: NDArray[np.float64], features: NDArray
    ) -> None:
        """Add ``weights [G·F, K, m]`` of a block's rows times their ``features
        [G, m, r]`` to the coefficient part of ``into [G·F, p]``, and the weights' sum
        over the rows to the intercept part."""
        F, K, m = weights.shape
        flat = weights.reshape(len(self.Z), -1, m).astype(self.Z.dtype, copy=False)
        into[:, :-K] += (flat @ features).astype(np.float64, copy=False).reshape(F, -1)
        into[:, -K:] += weights.sum(axis=2)

    def loss_grad(
        self,
        theta: NDArray[np.float64],
        lam: NDArray[np.float64],
        keep: list[NDArray[np.float64]] | None = None,
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Objective per fold ``[G·F]`` and its gradient ``[G·F, p]``; ``lam = 1/(C·Σ w)``.
        ``keep``: a list that receives each block's probabilities, for
        :meth:`curvature_diagonal` at the same ``θ``.

        Block by block of rows (:attr:`_blocks`), each block's logits and gradient
        products while its features are in cache: over all rows at once, the skinny
        products of one fold's ten classes each read every feature from memory, and a
        C search on 9,999 × 768 float32 features (one hold-out fold) took 15 % longer.
        """
        K = self.n_classes
        penalised = theta[:, :-K]
        loss = 0.5 * lam * _dot(penalised, penalised)
        grad = np.zeros_like(theta)
        grad[:, :-K] = lam[:, None] * penalised
        for rows in self._blocks:
            logits, probabilities, total = self._softmax(theta, rows)
            if keep is not None:
                keep.append(probabilities)
            # Σᵢ wᵢ·(log Σₖ exp zᵢₖ − zᵢ,yᵢ), the targets carrying wᵢ on the true class.
            loss += _dot(rows.weights, np.log(total))
            loss -= _dot(rows.targets.reshape(len(theta), -1), logits.reshape(len(theta), -1))
            residual = probabilities * rows.weights[:, None]
            residual -= rows.targets
            self._accumulate(grad, residual, rows.Z)
        return loss, grad

    def curvature_diagonal(
        self,
        theta: NDArray[np.float64],
        lam: NDArray[np.float64],
        probabilities: list[NDArray[np.float64]] | None = None,
    ) -> NDArray[np.float64]:
        """The diagonal ``[G·F, p]`` of each fold's Hessian at ``θ``.

        For class ``k`` and column ``j``: ``Σᵢ wᵢ·pᵢₖ(1 − pᵢₖ)·zᵢⱼ² + lam``, and for the
        intercept ``Σᵢ wᵢ·pᵢₖ(1 − pᵢₖ)`` (kept above 1e-12: a fold sure of a class has
        none there, and the recursion divides by it). One product per block of rows,
        and the logits' unless the blocks' ``probabilities`` at ``θ`` are given (as
        :meth:`loss_grad` keeps them).
        """
        K = self.n_classes
        diagonal = np.zeros_like(theta)
        diagonal[:, :-K] = lam[:, None]
        for i, rows in enumerate(self._blocks):
            p = self._softmax(theta, rows)[1] if probabilities is None else probabilities[i]
            self._accumulate(diagonal, p * (1.0 - p) * rows.weights[:, None], np.square(rows.Z))
        diagonal[:, -K:] = np.maximum(diagonal[:, -K:], 1e-12)
        return diagonal


def folds_dtype(fit_masks: list[NDArray[np.bool_]], width: int) -> type[np.floating]:
    """The features' type in a problem over these folds: float32 from ``FLOAT32_FROM``
    values (the rows some fold trains on × ``width`` × folds) on, else float64."""
    used = int(np.logical_or.reduce(fit_masks).sum())
    return np.float32 if used * width * len(fit_masks) >= FLOAT32_FROM else np.float64


def _dot(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    """Row-wise inner products ``[F]`` of two ``[F, p]`` arrays.

    ``vecdot`` is a ufunc: 2.4x less overhead than ``einsum`` on these small arrays,
    where the two-loop recursion calls it about 40 times per iteration.
    """
    return np.vecdot(a, b)


def _direction(
    g: NDArray[np.float64],
    pairs: list[tuple[NDArray, NDArray, NDArray]],
    initial: NDArray[np.float64],
) -> NDArray[np.float64]:
    """``−H·g`` by the two-loop recursion, every fold with its own pairs' scalars and
    its own initial inverse Hessian, the diagonal ``initial [F, p]``."""
    q = g.copy()
    alphas = []
    for s, y, rho in reversed(pairs):
        alpha = rho * _dot(s, q)
        q -= alpha[:, None] * y
        alphas.append(alpha)
    q *= initial
    for (s, y, rho), alpha in zip(pairs, reversed(alphas), strict=True):
        q += s * (alpha - rho * _dot(y, q))[:, None]
    if not pairs:  # no curvature known yet: a step of length at most 1 (as scipy's)
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1.0)
    return -q


def minimize(
    problem: Problem,
    lam: NDArray[np.float64],
    theta0: NDArray[np.float64],
    max_iter: int,
    tol: float,
) -> NDArray[np.float64]:
    """Each fold's minimiser ``[F, p]`` of the objective at ``lam [F]`` (module doc).

    Folds stop at different iterations; once a quarter of the folds carried are done,
    the loop goes on over the rest alone (:meth:`Problem.narrowed`): in a sweep's batch
    of ten episodes about half the folds are done at any time, and evaluating and
    updating them anyway cost as much as the ones still moving.
    """
    solution = np.array(theta0, dtype=np.float64).reshape(problem.shape)
    rows = np.arange(len(solution))  # the folds still carried, as rows of ``solution``
    x = solution.copy()
    at_start: list[NDArray[np.float64]] = []  # the probabilities, for the diagonal
    f, g = problem.loss_grad(x, lam, at_start)
    pairs: list[tuple[NDArray, NDArray, NDArray]] = []  # (s, y, 1/sᵀy), oldest first
    active = np.abs(g).max(axis=1) > tol
    # Initial inverse Hessian: gamma · P, P the inverse Hessian diagonal at the start.
    precondition = np.ones_like(x)
    if active.any():
        precondition = 1.0 / problem.curvature_diagonal(x, lam, at_start)
    at_start.clear()  # not held through the iterations
    gamma = np.ones(len(x))
    for _ in range(max_iter):
        if not active.any():
            break
        narrowed = problem.narrowed(active, at_most=3 * len(active) // 4)
        if narrowed is not None:
            narrower, keep = narrowed
            solution[rows] = x
            problem, rows = narrower, rows[keep]
            x, f, g, lam, active = x[keep], f[keep], g[keep], lam[keep], active[keep]
            gamma, precondition = gamma[keep], precondition[keep]
            pairs = [(s[keep], y[keep], rho[keep]) for s, y, rho in pairs]
        direction = _direction(g, pairs, gamma[:, None] * precondition)
        slope = _dot(g, direction)
        lost = slope >= 0  # rounding broke the memory's descent: restart from −g
        if lost.any():
            direction[lost] = -g[lost] / np.maximum(np.linalg.norm(g[lost], axis=1), 1.0)[:, None]
            slope = _dot(g, direction)
        direction[~active] = 0.0
        slope[~active] = 0.0
        step = np.ones(len(x))
        for _ in range(MAX_HALVINGS):
            x_new = x + step[:, None] * direction
            f_new, g_new = problem.loss_grad(x_new, lam)
            ok = f_new <= f + ARMIJO * step * slope
            if ok.all():
                break
            # Minimiser of the quadratic through f, the slope and f_new, kept within
            # [1e-8, 0.5] of the step: exact when the penalty dominates (small C), where
            # plain halving took a dozen evaluations to shrink a unit step.
            curvature = np.maximum(f_new - f - step * slope, 1e-300)
            guess = -slope * step * step / (2.0 * curvature)
            step = np.where(ok, step, np.clip(guess, 1e-8 * step, 0.5 * step))
        else:  # no decrease for some fold: it is as converged as float64 allows
            active &= ok
            x_new = np.where(ok[:, None], x_new, x)
            f_new, g_new = np.where(ok, f_new, f), np.where(ok[:, None], g_new, g)
        s, y = x_new - x, g_new - g
        sy, yy = _dot(s, y), _dot(y, y)
        curved = sy > 1e-10 * np.sqrt(_dot(s, s) * yy)  # else the pair is left out
        rho = np.where(curved, 1.0 / np.where(curved, sy, 1.0), 0.0)
        pairs = [*pairs[-(MEMORY - 1) :], (s, y, rho)]
        # sᵀy / yᵀPy: the usual sᵀy / yᵀy in the variables that P makes well scaled.
        yPy = _dot(y, precondition * y)
        gamma = np.where(curved, sy / np.where(curved, yPy, 1.0), gamma)
        scale = np.maximum(np.maximum(np.abs(f), np.abs(f_new)), 1.0)
        stalled = f - f_new <= FTOL * scale
        x, f, g = x_new, f_new, g_new
        active &= (np.abs(g).max(axis=1) > tol) & ~stalled
    solution[rows] = x
    return solution
