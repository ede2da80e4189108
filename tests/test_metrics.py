"""Metrics against scikit-learn and hand computations; statistics over episodes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as sk

from featkit import clustering, metrics
from featkit.errors import FeatkitError


@pytest.fixture
def predictions() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, 300)
    # Mostly right, some noise, and a class (5) that only appears among predictions.
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 6, 300))
    return y_true, y_pred


@pytest.mark.filterwarnings("ignore:y_pred contains classes")
def test_classification_metrics_match_sklearn(predictions: tuple[np.ndarray, np.ndarray]) -> None:
    y_true, y_pred = predictions
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(sk.accuracy_score(y_true, y_pred))
    assert metrics.balanced_accuracy(y_true, y_pred) == pytest.approx(
        sk.balanced_accuracy_score(y_true, y_pred)
    )
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx(
        sk.f1_score(y_true, y_pred, average="macro", zero_division=0)
    )
    labels = [3, 1, 0, 2, 4, 5]
    assert np.array_equal(
        metrics.confusion_counts(y_true, y_pred, labels),
        sk.confusion_matrix(y_true, y_pred, labels=labels),
    )


def test_per_class_recall_matches_sklearn_and_is_nan_without_test_images(
    predictions: tuple[np.ndarray, np.ndarray],
) -> None:
    y_true, y_pred = predictions
    recall = metrics.per_class_recall(y_true, y_pred, [0, 1, 2, 3, 4, 9])
    expected = sk.recall_score(y_true, y_pred, labels=[0, 1, 2, 3, 4], average=None)
    np.testing.assert_allclose(recall[:5], expected)
    assert math.isnan(recall[5])


def test_hand_computed_small_case() -> None:
    y_true = [0, 0, 0, 1]
    y_pred = [0, 0, 1, 1]
    assert metrics.accuracy(y_true, y_pred) == 0.75
    assert metrics.balanced_accuracy(y_true, y_pred) == pytest.approx((2 / 3 + 1) / 2)
    # F1(0) = 2·2/(2·2+0+1) = 0.8, F1(1) = 2·1/(2·1+1+0) = 2/3
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx((0.8 + 2 / 3) / 2)


def test_macro_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 200)
    scores = rng.random((200, 4))
    scores[np.arange(200), y] += 0.4
    proba = np.round(scores / scores.sum(1, keepdims=True), 2)  # rounding makes ties
    # one-vs-rest per class, averaged: what roc_auc_score(multi_class="ovr") does
    expected = np.mean([sk.roc_auc_score(y == c, proba[:, c]) for c in range(4)])
    exact = scores / scores.sum(1, keepdims=True)
    assert metrics.macro_auroc(y, exact, [0, 1, 2, 3]) == pytest.approx(
        sk.roc_auc_score(y, exact, multi_class="ovr", average="macro")
    )
    assert metrics.macro_auroc(y, proba, [0, 1, 2, 3]) == pytest.approx(expected)


def test_macro_auroc_is_undefined_when_a_class_is_missing() -> None:
    y = np.array([0, 1, 1, 0])
    scores = np.full((4, 3), 1 / 3)
    assert metrics.macro_auroc(y, scores, [0, 1, 2]) is None
    assert "macro_auroc" not in metrics.classification_metrics(y, y, scores, [0, 1, 2])
    with pytest.raises(FeatkitError, match="scores: expected shape"):
        metrics.macro_auroc(y, scores[:, :2], [0, 1, 2])


def test_clustering_metrics_use_a_hungarian_match() -> None:
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    clusters = np.array([5, 5, 3, 3, 3, 7, 7, 7])  # ids are arbitrary
    result = clustering.clustering_metrics(y, clusters)
    # best one-to-one match: 5→0, 3→1, 7→2 gives 7 of 8 right
    assert result["accuracy"] == pytest.approx(7 / 8)
    assert result["nmi"] == pytest.approx(sk.normalized_mutual_info_score(y, clusters))
    assert result["ari"] == pytest.approx(sk.adjusted_rand_score(y, clusters))
    perm = clustering.clustering_metrics(y, (y + 1) % 3)
    assert perm["accuracy"] == perm["balanced_accuracy"] == perm["nmi"] == 1.0
    # more clusters than classes: the unmatched cluster counts as wrong
    assert clustering.match_clusters([0, 0, 1, 1], [0, 2, 1, 1]).tolist() == [0, -1, 1, 1]


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (4, 6), (6, 4), (10, 10), (12, 30), (30, 7)])
def test_best_matching_equals_scipy(shape: tuple[int, int]) -> None:
    """Same total weight as scipy's linear_sum_assignment (ties may pick other pairs),
    on count tables with many ties and on real-valued matrices."""
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(sum(shape))
    for weights in (rng.integers(0, 4, size=shape), rng.normal(size=shape)):
        rows, cols = clustering.best_matching(weights)
        ref_rows, ref_cols = linear_sum_assignment(weights, maximize=True)
        assert rows.size == min(shape) and np.unique(rows).size == np.unique(cols).size == rows.size
        assert np.all(np.diff(rows) > 0)
        assert weights[rows, cols].sum() == pytest.approx(weights[ref_rows, ref_cols].sum())


def test_large_matchings_are_left_to_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above SMALL_MATCHING classes scipy matches (fast there); the relabelling is the
    same one-to-one rule either way."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, size=200)
    clusters = np.where(rng.random(200) < 0.8, (y + 2) % 5, rng.integers(0, 5, size=200))
    here = clustering.match_clusters(y, clusters)
    monkeypatch.setattr(clustering, "SMALL_MATCHING", 1)
    assert (clustering.match_clusters(y, clusters) == y).sum() == (here == y).sum()


def test_best_matching_is_the_best_permutation() -> None:
    """Against every one-to-one matching of small matrices (independent of scipy)."""
    import itertools

    rng = np.random.default_rng(7)
    for _ in range(20):
        n, m = (int(v) for v in rng.integers(1, 6, size=2))
        weights = rng.integers(0, 9, size=(n, m)).astype(float)
        rows, cols = clustering.best_matching(weights)
        wide = weights if n <= m else weights.T  # every row matched, to some column
        k, width = wide.shape
        best = max(
            wide[np.arange(k), list(p)].sum() for p in itertools.permutations(range(width), k)
        )
        assert weights[rows, cols].sum() == best


def test_summary_uses_a_student_t_interval() -> None:
    s = metrics.summarize([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t_{0.975, 2} · s / √n
    assert (s.mean, s.std, s.n_episodes) == (2.0, 1.0, 3)
    assert s.ci95_low == pytest.approx(2 - half) and s.ci95_high == pytest.approx(2 + half)


def test_one_episode_has_zero_spread_and_a_degenerate_interval() -> None:
    s = metrics.summarize([0.7])
    assert (s.mean, s.std, s.ci95_low, s.ci95_high, s.n_episodes) == (0.7, 0.0, 0.7, 0.7, 1)
    assert metrics.summarize([]).n_episodes == 0


def test_bad_label_arrays_are_errors() -> None:
    with pytest.raises(FeatkitError, match="1-D"):
        metrics.accuracy(np.zeros((2, 2)), [0, 1])
    with pytest.raises(FeatkitError, match="expected 3 labels"):
        metrics.accuracy([0, 1, 2], [0, 1])


def test_mid_ranks_equal_scipy_rankdata_with_ties() -> None:
    from scipy.stats import rankdata

    rng = np.random.default_rng(3)
    for size in (1, 2, 7, 100):
        for columns in (1, 5):
            values = rng.integers(0, 4, (size, columns)).astype(np.float64)  # many ties
            np.testing.assert_array_equal(metrics._mid_ranks(values), rankdata(values, axis=0))
            values = rng.normal(size=(size, columns))
            np.testing.assert_array_equal(metrics._mid_ranks(values), rankdata(values, axis=0))


def test_nmi_and_ari_equal_sklearn() -> None:
    rng = np.random.default_rng(5)
    cases = [
        (np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0])),  # the same partition
        (np.array([0, 0, 0]), np.array([2, 2, 2])),  # one class, one cluster
        (np.array([0, 1, 2, 3]), np.array([0, 0, 0, 0])),  # one cluster
        (np.array([0, 0, 1, 1]), np.array([0, 1, 2, 3])),  # every image its own cluster
    ]
    cases += [(rng.integers(0, 5, 60), rng.integers(0, 7, 60)) for _ in range(20)]
    y = rng.integers(0, 4, 200)
    cases.append((y, np.where(rng.random(200) < 0.8, y, rng.integers(0, 4, 200))))
    for t, c in cases:
        assert clustering.adjusted_rand_index(t, c) == pytest.approx(
            sk.adjusted_rand_score(t, c), abs=1e-12
        )
        assert clustering.normalized_mutual_information(t, c) == pytest.approx(
            sk.normalized_mutual_info_score(t, c), abs=1e-12
        )


@pytest.mark.parametrize("coverage", [0.95, 0.9, 0.99])
def test_student_t_quantile_equals_scipy(coverage: float) -> None:
    """The closed-form quantile against scipy.stats.t.ppf, odd and even df, small and large."""
    from scipy.stats import t

    for df in [*range(1, 41), 99, 100, 1000, 4001]:
        expected = t.ppf(0.5 + coverage / 2, df)
        assert metrics.student_t_quantile(df, coverage) == pytest.approx(expected, rel=1e-12), df


def test_summarize_interval_is_the_t_interval() -> None:
    """Hand check: values 1, 2, 3, 4 -> mean 2.5, std 1.29099, t(3) = 3.182446305284263."""
    summary = metrics.summarize([1.0, 2.0, 3.0, 4.0])
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert summary.ci95_low == pytest.approx(2.5 - half, rel=1e-12)
    assert summary.ci95_high == pytest.approx(2.5 + half, rel=1e-12)
    with pytest.raises(ValueError, match="degrees of freedom"):
        metrics.student_t_quantile(0)
