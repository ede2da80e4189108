"""Nearest class mean by cosine similarity: a complete featkit protocol plugin.

Each class is the mean of its L2-normalised training features; a test image goes to
the class whose mean direction is closest in angle. Unlike featkit's ``prototype``
(SimpleShot's CL2N), nothing is centred, so the rule depends only on directions from
the origin. Installed, it runs as ``featkit probe --protocols nearest-mean``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from featkit.errors import FeatkitError
from featkit.protocols.base import Protocol, l2_normalize, softmax


class NearestMean(Protocol):
    """Cosine nearest class mean; ``predict_proba`` is a softmax over cosine / T."""

    # Not part of the default sweep: it runs when named. In tables it sits between
    # featkit's prototype (30) and balanced (40), the protocols it is compared with.
    default = False
    display_order = 35

    def __init__(self, temperature: float = 0.1) -> None:
        self.temperature = temperature  # shapes predict_proba only, not the predictions

    def fit(self, X: ArrayLike, y: ArrayLike | None = None) -> NearestMean:
        if y is None:
            raise FeatkitError("nearest-mean labels: expected training labels, got None")
        if not self.temperature > 0:
            raise FeatkitError(f"nearest-mean temperature: expected > 0, got {self.temperature}")
        features, labels, _ = self._check_Xy(X, y)
        self.classes_, inverse = np.unique(labels, return_inverse=True)
        sums = np.zeros((self.classes_.size, features.shape[1]), dtype=np.float64)
        np.add.at(sums, inverse, l2_normalize(features))
        self.means_ = l2_normalize(sums.astype(np.float32))
        return self

    def decision_function(self, X: ArrayLike) -> NDArray[np.float64]:
        """Cosine similarity to each class mean, ``[N, C]``."""
        return l2_normalize(self._check_X(X)).astype(np.float64) @ self.means_.T.astype(np.float64)

    def predict_proba(self, X: ArrayLike) -> NDArray[np.float64]:
        return softmax(self.decision_function(X) / self.temperature)

    def predict(self, X: ArrayLike) -> NDArray[np.int64]:
        scores = self.decision_function(X)  # checks X and fit before classes_ is read
        return self.classes_[np.argmax(scores, axis=1)]
