"""Nearest class mean with SimpleShot's CL2N normalisation.

SimpleShot (Wang et al., "SimpleShot: Revisiting Nearest-Neighbor Classification for
Few-Shot Learning", 2019): centre every feature with the mean of the training features,
L2-normalise it (CL2N), average the normalised training features of each class into a
prototype, and assign a test image to the prototype at the smallest Euclidean distance.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from featkit.errors import FeatkitError
from featkit.protocols.base import Protocol, l2_normalize, softmax


class Prototype(Protocol):
    """CL2N nearest centroid; ``predict_proba`` is a softmax over −distance² / T."""

    default = True  # part of the default sweep
    display_order = 30

    def __init__(self, temperature: float = 0.1) -> None:
        # Only shapes predict_proba (and AUROC ties); predictions are the nearest prototype.
        self.temperature = temperature

    def _cl2n(self, X: NDArray[np.float32]) -> NDArray[np.float32]:
        return l2_normalize(X - self.mean_)

    def fit(self, X: ArrayLike, y: ArrayLike | None = None) -> Prototype:
        if y is None:
            raise FeatkitError("prototype labels: expected training labels, got None")
        if not self.temperature > 0:
            raise FeatkitError(f"prototype temperature: expected > 0, got {self.temperature}")
        features, labels, _ = self._check_Xy(X, y)
        self.mean_ = features.mean(axis=0, dtype=np.float64).astype(np.float32)
        normalised = self._cl2n(features)
        self.classes_, inverse = np.unique(labels, return_inverse=True)
        sums = np.zeros((self.classes_.size, features.shape[1]), dtype=np.float64)
        np.add.at(sums, inverse, normalised)
        self.prototypes_ = (sums / np.bincount(inverse)[:, None]).astype(np.float32)
        return self

    def decision_function(self, X: ArrayLike) -> NDArray[np.float64]:
        """``−‖x̂ − p_c‖²`` per class, ``[N, C]`` (higher = closer)."""
        z = self._cl2n(self._check_X(X)).astype(np.float64)
        p = self.prototypes_.astype(np.float64)
        # ‖z − p‖² = ‖z‖² − 2 z·p + ‖p‖², without an [N, C, D] tensor.
        d2 = (z * z).sum(1, keepdims=True) - 2.0 * z @ p.T + (p * p).sum(1)[None, :]
        return -np.maximum(d2, 0.0)

    def predict_proba(self, X: ArrayLike) -> NDArray[np.float64]:
        return softmax(self.decision_function(X) / self.temperature)

    def predict(self, X: ArrayLike) -> NDArray[np.int64]:
        scores = self.decision_function(X)  # checks X and fit first
        return self.classes_[np.argmax(scores, axis=1)]
