"""Each protocol against an independent truth: hand formulas, scikit-learn, papers' rules."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import normalized_mutual_info_score
from threadpoolctl import threadpool_limits

from featkit.clustering import clustering_metrics
from featkit.errors import FeatkitError
from featkit.metrics import balanced_accuracy
from featkit.protocols import create_protocol, imbalance
from featkit_protocols.logistic import c_grid, selection_folds


def _blobs(
    sizes: list[int],
    dim: int,
    spread: float,
    seed: int = 0,
    offset: float = 3.0,
    noise_seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes; centres from ``seed``, noise from ``noise_seed`` (default: seed)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(sizes)), sizes)
    centres = rng.normal(size=(len(sizes), dim))
    if noise_seed is not None:
        rng = np.random.default_rng(noise_seed)
    X = centres[y] + spread * rng.normal(size=(y.size, dim)) + offset
    return X.astype(np.float32), y


# -- knn -------------------------------------------------------------------------------


def _dino_knn_by_hand(train, y_train, test, k, T, n_classes):
    """DINO eval_knn: cosine top-k, one-hot votes weighted by exp(sim / T), argmax."""
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = test / np.linalg.norm(test, axis=1, keepdims=True)
    sims = b.astype(np.float64) @ a.T.astype(np.float64)
    out = np.zeros((len(test), n_classes))
    for i, row in enumerate(sims):
        top = np.argsort(-row)[:k]
        for j in top:
            out[i, y_train[j]] += np.exp(row[j] / T)
    return out / out.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(("k", "T"), [(1, 0.07), (3, 0.07), (5, 0.5), (50, 0.1)])
def test_knn_equals_the_dino_weighted_vote(k: int, T: float) -> None:
    X, y = _blobs([8, 6, 5], dim=6, spread=1.5)
    test, train = X[::3], np.delete(X, np.s_[::3], axis=0)
    y_train = np.delete(y, np.s_[::3])
    model = create_protocol("knn", k=k, temperature=T).fit(train, y_train)
    expected = _dino_knn_by_hand(train, y_train, test, min(k, len(train)), T, 3)
    np.testing.assert_allclose(model.predict_proba(test), expected, rtol=1e-4, atol=1e-7)
    assert np.array_equal(model.predict(test), expected.argmax(axis=1))
    assert model.k_ == min(k, len(train))  # k = 50 is clipped to the 12 training images


def test_knn_sample_weights_multiply_votes() -> None:
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], np.float32)
    y = np.array([0, 1, 1])
    query = np.array([[1.0, 0.05]], np.float32)
    plain = create_protocol("knn", k=3, temperature=1.0).fit(train, y)
    weighted = create_protocol("knn", k=3, temperature=1.0).fit(
        train, y, sample_weight=[3.0, 1.0, 1.0]
    )
    p0 = plain.predict_proba(query)[0]
    p1 = weighted.predict_proba(query)[0]
    # class 0's vote triples: odds ratio class0:class1 is multiplied by 3
    assert (p1[0] / p1[1]) == pytest.approx(3 * p0[0] / p0[1], rel=1e-5)


# -- logistic --------------------------------------------------------------------------


@pytest.mark.parametrize(("C", "n", "dim"), [(0.01, 120, 8), (1.0, 120, 8), (0.5, 12, 40)])
def test_logistic_equals_sklearn_at_a_fixed_c(C: float, n: int, dim: int) -> None:
    """Same objective and optimum as scikit-learn (n < d exercises the exact projection)."""
    X, y = _blobs([n // 3] * 3, dim=dim, spread=2.0)
    ours = create_protocol("logistic", c=C, max_iter=2000, tol=1e-7, standardize=False)
    ours.fit(X, y)
    ref = LogisticRegression(C=C, max_iter=5000, tol=1e-10).fit(X.astype(np.float64), y)
    probe = _blobs([20, 20, 20], dim=dim, spread=2.5, noise_seed=1)[0]
    np.testing.assert_allclose(ours.predict_proba(probe), ref.predict_proba(probe), atol=2e-3)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=3e-3 * np.abs(ref.coef_).max())
    assert ours.selection_ == "fixed" and ours.C_ == C


def test_logistic_selection_rules_follow_the_class_sizes() -> None:
    X, y = _blobs([60, 50], dim=5, spread=1.0)
    model = create_protocol("logistic", n_c=7).fit(X, y)
    assert model.selection_ == "holdout" and model.C_ in c_grid(7)
    assert model.c_scores_.shape == (7,)
    small = np.concatenate([np.flatnonzero(y == 0)[:12], np.flatnonzero(y == 1)[:20]])
    assert create_protocol("logistic", n_c=7).fit(X[small], y[small]).selection_ == "5-fold"
    small = np.concatenate([np.flatnonzero(y == 0)[:4], np.flatnonzero(y == 1)[:3]])
    model = create_protocol("logistic", n_c=7).fit(X[small], y[small])
    assert model.selection_ == "3-fold"  # smallest class has 3 images
    one = np.concatenate([np.flatnonzero(y == 0)[:1], np.flatnonzero(y == 1)[:1]])
    model = create_protocol("logistic", fallback_c=2.0, standardize=False).fit(X[one], y[one])
    centred = X[one] - X[one].mean(axis=0)
    assert model.selection_ == "fallback"
    expected = 2.0 / np.mean(np.sum(centred.astype(np.float64) ** 2, axis=1))
    assert np.isclose(model.C_, expected)


def test_selection_folds_hold_out_within_classes() -> None:
    y = np.repeat([0, 1, 2], [400, 200, 60])
    (mask,) = selection_folds(y)
    assert np.bincount(y[mask]).tolist() == [40, 20, 6]
    folds = selection_folds(np.repeat([0, 1], [6, 3]))
    assert len(folds) == 3
    assert all(np.bincount(np.repeat([0, 1], [6, 3])[m]).tolist() == [2, 1] for m in folds)
    assert np.array_equal(np.sum(folds, axis=0), np.ones(9))  # each image held out once


@pytest.mark.parametrize("sizes", [[40, 30, 20], [120, 90, 60]])
def test_logistic_picks_the_c_scikit_learn_picks_on_the_same_folds(sizes: list[int]) -> None:
    """The warm-started path scores every C like independent per-C fits (CV and hold-out)."""
    X, y = _blobs(sizes, dim=10, spread=2.5)
    ours = create_protocol("logistic", n_c=9, max_iter=1000, tol=1e-6, standardize=False)
    ours.fit(X, y)
    folds = selection_folds(y)
    scores = np.zeros(9)
    with threadpool_limits(1):  # 45 tiny fits: threads only spin on a shared machine
        for held in folds:
            for i, c in enumerate(c_grid(9)):
                ref = LogisticRegression(C=c, max_iter=1000, tol=1e-8).fit(X[~held], y[~held])
                scores[i] += balanced_accuracy(y[held], ref.predict(X[held])) / len(folds)
    np.testing.assert_allclose(ours.c_scores_, scores, atol=1e-9)


# -- prototype -------------------------------------------------------------------------


def test_prototype_equals_cl2n_nearest_centroid_by_hand() -> None:
    X, y = _blobs([5, 4, 3], dim=4, spread=1.5)
    test = _blobs([3, 3, 3], dim=4, spread=1.5, noise_seed=2)[0]
    mean = X.mean(axis=0)
    z = (X - mean) / np.linalg.norm(X - mean, axis=1, keepdims=True)
    protos = np.stack([z[y == c].mean(axis=0) for c in range(3)])
    q = (test - mean) / np.linalg.norm(test - mean, axis=1, keepdims=True)
    d2 = ((q[:, None, :] - protos[None]) ** 2).sum(-1)
    model = create_protocol("prototype").fit(X, y)
    np.testing.assert_allclose(model.decision_function(test), -d2, atol=1e-5)
    assert np.array_equal(model.predict(test), d2.argmin(axis=1))


# -- kmeans ----------------------------------------------------------------------------


def test_kmeans_nmi_equals_sklearn_and_recovers_clear_clusters() -> None:
    from sklearn.cluster import KMeans

    X, y = _blobs([30, 25, 20, 15], dim=8, spread=0.15, offset=0.0)
    ours = create_protocol("kmeans", n_clusters=4).fit(X).predict(X)
    result = clustering_metrics(y, ours)
    assert result["nmi"] == pytest.approx(normalized_mutual_info_score(y, ours))
    normed = X / np.linalg.norm(X, axis=1, keepdims=True)
    theirs = KMeans(4, n_init=5, random_state=0).fit_predict(normed)
    assert result["nmi"] == pytest.approx(normalized_mutual_info_score(y, theirs))
    assert result["accuracy"] == 1.0


def test_kmeans_needs_a_cluster_count() -> None:
    with pytest.raises(FeatkitError, match="n_clusters"):
        create_protocol("kmeans").fit(np.ones((5, 3), np.float32))
    with pytest.raises(FeatkitError, match="n_clusters"):
        create_protocol("kmeans", n_clusters=9).fit(np.eye(5, 3, dtype=np.float32))


# -- balanced and the imbalance maths --------------------------------------------------


def test_effective_number_and_weights_by_hand() -> None:
    counts = [1, 10, 100]
    beta = 0.9
    expected = [(1 - beta**n) / (1 - beta) for n in counts]
    np.testing.assert_allclose(imbalance.effective_number(counts, beta), expected)
    w = imbalance.class_balanced_weights(counts, beta)
    np.testing.assert_allclose(w, (1 / np.array(expected)) * 3 / np.sum(1 / np.array(expected)))
    np.testing.assert_allclose(imbalance.class_balanced_weights(counts, 0.0), [1, 1, 1])
    inverse = 1 / np.array(counts, float)
    np.testing.assert_allclose(
        imbalance.class_balanced_weights(counts, 1.0), inverse * 3 / inverse.sum()
    )
    assert imbalance.class_balanced_weights([0, 5, 5], 0.99).tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(FeatkitError, match="beta"):
        imbalance.effective_number(counts, 1.5)


def test_logit_adjustment_by_hand() -> None:
    logits = np.array([[2.0, 1.0, 0.0]])
    priors = imbalance.class_priors([6, 3, 1])
    adjusted = imbalance.adjust_logits(logits, priors, tau=1.0)
    np.testing.assert_allclose(adjusted, logits - np.log([0.6, 0.3, 0.1]))
    np.testing.assert_allclose(imbalance.adjust_logits(logits, priors, tau=0.0), logits)
    # a class without images takes the rarest seen class's prior, not log 0
    offsets = imbalance.log_prior_offsets([0.5, 0.5, 0.0])
    assert np.isfinite(offsets).all() and offsets[2] == offsets[0]


def test_balanced_beats_plain_logistic_on_an_imbalanced_set() -> None:
    X, y = _blobs([400, 40, 12], dim=6, spread=1.6, seed=3)
    X_test, y_test = _blobs([100, 100, 100], dim=6, spread=1.6, seed=3, noise_seed=11)
    plain = create_protocol("logistic", n_c=9).fit(X, y)
    balanced = create_protocol("balanced", base_params={"n_c": 9}).fit(X, y)
    score_plain = balanced_accuracy(y_test, plain.predict(X_test))
    score_balanced = balanced_accuracy(y_test, balanced.predict(X_test))
    assert score_balanced > score_plain + 0.03, (score_plain, score_balanced)


def test_balanced_adjusts_by_the_weighted_prior() -> None:
    X, y = _blobs([40, 10], dim=3, spread=1.0)
    model = create_protocol("balanced", base="knn", beta=0.0, tau=1.0).fit(X, y)
    # β = 0: no reweighting, so the adjustment uses the plain prior (Menon et al.)
    np.testing.assert_allclose(model.weighted_prior_, [0.8, 0.2])
    expected = model.estimator_.decision_function(X) - np.log([0.8, 0.2])
    np.testing.assert_allclose(model.decision_function(X), expected, atol=1e-6)
    with pytest.raises(FeatkitError, match="balanced base"):
        create_protocol("balanced", base="prototype").fit(X, y)


def test_balanced_scores_c_with_the_logit_adjustment_applied() -> None:
    """Each C's held-out score is that of fixed-C fits predicting with −τ·log π̃."""
    X, y = _blobs([60, 25, 12], dim=4, spread=2.0, seed=5)
    model = create_protocol("balanced", beta=0.0, tau=1.0, base_params={"n_c": 5}).fit(X, y)
    prior = np.bincount(y) / y.size  # β = 0: no reweighting, the plain prior
    folds = selection_folds(y)
    expected, unadjusted = np.zeros(5), np.zeros(5)
    for held in folds:
        for i, c in enumerate(c_grid(5)):
            fit = create_protocol("logistic", c=float(c)).fit(X[~held], y[~held])
            logits = fit.decision_function(X[held])
            adjusted = np.argmax(logits - np.log(prior), axis=1)
            expected[i] += balanced_accuracy(y[held], adjusted) / len(folds)
            unadjusted[i] += balanced_accuracy(y[held], logits.argmax(1)) / len(folds)
    # At C = 1e-6 the weights are ~0 and the adjusted logits tie up to the solver's
    # tolerance: which class wins there is rounding, so that point is not compared.
    np.testing.assert_allclose(model.estimator_.c_scores_[1:], expected[1:], atol=0.02)
    assert np.abs(expected - unadjusted).max() > 0.05  # the adjustment changes the choice data
    assert model.fitted_params_["prior_ratio"] == pytest.approx(60 / 12)
    assert model.fitted_params_["C"] == model.estimator_.C_
