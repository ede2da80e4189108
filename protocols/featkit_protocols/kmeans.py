"""Label-free clustering: k-means on L2-normalised features (shots = 0).

``k`` defaults to the number of classes of the data being scored (the evaluation sets
it); the clusters are scored against the labels after a one-to-one Hungarian matching
(accuracy, balanced accuracy, macro-F1) and with NMI and ARI, which need no matching.
Spherical k-means from faiss, ``n_init`` restarts, the lowest objective kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from featkit.errors import FeatkitError
from featkit.protocols.base import Protocol, l2_normalize, threads_for


class KMeans(Protocol):
    """Spherical k-means; ``predict`` returns cluster ids ``0 … k−1``."""

    default = True  # part of the default sweep
    display_order = 50
    seed_param = "seed"  # the evaluation seeds each episode's restarts
    n_classes_param = "n_clusters"  # None = the number of test classes

    supervised = False

    def __init__(
        self, n_clusters: int | None = None, n_init: int = 3, max_iter: int = 50, seed: int = 0
    ) -> None:
        self.n_clusters = n_clusters  # k; None = the number of classes (set by the evaluation)
        self.n_init = n_init  # restarts; the lowest k-means objective wins
        self.max_iter = max_iter  # Lloyd iterations per restart
        self.seed = seed  # initialisation seed (the evaluation varies it per episode)

    def fit(self, X: ArrayLike, y: ArrayLike | None = None) -> KMeans:
        import faiss

        for setting in ("n_init", "max_iter"):
            value = getattr(self, setting)
            if not (isinstance(value, int | np.integer) and value >= 1):
                raise FeatkitError(f"kmeans {setting}: expected an integer ≥ 1, got {value!r}")
        features = l2_normalize(self._check_X(X, fitting=True))
        k = self.n_clusters
        if k is None and y is not None:
            k = int(np.unique(np.asarray(y)).size)
        if k is None or not 2 <= k <= features.shape[0]:
            raise FeatkitError(
                f"kmeans n_clusters: expected 2 … {features.shape[0]} (the rows), got {k}"
            )
        self.n_features_in_ = features.shape[1]
        settings: dict[str, Any] = {
            "niter": self.max_iter,
            "nredo": self.n_init,
            "seed": self.seed,
            "spherical": True,
            "verbose": False,
            # No subsampling, and no stderr warning about few points per centroid.
            "min_points_per_centroid": 1,
            "max_points_per_centroid": 1 << 30,
        }
        kmeans = faiss.Kmeans(features.shape[1], k, **settings)
        with threads_for(features.size):
            kmeans.train(features)
        self.cluster_centers_ = np.asarray(kmeans.centroids, dtype=np.float32)
        self.classes_ = np.arange(k, dtype=np.int64)
        self.labels_ = self.predict(features)
        return self

    def predict(self, X: ArrayLike) -> NDArray[np.int64]:
        features = l2_normalize(self._check_X(X))
        similarity = features @ self.cluster_centers_.T
        return np.argmax(similarity, axis=1).astype(np.int64)
