"""Training losses for small, imbalanced sets: plain, class-balanced, logit-adjusted.

Built from the per-class training counts of one episode. The class weights and prior
offsets are :mod:`featkit.protocols.imbalance`'s, shared with the ``balanced`` probe, so a tuned
model and a probe correct for imbalance with the same numbers. References: Cui et al.
2019 (effective number of samples); Menon et al. 2021 (logit adjustment).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from featkit.errors import FeatkitError
from featkit.protocols.imbalance import (
    DEFAULT_BETA,
    DEFAULT_TAU,
    class_balanced_weights,
    class_priors,
    log_prior_offsets,
)

LossFn = Callable[[Tensor, Tensor], Tensor]  # (logits [B, C], targets [B]) -> scalar
LOSSES = ("ce", "class-balanced", "logit-adjusted")


def check_loss(name: str) -> str:
    if name not in LOSSES:
        raise FeatkitError(f"loss {name!r} is not known; expected one of {', '.join(LOSSES)}")
    return name


def make_loss(
    name: str, counts: np.ndarray, *, beta: float = DEFAULT_BETA, tau: float = DEFAULT_TAU
) -> LossFn:
    """The loss ``name`` for a training set with ``counts[c]`` images of class ``c``."""
    check_loss(name)
    if name == "class-balanced":
        weight = torch.as_tensor(class_balanced_weights(counts, beta), dtype=torch.float32)

        def balanced(logits: Tensor, targets: Tensor) -> Tensor:
            # cross_entropy divides by the batch's summed weights: a weighted mean.
            return F.cross_entropy(logits.float(), targets, weight=weight.to(logits.device))

        return balanced
    if name == "logit-adjusted":
        offsets = log_prior_offsets(class_priors(counts), tau)
        shift = torch.as_tensor(offsets, dtype=torch.float32)

        def adjusted(logits: Tensor, targets: Tensor) -> Tensor:
            # Training on f + τ·log π makes the plain argmax at test time the
            # balanced-error rule, so prediction needs no correction.
            return F.cross_entropy(logits.float() + shift.to(logits.device), targets)

        return adjusted
    return lambda logits, targets: F.cross_entropy(logits.float(), targets)
