"""Weighted k-nearest-neighbour classification, the DINO evaluation rule.

Features are L2-normalised; each test image takes its ``k`` most cosine-similar
training images (``k`` clipped to the training size) and each neighbour votes for its
class with weight ``exp(sim / T)``. Defaults ``k = 20``, ``T = 0.07`` as in DINO's
``eval_knn.py`` and DINOv2/v3's ``eval/knn.py``. Neighbours come from
:class:`featkit.neighbors.search.NeighborIndex`: exact faiss inner-product search at every
size, queried in blocks (memory ``q × k``, never train × test). An approximate index
(``index="ivf"`` or ``"hnsw"``) is used only when asked for; its recall@k against
exact search, measured at fit time on up to :data:`RECALL_QUERIES` training rows used
as queries, is recorded in ``fitted_params_``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from featkit.errors import FeatkitError
from featkit.protocols.base import Protocol, l2_normalize, threads_for

#: Training rows used as queries to measure an approximate index's recall at fit time.
RECALL_QUERIES = 1000


def weighted_votes(
    sims: NDArray[np.floating],
    neighbour_classes: NDArray[np.int64],
    n_classes: int,
    temperature: float,
    neighbour_weights: NDArray[np.floating] | None = None,
) -> NDArray[np.float64]:
    """Class probabilities ``[q, C]`` from neighbour similarities and classes ``[q, k]``.

    ``p_c ∝ Σ_{j ∈ top-k, y_j = c} w_j · exp(s_j / T)``. The exponent is shifted by the
    largest possible cosine (1), a common factor that cancels in the normalisation and
    keeps ``exp`` finite for small ``T``.
    """
    votes = np.exp((sims.astype(np.float64) - 1.0) / temperature)
    if neighbour_weights is not None:
        votes = votes * neighbour_weights
    q = sims.shape[0]
    flat = (np.arange(q)[:, None] * n_classes + neighbour_classes).ravel()
    table = np.bincount(flat, weights=votes.ravel(), minlength=q * n_classes)
    table = table.reshape(q, n_classes)
    total = table.sum(axis=1, keepdims=True)
    # A row whose votes all underflow (every neighbour far below the best cosine) gets
    # uniform probabilities rather than 0/0.
    return np.divide(table, total, out=np.full_like(table, 1.0 / n_classes), where=total > 0)


class KNN(Protocol):
    """k-NN with exp(sim/T)-weighted votes on L2-normalised features."""

    default = True  # part of the default sweep
    display_order = 10

    supports_sample_weight = True  # a neighbour's vote is multiplied by its weight

    def __init__(self, k: int = 20, temperature: float = 0.07, index: str = "auto") -> None:
        self.k = k  # neighbours per query; clipped to the number of training images
        self.temperature = temperature  # T in exp(sim / T); smaller = closer neighbours count more
        # NeighborIndex kind: "auto" = "exact" (faiss IndexFlatIP) at every size; "ivf", "hnsw"
        self.index = index

    def fit(
        self, X: ArrayLike, y: ArrayLike | None = None, sample_weight: ArrayLike | None = None
    ) -> KNN:
        if y is None:
            raise FeatkitError("knn labels: expected training labels, got None")
        if not (isinstance(self.k, int | np.integer) and self.k >= 1):
            raise FeatkitError(f"knn k: expected an integer ≥ 1, got {self.k!r}")
        if not self.temperature > 0:
            raise FeatkitError(f"knn temperature: expected a value > 0, got {self.temperature}")
        features, labels, weights = self._check_Xy(X, y, sample_weight)
        self.classes_, self.train_classes_ = np.unique(labels, return_inverse=True)
        self.train_features_ = l2_normalize(features)
        self.train_weights_ = weights
        self.k_ = int(min(self.k, features.shape[0]))
        self._build()
        return self

    def _build(self) -> None:
        from featkit.neighbors.search import NeighborIndex

        with threads_for(self.train_features_.size):
            self._index = NeighborIndex(kind=self.index).fit(self.train_features_)
            if self._index.kind_ != "exact" and not hasattr(self, "recall_"):
                self.recall_ = self._measured_recall()

    def _measured_recall(self) -> float:
        """recall@k of the approximate index against exact search on spread training rows."""
        import faiss

        from featkit.neighbors.recall import recall_at_k

        n = self.train_features_.shape[0]
        queries = self.train_features_[np.linspace(0, n - 1, min(n, RECALL_QUERIES)).astype(int)]
        _, exact = faiss.knn(queries, self.train_features_, self.k_, faiss.METRIC_INNER_PRODUCT)
        _, approx = self._index.search(queries, self.k_)
        return recall_at_k(approx, exact)

    @property
    def fitted_params_(self) -> dict[str, Any]:
        """The index kind searched, ``k`` after clipping, and an approximate index's recall."""
        params: dict[str, Any] = {"index_kind": self._index_kind(), "k_used": self.k_}
        if hasattr(self, "recall_"):
            params["recall_at_k"] = self.recall_
        return params

    def _index_kind(self) -> str:
        from featkit.neighbors.search import resolve_kind

        return resolve_kind(self.index, self.train_features_.shape[0])

    def __getstate__(self) -> dict[str, Any]:
        # A faiss index does not pickle; it is rebuilt from the stored features.
        state = self.__dict__.copy()
        state.pop("_index", None)
        return state

    def predict_proba(self, X: ArrayLike) -> NDArray[np.float64]:
        """``[N, C]`` normalised weighted votes, columns in ``classes_`` order."""
        queries = l2_normalize(self._check_X(X))
        if not hasattr(self, "_index"):
            self._build()
        with threads_for(self.train_features_.size + queries.size):
            sims, idx = self._index.search(queries, self.k_)
        valid = idx >= 0  # approximate indexes may return fewer than k neighbours
        safe = np.where(valid, idx, 0)
        weights = valid.astype(np.float64)
        if self.train_weights_ is not None:
            weights = weights * self.train_weights_[safe]
        sims = np.where(valid, sims, 0.0)
        return weighted_votes(
            sims, self.train_classes_[safe], self.classes_.size, self.temperature, weights
        )

    def decision_function(self, X: ArrayLike) -> NDArray[np.float64]:
        """Log vote shares ``[N, C]`` (floored at 1e-12): logits for logit adjustment."""
        return np.log(np.maximum(self.predict_proba(X), 1e-12))

    def predict(self, X: ArrayLike) -> NDArray[np.int64]:
        scores = self.predict_proba(X)  # checks X and fit first
        return self.classes_[np.argmax(scores, axis=1)]
