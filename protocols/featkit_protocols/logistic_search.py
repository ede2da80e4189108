"""The logistic probe's C search and refit, for one training set or many at once.

A sweep fits the same protocol on every episode of a shots setting: ten independent
training sets of a few dozen images each. One such fit is thousands of tiny products,
where numpy's per-call overhead costs more than the arithmetic; solved together, every
call serves all of them (:meth:`featkit_protocols.logistic_solver.Problem.stack`), and
each set still gets exactly its own optimum, its own C and its own held-out scores.
Sets are put together when they have as many classes and selection folds and would
be solved in the same floating-point type alone, up to
``BATCH_VALUES`` logits per batch (larger problems gain nothing from it and would
only hold more memory).

C is chosen on a grid by the mean held-out balanced accuracy of the selection folds
(:func:`selection_folds`); ties go to the median of the tied points (:func:`pick_c`).

The grid is walked from small to large C, every C started from the last two solutions
extrapolated linearly (in ``log C``: the grid is geometric). From the previous solution
alone the walk lagged behind the optimum, the more so the flatter the objective: with
weak regularisation one step of C moves the gradient less than the stopping tolerance,
and the path stopped moving, every large C left at the solution of a smaller one. On
the three stores of a 1,040-image workspace (``python benchmarks/probe_workspace.py``:
the default probe's twelve C searches, 5 and 10 shots with ten episodes at once and
the full training split for ``logistic`` and ``balanced``) the extrapolated starts took
35-60 % fewer evaluations (random-init store: 802 → 366 for the 10-shot episodes,
905 → 493 for the full split), and each C's solution ended as close to its optimum or
closer: on the full split the objective's gap at C ≥ 1e3 fell from 2.5e-3-3.1e-3 to
2e-5-1.3e-4 (median over the folds; 15-280 times closer on both problems); at smaller
C the gaps moved by less than an order of magnitude either way, all below 3e-4.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from featkit_protocols.logistic_solver import Problem, folds_dtype, minimize

OFFICIAL_C_RANGE = (-6.0, 5.0)  # log10 bounds of the DINOv2/v3 grid

# At most this many logits (folds × classes × rows, over the sets) in one batch: 32 MB
# in float64, a few copies of it per evaluation.
BATCH_VALUES = 1 << 22


def c_grid(n: int = 45) -> NDArray[np.float64]:
    """The official grid ``10^linspace(-6, 5, n)``."""
    return 10.0 ** np.linspace(*OFFICIAL_C_RANGE, n)


def _half_up(x: float) -> int:
    """``round`` to the nearest integer with halves going up (``round`` goes to even)."""
    return int(np.floor(x + 0.5))


def selection_folds(
    y: NDArray[np.int64],
    holdout: float = 0.1,
    min_holdout: int = 5,
    n_folds: int = 5,
    random_state: int = 0,
) -> list[NDArray[np.bool_]]:
    """Held-out masks ``[n]`` used to choose C (the rule of the logistic module's doc).

    One mask holding out ``holdout`` of every class when that leaves at least
    ``min_holdout`` images of the smallest class in it (the official single hold-out);
    otherwise stratified ``min(n_folds, smallest class)``-fold cross-validation: each
    class's images, in a seeded random order, are dealt to the folds in turn, so every
    fold holds out at least one image of every class and every image is held out once.
    Needs at least 2 images per class.
    """
    rng = np.random.default_rng(random_state)
    classes, counts = np.unique(y, return_counts=True)
    order = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    if _half_up(holdout * counts.min()) >= min_holdout:
        mask = np.zeros(y.size, bool)
        for members in order:
            mask[members[: _half_up(holdout * members.size)]] = True
        return [mask]
    folds = int(min(n_folds, counts.min()))
    masks = [np.zeros(y.size, bool) for _ in range(folds)]
    # Dealing starts at a different fold per class so the folds' sizes stay within one.
    offset = 0
    for members in order:
        for position, row in enumerate(members):
            masks[(offset + position) % folds][row] = True
        offset += members.size
    return masks


def fold_balanced_accuracy(
    predicted: NDArray[np.int64], y: NDArray[np.int64], valid: NDArray[np.bool_], n_classes: int
) -> NDArray[np.float64]:
    """Balanced accuracy ``[F]`` of each fold's predictions ``[F, h]`` on its valid rows.

    The mean recall over the classes present in the fold's held-out rows, as
    :func:`featkit.metrics.balanced_accuracy`, for all folds in a few array operations.
    """
    F = predicted.shape[0]
    cell = (np.arange(F)[:, None] * n_classes + y)[valid]
    total = np.bincount(cell, minlength=F * n_classes).reshape(F, n_classes)
    hits = np.bincount(cell[(predicted == y)[valid]], minlength=F * n_classes)
    hits = hits.reshape(F, n_classes)
    present = total > 0
    recall = np.where(present, hits / np.maximum(total, 1), 0.0)
    return recall.sum(axis=1) / present.sum(axis=1)


def pick_c(scores: NDArray[np.float64], atol: float = 1e-12) -> int:
    """Index of the chosen ``C``: the median of the grid points tied at the best score.

    A flat stretch of the selection curve carries no preference; its smallest ``C``
    (the usual tie rule) sits at its edge, where the curve starts to fall, and with a
    few held-out images per class it lands on the grid's end. The middle of the tied
    points is the choice least sensitive to which images were held out.
    """
    tied = np.flatnonzero(scores >= scores.max() - atol)
    return int(tied[(tied.size - 1) // 2])


@dataclass
class TrainingSet:
    """One training set as the solver sees it."""

    Z: NDArray[np.float32]  # [n, r] standardised features, in their basis
    y: NDArray[np.int64]  # [n] class index 0 … K-1
    weights: NDArray[np.float64]  # [n] sample weights
    n_classes: int
    held_out: list[NDArray[np.bool_]]  # selection folds; empty when C is given
    C: float | None = None  # the given C (no search), or None
    offsets: NDArray[np.float64] | None = None  # [K] subtracted from logits when scoring


@dataclass
class Solution:
    """What fitting one set found: C, the coefficients ``W [K, r]``, ``b [K]``, and the
    held-out score per grid point with the chosen index (None without a search)."""

    C: float
    W: NDArray[np.float64]
    b: NDArray[np.float64]
    scores: NDArray[np.float64] | None = None
    index: int | None = None


def fit_sets(
    sets: list[TrainingSet], grid: NDArray[np.float64], max_iter: int, tol: float
) -> list[Solution]:
    """Each set's solution, in order; sets alike are solved as one batch (module doc)."""
    solutions: dict[int, Solution] = {}
    for batch in _batches(sets):
        members = [sets[i] for i in batch]
        if members[0].held_out:
            found = _search(members, grid, max_iter, tol)
        else:
            found = [Solution(_given(s), np.empty(0), np.empty(0)) for s in members]
        for i, solution in zip(batch, _refit(members, found, max_iter, tol), strict=True):
            solutions[i] = solution
    return [solutions[i] for i in range(len(sets))]


def _given(s: TrainingSet) -> float:
    if s.C is None:
        raise ValueError("a training set without selection folds needs its C")
    return s.C


def _batches(sets: list[TrainingSet]) -> Iterator[list[int]]:
    """Indices of sets solved together: same classes, folds and feature types, at most
    ``BATCH_VALUES`` logits."""
    alike: dict[tuple[int, int, Any], list[int]] = {}
    for i, s in enumerate(sets):
        alike.setdefault((s.n_classes, len(s.held_out), _feature_types(s)), []).append(i)
    for (classes, folds, _), members in alike.items():
        batch: list[int] = []
        for i in members:
            rows = max([len(sets[j].y) for j in batch] + [len(sets[i].y)])
            if batch and (len(batch) + 1) * max(folds, 1) * classes * rows > BATCH_VALUES:
                yield batch
                batch = []
            batch.append(i)
        yield batch


def _feature_types(s: TrainingSet) -> tuple[type | None, type]:
    """The feature types of the set's search (None without one) and refit problems when
    solved alone."""
    width = s.Z.shape[1]
    search = folds_dtype([~mask for mask in s.held_out], width) if s.held_out else None
    return search, folds_dtype([np.ones(len(s.y), bool)], width)


def _padded(arrays: list[NDArray]) -> NDArray:
    """Arrays of equal rank stacked along a new first axis, zero-padded to the largest."""
    shape = (len(arrays), *np.max([a.shape for a in arrays], axis=0))
    out = np.zeros(shape, dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        region: tuple[int | slice, ...] = (i, *(slice(0, n) for n in a.shape))
        out[region] = a
    return out


@dataclass
class _HeldOut:
    """Every set's held-out rows, padded so that one product scores all folds of all sets.

    ``Z [G, m, r]`` are the rows some fold of the set holds out (all of them in k-fold,
    10 % otherwise); ``position [G·F, h]`` indexes fold f's held-out rows among them,
    ``valid [G·F, h]`` marks the real ones and ``y [G·F, h]`` are their classes.
    """

    Z: NDArray[np.floating]
    position: NDArray[np.int64]
    valid: NDArray[np.bool_]
    y: NDArray[np.int64]

    @classmethod
    def of(cls, sets: list[TrainingSet], dtype: np.dtype) -> _HeldOut:
        Z, position, valid, y = [], [], [], []
        for s in sets:
            rows = [np.flatnonzero(mask) for mask in s.held_out]
            scored = np.unique(np.concatenate(rows))
            Z.append(s.Z[scored].astype(dtype, copy=False))
            position += [np.searchsorted(scored, r) for r in rows]
            valid += [np.ones(r.size, bool) for r in rows]
            y += [s.y[r] for r in rows]
        return cls(_padded(Z), _padded(position), _padded(valid), _padded(y))


def _search(
    sets: list[TrainingSet], grid: NDArray[np.float64], max_iter: int, tol: float
) -> list[Solution]:
    """Per set: the chosen C with the held-out score per grid point, and as ``W``, ``b``
    its first fold's solution at that C (the refit's warm start)."""
    F, K = len(sets[0].held_out), sets[0].n_classes
    problem = Problem.stack(
        [Problem.from_folds(s.Z, s.y, s.weights, [~m for m in s.held_out], K) for s in sets]
    )
    fold_weights = np.array([s.weights[~m].sum() for s in sets for m in s.held_out])
    lam = 1.0 / (grid[:, None] * fold_weights)  # [C, G·F]
    held = _HeldOut.of(sets, problem.Z.dtype)
    offsets = [np.zeros(K) if s.offsets is None else s.offsets for s in sets]
    shift = np.repeat(np.stack(offsets), F, axis=0)[:, :, None]  # [G·F, K, 1]
    scores = np.zeros((len(sets), len(grid)))
    firsts = []  # each set's first fold at every C: [G, p] per C
    theta = previous = problem.prior_start()
    for i in range(len(grid)):  # small to large C, each from the path extrapolated
        start = 2.0 * theta - previous  # linear in log C: the grid is geometric
        previous, theta = theta, minimize(problem, lam[i], start, max_iter, tol)
        predicted = np.argmax(problem.logits(theta, held.Z) - shift, axis=1)  # [G·F, m]
        answers = np.take_along_axis(predicted, held.position, axis=1)
        accuracy = fold_balanced_accuracy(answers, held.y, held.valid, K)
        scores[:, i] = accuracy.reshape(len(sets), F).mean(axis=1)
        firsts.append(theta[::F])
    found = []
    for g in range(len(sets)):
        best = pick_c(scores[g])
        W, b = problem.split(firsts[best][g : g + 1])
        found.append(Solution(float(grid[best]), W[0], b[0], scores[g], best))
    return found


def _refit(
    sets: list[TrainingSet], found: list[Solution], max_iter: int, tol: float
) -> list[Solution]:
    """Every set fitted on all its images at the C of ``found``, starting from its
    ``W``, ``b`` (zero when empty)."""
    K = sets[0].n_classes
    problem = Problem.stack(
        [Problem.from_folds(s.Z, s.y, s.weights, [np.ones(len(s.y), bool)], K) for s in sets]
    )
    start = np.zeros(problem.shape)
    for g, solution in enumerate(found):
        if solution.W.size:  # same padded width: the search stacked the same sets
            start[g] = np.concatenate([solution.W.ravel(), solution.b])
    C = np.array([solution.C for solution in found])
    lam = 1.0 / (C * np.array([s.weights.sum() for s in sets]))
    W, b = problem.split(minimize(problem, lam, start, max_iter, tol))
    return [
        Solution(solution.C, W[g, :, : s.Z.shape[1]], b[g], solution.scores, solution.index)
        for g, (s, solution) in enumerate(zip(sets, found, strict=True))
    ]
