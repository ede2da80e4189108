"""The schedules of DINO training, one value per step (or per epoch).

DINO (Caron et al., 2021) anneals almost everything: the learning rate and weight decay
follow a cosine after a linear warm-up, the teacher's EMA momentum rises from 0.996 to 1
along a cosine, and the teacher temperature warms up linearly from 0.04 to 0.07 (a sharp
teacher early on is what keeps training from collapsing before the centre settles).
Schedules are plain arrays so that a resumed run indexes exactly the value it would have
used, and tests can check them against the formulas by hand.
"""

from __future__ import annotations

import math

import numpy as np


def cosine_schedule(
    base: float,
    final: float,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_start: float = 0.0,
) -> np.ndarray:
    """Values for ``total_steps`` steps: linear warm-up, then a half cosine from base to final.

    Step ``i`` of the cosine part (``n`` steps long) is
    ``final + (base - final) * (1 + cos(pi * i / n)) / 2``, as in DINO's ``cosine_scheduler``.
    The warm-up goes linearly from ``warmup_start`` (step 0) towards ``base``.

    Returns:
        float64 array [total_steps].
    """
    if total_steps < 0 or warmup_steps < 0:
        raise ValueError(f"steps must be >= 0, got total={total_steps}, warmup={warmup_steps}")
    warmup_steps = min(warmup_steps, total_steps)
    warmup = warmup_start + (base - warmup_start) * np.arange(warmup_steps) / max(warmup_steps, 1)
    n = total_steps - warmup_steps
    steps = np.arange(n)
    cosine = final + 0.5 * (base - final) * (1.0 + np.cos(math.pi * steps / max(n, 1)))
    return np.concatenate([warmup, cosine]).astype(np.float64)


def momentum_schedule(total_steps: int, base: float = 0.996, final: float = 1.0) -> np.ndarray:
    """Teacher EMA momentum per step: a cosine from ``base`` up to ``final`` (DINO: 0.996 → 1).

    A momentum near 1 late in training freezes the teacher, which acts like Polyak
    averaging of the student and is what makes the teacher better than the student.
    """
    return cosine_schedule(base, final, total_steps)


def teacher_temperature_schedule(
    epochs: int,
    warmup_temp: float = 0.04,
    temp: float = 0.07,
    warmup_epochs: int = 30,
) -> np.ndarray:
    """Teacher temperature per epoch: linear from ``warmup_temp`` to ``temp`` over
    ``warmup_epochs`` epochs (both ends included, as in DINO), then constant.

    ``warmup_epochs`` is clipped to ``epochs`` so that short runs still reach ``temp``.

    Returns:
        float64 array [epochs].
    """
    warmup_epochs = max(0, min(warmup_epochs, epochs))
    warmup = np.linspace(warmup_temp, temp, warmup_epochs)
    rest = np.full(epochs - warmup_epochs, temp)
    return np.concatenate([warmup, rest]).astype(np.float64)
