"""Class-imbalance corrections as small pure functions.

Two complementary tools, shared by the ``balanced`` protocol and by fine-tuning:

* **Class-balanced weights** (Cui et al., "Class-Balanced Loss Based on Effective
  Number of Samples", CVPR 2019): a class with ``n`` images counts as
  ``E_n = (1 - βⁿ) / (1 - β)`` effective samples; its loss weight is ``1 / E_n``.
  ``β = 0`` gives uniform weights, ``β → 1`` gives inverse class frequency.
* **Logit adjustment** (Menon et al., "Long-tail learning via logit adjustment",
  ICLR 2021): with class priors ``π``, predict ``argmax_y f_y(x) − τ·log π_y``
  (post-hoc), or train on ``f_y(x) + τ·log π_y`` (the logit-adjusted loss).

Shapes: ``counts`` is ``[C]`` (images per class), logits are ``[N, C]``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from featkit.errors import FeatkitError

DEFAULT_BETA = 0.999
DEFAULT_TAU = 1.0


def _counts(counts: ArrayLike) -> NDArray[np.float64]:
    array = np.asarray(counts, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise FeatkitError(f"class counts: expected a non-empty 1-D array, got shape {array.shape}")
    if np.any(array < 0) or not np.all(np.isfinite(array)):
        raise FeatkitError("class counts: expected finite counts ≥ 0, got a negative or NaN count")
    if not np.any(array > 0):
        raise FeatkitError("class counts: expected at least one class with images, got all zero")
    return array


def effective_number(counts: ArrayLike, beta: float = DEFAULT_BETA) -> NDArray[np.float64]:
    """``E_n = (1 − βⁿ) / (1 − β)`` per class, ``[C]``; ``E_n = n`` in the limit ``β = 1``."""
    if not 0.0 <= beta <= 1.0:
        raise FeatkitError(f"beta: expected a value in [0, 1], got {beta}")
    n = _counts(counts)
    if beta == 1.0:
        return n
    if beta == 0.0:
        return np.minimum(n, 1.0)
    # expm1 keeps precision for β close to 1, where 1 − βⁿ suffers cancellation.
    return -np.expm1(n * np.log(beta)) / (1.0 - beta)


def class_balanced_weights(counts: ArrayLike, beta: float = DEFAULT_BETA) -> NDArray[np.float64]:
    """Per-class loss weights ``∝ 1 / E_n``, ``[C]``, normalised to average 1 over present classes.

    Normalising so that the weights of the classes that have images sum to their number
    (as Cui et al. do) keeps the overall loss scale, and so the learning rate or the
    regularisation strength, unchanged. A class with no images gets weight 0: it has no
    samples to weigh.
    """
    n = _counts(counts)
    present = n > 0
    weights = np.zeros_like(n)
    weights[present] = 1.0 / effective_number(n[present], beta)
    weights *= present.sum() / weights.sum()
    return weights


def class_priors(counts: ArrayLike) -> NDArray[np.float64]:
    """Class frequencies ``π = n / Σn``, ``[C]``."""
    n = _counts(counts)
    return n / n.sum()


def log_prior_offsets(priors: ArrayLike, tau: float = DEFAULT_TAU) -> NDArray[np.float64]:
    """``τ·log π``, ``[C]``: add to logits while training, subtract from them to predict.

    A class with prior 0 (no training images) gets the offset of the rarest class that
    has images: ``log 0`` would make it either always or never predicted.
    """
    p = np.asarray(priors, dtype=np.float64)
    if p.ndim != 1 or p.size == 0 or np.any(p < 0) or not np.any(p > 0):
        raise FeatkitError("priors: expected a 1-D array of probabilities with one above 0")
    p = np.where(p > 0, p, p[p > 0].min())
    return float(tau) * np.log(p / p.sum())


def adjust_logits(logits: ArrayLike, priors: ArrayLike, tau: float = DEFAULT_TAU) -> NDArray:
    """Post-hoc logit adjustment: ``logits − τ·log π``, ``[N, C]`` (dtype kept for floats)."""
    array = np.asarray(logits)
    if array.ndim != 2:
        raise FeatkitError(f"logits: expected a 2-D array [N, C], got {array.ndim}-D")
    offsets = log_prior_offsets(priors, tau)
    if offsets.shape[0] != array.shape[1]:
        raise FeatkitError(
            f"priors: expected one per logit column ({array.shape[1]}), got {offsets.shape[0]}"
        )
    dtype = array.dtype if np.issubdtype(array.dtype, np.floating) else np.float64
    return (array - offsets).astype(dtype, copy=False)
