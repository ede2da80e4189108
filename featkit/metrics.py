"""Classification and clustering metrics, and statistics over episodes.

Everything is computed from integer labels (``y_true``, ``y_pred``: ``[N]``) and, where
a protocol has them, per-class scores (``[N, C]``, higher = more likely; probabilities or
logits). Conventions, chosen to match scikit-learn:

* ``balanced_accuracy``: mean recall over the classes present in ``y_true``.
* ``macro_f1``: mean F1 over the classes present in ``y_true`` or ``y_pred``; a class
  never predicted has F1 0.
* ``macro_auroc``: one-vs-rest ROC AUC averaged over the classes, from the scores. It
  is only defined when the scored classes and the test classes are the same set (each
  class has positives and negatives); otherwise it is ``None`` and no row is written.
* Over episodes: mean, sample standard deviation and a Student-t 95% interval. One
  episode gives ``std = 0`` and an interval equal to the mean: there is nothing to
  estimate the spread from, so the interval is degenerate rather than invented.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from featkit.errors import FeatkitError


def as_labels(y: ArrayLike, name: str) -> NDArray[np.int64]:
    """``y`` as a 1-D int64 array of labels; a one-line error naming ``name`` otherwise."""
    array = np.asarray(y)
    if array.ndim != 1:
        raise FeatkitError(f"{name}: expected a 1-D array of labels, got {array.ndim}-D")
    return array.astype(np.int64, copy=False)


def paired_labels(
    y_true: ArrayLike, y_pred: ArrayLike
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    t, p = as_labels(y_true, "y_true"), as_labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise FeatkitError(f"y_pred: expected {t.shape[0]} labels like y_true, got {p.shape[0]}")
    if t.size == 0:
        raise FeatkitError("y_true: expected at least one test label, got none")
    return t, p


def _positions(order: NDArray[np.int64], values: NDArray[np.int64]) -> NDArray[np.int64]:
    """Index of each value in ``order`` (any order, unique), -1 where absent."""
    if order.size == 0:
        return np.full(values.shape, -1, dtype=np.int64)
    sorter = np.argsort(order, kind="stable")
    found = np.clip(np.searchsorted(order, values, sorter=sorter), 0, order.size - 1)
    index = sorter[found]
    return np.where(order[index] == values, index, -1).astype(np.int64)


def confusion_counts(
    y_true: ArrayLike, y_pred: ArrayLike, labels: Sequence[int] | None = None
) -> NDArray[np.int64]:
    """``[L, L]`` counts, row = true class, column = predicted class, in ``labels`` order.

    ``labels`` defaults to the sorted union of both arrays; pairs outside it are ignored.
    """
    t, p = paired_labels(y_true, y_pred)
    order = np.unique(np.concatenate([t, p])) if labels is None else np.asarray(labels, np.int64)
    ti, pi = _positions(order, t), _positions(order, p)
    keep = (ti >= 0) & (pi >= 0)
    size = len(order)
    flat = np.bincount(ti[keep] * size + pi[keep], minlength=size * size)
    return flat.reshape(size, size).astype(np.int64)


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    t, p = paired_labels(y_true, y_pred)
    return float(np.mean(t == p))


def per_class_recall(
    y_true: ArrayLike, y_pred: ArrayLike, labels: Sequence[int]
) -> NDArray[np.float64]:
    """Recall per class of ``labels``, ``[L]``; NaN for a class with no test images."""
    t, p = paired_labels(y_true, y_pred)
    at = _positions(np.asarray(labels, dtype=np.int64), t)
    counted = at >= 0
    totals = np.bincount(at[counted], minlength=len(labels)).astype(np.float64)
    hits = np.bincount(at[counted & (t == p)], minlength=len(labels))
    return np.divide(hits, totals, out=np.full(len(labels), np.nan), where=totals > 0)


def balanced_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    t, p = paired_labels(y_true, y_pred)
    return float(np.mean(per_class_recall(t, p, np.unique(t).tolist())))


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    t, p = paired_labels(y_true, y_pred)
    cm = confusion_counts(t, p)
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # = 2·TP + FP + FN
    f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(np.mean(f1))


def _mid_ranks(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """1-based ranks within each column of ``[N, K]``, ties sharing the mean of their
    positions (scipy's ``rankdata`` per column)."""
    columns = np.ascontiguousarray(values.T)  # [K, N]: each sort runs over contiguous memory
    order = np.argsort(columns, axis=1, kind="stable")
    ordered = np.take_along_axis(columns, order, axis=1)
    n = ordered.shape[1]
    position = np.broadcast_to(np.arange(n), ordered.shape)
    starts_group = np.ones(ordered.shape, dtype=bool)
    starts_group[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    start = np.maximum.accumulate(np.where(starts_group, position, 0), axis=1)
    next_start = np.full(ordered.shape, n)  # where the group after each position starts
    next_start[:, :-1] = np.where(starts_group[:, 1:], position[:, 1:], n)
    end = np.minimum.accumulate(next_start[:, ::-1], axis=1)[:, ::-1]  # one past each group
    ranks = np.empty(ordered.shape)
    np.put_along_axis(ranks, order, (start + 1 + end) / 2.0, axis=1)
    return ranks.T


def macro_auroc(y_true: ArrayLike, scores: ArrayLike, classes: Sequence[int]) -> float | None:
    """One-vs-rest AUROC averaged over ``classes`` (the columns of ``scores``), or None.

    None when the test labels and the scored classes differ as sets, or when there are
    fewer than two classes: some one-vs-rest curve would have no positives or negatives.
    Each class's AUROC is Mann–Whitney's U with mid-ranks for ties,
    ``P(score⁺ > score⁻) + ½·P(tie)``, ranked with numpy: importing scipy.stats alone costs
    more than every AUROC of a probe run together.
    """
    t = as_labels(y_true, "y_true")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape != (t.size, len(classes)):
        raise FeatkitError(
            f"scores: expected shape ({t.size}, {len(classes)}), got {tuple(np.shape(s))}"
        )
    if len(classes) < 2 or set(np.unique(t).tolist()) != {int(c) for c in classes}:
        return None
    positive = t[:, None] == np.asarray(classes, dtype=np.int64)[None, :]  # [N, K]
    n_pos = positive.sum(axis=0).astype(np.float64)
    n_neg = t.size - n_pos
    rank_sums = np.where(positive, _mid_ranks(s), 0.0).sum(axis=0)
    return float(np.mean((rank_sums - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)))


def classification_metrics(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    scores: ArrayLike | None = None,
    classes: Sequence[int] | None = None,
) -> dict[str, float]:
    """``accuracy``, ``balanced_accuracy``, ``macro_f1`` and, where defined, ``macro_auroc``."""
    result = {
        "accuracy": accuracy(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred),
    }
    if scores is not None and classes is not None:
        auroc = macro_auroc(y_true, scores, classes)
        if auroc is not None:
            result["macro_auroc"] = auroc
    return result


@dataclass(frozen=True)
class Summary:
    """Mean ± spread of one metric over episodes."""

    mean: float
    std: float  # sample standard deviation (ddof=1); 0 for a single episode
    ci95_low: float  # Student-t 95% interval of the mean; equal to the mean for one episode
    ci95_high: float
    n_episodes: int


def summarize(values: ArrayLike) -> Summary:
    """Mean, std and 95% t-interval of per-episode values (NaN values are dropped)."""
    array = np.asarray(values, dtype=np.float64).ravel()
    array = array[np.isfinite(array)]
    n = int(array.size)
    if n == 0:
        return Summary(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(array.mean())
    if n == 1:
        return Summary(mean, 0.0, mean, mean, 1)
    std = float(array.std(ddof=1))
    half = student_t_quantile(n - 1) * std / math.sqrt(n)
    return Summary(mean, std, mean - half, mean + half, n)


@functools.cache
def student_t_quantile(df: int, coverage: float = 0.95) -> float:
    """``t`` with ``P(|T| ≤ t) = coverage`` for Student's t with ``df`` (an integer ≥ 1).

    The two-sided probability has a closed form for integer degrees of freedom
    (Abramowitz & Stegun 26.7.3-4), with ``θ = arctan(t/√df)``; it grows with ``θ``, so
    bisection on ``θ ∈ (0, π/2)`` finds the quantile to the last bit. Importing
    scipy for it cost 0.4 s of every probe or report, most of an unchanged rerun.
    """
    if df < 1:
        raise ValueError(f"degrees of freedom: expected an integer >= 1, got {df}")

    def two_sided(theta: float) -> float:
        c2, series = math.cos(theta) ** 2, 0.0
        if df % 2:  # odd: (2/π)(θ + sinθ·cosθ·Σ_k Π_j 2j/(2j+1)·cos^{2k}θ)
            term = 1.0
            for k in range((df - 1) // 2):
                series += term
                term *= c2 * (2 * k + 2) / (2 * k + 3)
            return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * series)
        term = 1.0  # even: sinθ·Σ_k Π_j (2j−1)/(2j)·cos^{2k}θ
        for k in range(df // 2):
            series += term
            term *= c2 * (2 * k + 1) / (2 * k + 2)
        return math.sin(theta) * series

    low, high = 0.0, math.pi / 2
    while True:
        middle = 0.5 * (low + high)
        if middle in (low, high):  # no float left between them
            return math.sqrt(df) * math.tan(middle)
        if two_sided(middle) < coverage:
            low = middle
        else:
            high = middle


# ---------------------------------------------------------------------------------------
# Test-set uncertainty (the bootstrap itself: featkit.bootstrap) and paired comparison

Z95 = 1.959963984540054  # the normal 97.5 % quantile


def combined_half_width(episode_half: ArrayLike, test_se: ArrayLike) -> NDArray[np.float64]:
    """95 % half-widths of means whose error has an episode part and a test-set part.

    The two sources are independent (support sampling, test sampling), so variances add:
    ``sqrt(h_episodes² + (z·se_test)²)``, element-wise. A missing ``test_se`` (NaN) adds
    nothing.
    """
    se = np.asarray(test_se, dtype=np.float64)
    test = np.where(np.isfinite(se), Z95 * se, 0.0)
    return np.sqrt(np.asarray(episode_half, dtype=np.float64) ** 2 + test**2)


@dataclass(frozen=True)
class McNemar:
    """Paired comparison of two classifiers on the same test images."""

    a_only: float  # images A gets right and B wrong (averaged over shared episodes)
    b_only: float  # images B gets right and A wrong
    statistic: float
    p_value: float


def mcnemar(correct_a: ArrayLike, correct_b: ArrayLike) -> McNemar:
    """McNemar's test with Edwards' continuity correction, ``[E, N]`` or ``[N]`` correctness.

    With several episodes (rows) of the same ``N`` test images, each image counts once
    with its discordance averaged over the episodes: images, not episode × image pairs,
    are the independent units, so repeating episodes never makes a difference look surer.
    ``chi² = (|b − c| − 1)² / (b + c)`` on 1 degree of freedom; ``p = 1`` without
    discordant images.
    """
    a = np.atleast_2d(np.asarray(correct_a, dtype=bool))
    b = np.atleast_2d(np.asarray(correct_b, dtype=bool))
    if a.shape != b.shape:
        raise FeatkitError(f"correct_b: expected shape {a.shape} like correct_a, got {b.shape}")
    a_only = float((a & ~b).mean(axis=0).sum())
    b_only = float((~a & b).mean(axis=0).sum())
    total = a_only + b_only
    if total <= 0:
        return McNemar(a_only, b_only, 0.0, 1.0)
    statistic = max(abs(a_only - b_only) - 1.0, 0.0) ** 2 / total
    # chi² with 1 degree of freedom: P(X > x) = erfc(sqrt(x / 2)).
    return McNemar(a_only, b_only, statistic, math.erfc(math.sqrt(statistic / 2.0)))


def paired_bootstrap_balanced(
    blocks_a: Sequence[NDArray[np.floating] | NDArray[np.bool_]],
    blocks_b: Sequence[NDArray[np.floating] | NDArray[np.bool_]],
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Paired stratified bootstrap of a balanced-accuracy difference: ``(difference, p)``.

    ``blocks_*[c]`` is ``[n_c]``: each test image of class ``c`` scored 0…1 (its correctness,
    averaged over shared episodes), the same images in the same order for A and B. Each
    draw resamples the images of every class within the class, the same indices for A and
    B; the difference is the mean over classes of the per-class mean difference. ``p`` is
    the two-sided percentile p-value ``2 · min(P(d ≤ 0), P(d ≥ 0))``, at most 1.
    """
    if len(blocks_a) != len(blocks_b) or not blocks_a:
        raise FeatkitError("blocks_b: expected the same classes as blocks_a")
    differences = []
    for a, b in zip(blocks_a, blocks_b, strict=True):
        d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
        if d.ndim != 1 or d.size == 0:
            raise FeatkitError(f"blocks: expected 1-D non-empty class blocks, got {d.shape}")
        differences.append(d)
    counts = _class_resamples(tuple(d.size for d in differences), n_boot, seed)
    diffs = sum(times @ d / d.size for times, d in zip(counts, differences, strict=True))
    diffs = np.asarray(diffs) / len(differences)
    # Differences that cancel are ties, whatever order their floats were added in.
    diffs[np.abs(diffs) <= 1e-12] = 0.0
    observed = float(np.mean([d.mean() for d in differences]))
    p = 2.0 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0)))
    return observed, min(1.0, p)


# Two layouts: a table compares cells of one test set at a time, and each layout holds
# n_boot × N floats (160 MB for 10,000 test images at 2,000 draws).
@functools.lru_cache(maxsize=2)
def _class_resamples(sizes: tuple[int, ...], n_boot: int, seed: int) -> tuple[NDArray, ...]:
    """``[n_boot, n_c]`` per class: how often each draw takes each image of the class.

    The draws depend on the class sizes alone, so a table that compares many pairs of
    cells on one test set draws them once.
    """
    rng = np.random.default_rng(seed)
    counts = []
    for n in sizes:
        times = times_drawn(rng.integers(0, n, size=(n_boot, n)), n).astype(np.float64)
        times.setflags(write=False)  # shared between calls
        counts.append(times)
    return tuple(counts)


def times_drawn(picks: NDArray[np.int64], n: int) -> NDArray[np.int64]:
    """``[B, n]``: how often each row of ``picks [B, m]`` (indices below ``n``) takes each index."""
    rows = picks.shape[0]
    cells = (picks + (np.arange(rows) * n)[:, None]).ravel()
    return np.bincount(cells, minlength=rows * n).reshape(rows, n)
