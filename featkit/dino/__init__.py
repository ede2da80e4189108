"""DINO self-supervised pretraining (self-distillation with no labels).

Modules, one concept each: :mod:`~featkit.dino.schedules` (cosine, momentum and
temperature schedules), :mod:`~featkit.dino.loss` (centred cross-entropy, Sinkhorn-Knopp,
KoLeo), :mod:`~featkit.dino.head` (projection head), :mod:`~featkit.dino.ema` (teacher
update), :mod:`~featkit.dino.multicrop` (views), :mod:`~featkit.dino.data` (images as
views), :mod:`~featkit.dino.config` (a run's settings and resume rules),
:mod:`~featkit.dino.trainer` (the optimisation loop and its checkpoints),
:mod:`~featkit.dino.run` (one run from a folder to a weight file).
"""

from __future__ import annotations

from featkit.dino.config import PretrainConfig, PretrainResult, state_path
from featkit.dino.run import pretrain

__all__ = ["PretrainConfig", "PretrainResult", "pretrain", "state_path"]
