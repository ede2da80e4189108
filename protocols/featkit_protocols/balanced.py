"""Class-balanced reweighting around another protocol (a meta-estimator).

Training: every image is weighted by its class's class-balanced weight ``∝ 1/E_n``
(Cui et al. 2019, ``E_n = (1 − βⁿ)/(1 − β)``), passed to the wrapped protocol as
``sample_weight``. Prediction: post-hoc logit adjustment (Menon et al. 2021),
``argmax_y f_y(x) − τ·log π̃_y``, where ``π̃`` is the class prior the wrapped model
actually saw, the *weighted* training prior ``π̃_y ∝ n_y·w_y``. With ``β = 0`` (no
reweighting) this is Menon's rule with the plain prior; with ``β → 1`` the weighted
prior is uniform and only the reweighting acts. Adjusting by the plain prior after
reweighting would correct the imbalance twice. A base that chooses a setting on
held-out data (``logistic``'s C) scores it with the adjustment applied.

What the defaults (``β = 0.999``, ``τ = 1``) do: a class of ``n`` images weighs
``1/E_n``, close to ``1/n`` while ``n ≪ 1/(1 − β) = 1000``, so the weighted prior is
nearly uniform and the adjustment nearly inert (classes of 300 and 10 images: prior
ratio 1.15, a shift of 0.14 in the logits); the correction is the reweighting. At few
shots every class has the same count and ``balanced`` equals its base.

The wrapped protocol must accept ``sample_weight`` and expose logits through
``decision_function`` (``logistic``, ``knn``).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from featkit.errors import FeatkitError
from featkit.protocols.base import Protocol, softmax
from featkit.protocols.imbalance import (
    DEFAULT_BETA,
    DEFAULT_TAU,
    adjust_logits,
    class_balanced_weights,
    log_prior_offsets,
)
from featkit.protocols.registry import create_protocol, get_protocol_class


class Balanced(Protocol):
    """Effective-number class weights + post-hoc logit adjustment around ``base``."""

    default = True  # part of the default sweep
    display_order = 40

    def __init__(
        self,
        base: str = "logistic",
        beta: float = DEFAULT_BETA,
        tau: float = DEFAULT_TAU,
        base_params: dict[str, Any] | None = None,
    ) -> None:
        self.base = base  # registered name of the wrapped protocol
        self.beta = beta  # effective-number β in [0, 1): 0 = no reweighting, → 1 = 1/n
        self.tau = tau  # logit-adjustment strength τ ≥ 0 (0 = none)
        self.base_params = base_params  # settings of the wrapped protocol

    def reuses(self, y: ArrayLike) -> tuple[str, dict[str, Any]] | None:
        """The base with its settings when every class has as many images (a few-shot
        episode): the weights are then all equal and the adjustment the same for every
        class, so this protocol predicts what its base predicts."""
        counts = np.unique(np.asarray(y), return_counts=True)[1]
        if counts.size and counts.min() == counts.max():
            return self.base, dict(self.base_params or {})
        return None

    def adopt(self, fitted: Protocol, X: ArrayLike, y: ArrayLike) -> Balanced:
        self._check_settings()
        _, labels, _ = self._check_Xy(X, y)
        self._weigh(labels)
        self.estimator_ = fitted
        return self

    def _weigh(self, labels: NDArray[np.int64]) -> NDArray[np.int64]:
        """Class weights and the weighted prior of ``labels``; returns the class index of each."""
        self.classes_, inverse = np.unique(labels, return_inverse=True)
        counts = np.bincount(inverse)
        self.class_weights_ = class_balanced_weights(counts, self.beta)
        weighted = counts * self.class_weights_
        self.weighted_prior_ = weighted / weighted.sum()
        return inverse

    def fit(self, X: ArrayLike, y: ArrayLike | None = None) -> Balanced:
        if y is None:
            raise FeatkitError("balanced labels: expected training labels, got None")
        self._check_settings()
        features, labels, _ = self._check_Xy(X, y)
        inverse = self._weigh(labels)
        self.estimator_ = create_protocol(self.base, **(self.base_params or {}))
        fit_settings: dict[str, Any] = {"sample_weight": self.class_weights_[inverse]}
        if "selection_offsets" in inspect.signature(self.estimator_.fit).parameters:
            # Choose the base's settings (logistic's C) for the adjusted predictions this
            # protocol makes, not for the unadjusted logits it never predicts with.
            fit_settings["selection_offsets"] = log_prior_offsets(self.weighted_prior_, self.tau)
        self.estimator_.fit(features, labels, **fit_settings)  # type: ignore[call-arg]
        return self

    def _check_settings(self) -> None:
        if not 0.0 <= self.beta < 1.0:
            raise FeatkitError(f"balanced beta: expected a value in [0, 1), got {self.beta}")
        if not self.tau >= 0.0:
            raise FeatkitError(f"balanced tau: expected a value ≥ 0, got {self.tau}")
        cls = get_protocol_class(self.base)
        if cls is Balanced or not cls.supports_sample_weight or not cls.supervised:
            raise FeatkitError(
                f"balanced base: expected a supervised protocol that takes sample weights "
                f"(logistic, knn), got {self.base!r}"
            )

    @property
    def fitted_params_(self) -> dict[str, Any]:
        """The base's choices plus the strength of the adjustment actually applied.

        ``prior_ratio`` is the largest over the smallest weighted prior: the adjustment
        moves a logit by at most ``τ·log(prior_ratio)``. With ``β`` close to 1 and classes
        of under ``1/(1 − β)`` images it is close to 1: the adjustment barely acts.
        """
        params = dict(self.estimator_.fitted_params_)
        params["prior_ratio"] = float(self.weighted_prior_.max() / self.weighted_prior_.min())
        return params

    def decision_function(self, X: ArrayLike) -> NDArray[np.float64]:
        """Adjusted logits ``[N, C]``: the wrapped model's logits − τ·log π̃."""
        features = self._check_X(X)
        logits = np.asarray(self.estimator_.decision_function(features), dtype=np.float64)  # type: ignore[attr-defined]
        return adjust_logits(logits, self.weighted_prior_, self.tau)

    def predict_proba(self, X: ArrayLike) -> NDArray[np.float64]:
        return softmax(self.decision_function(X))

    def predict(self, X: ArrayLike) -> NDArray[np.int64]:
        scores = self.decision_function(X)  # checks X and fit first
        return self.classes_[np.argmax(scores, axis=1)]
