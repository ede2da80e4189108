"""DINO self-supervised pretraining (self-distillation with no labels).

Modules, one concept each: :mod:`~featkit.dino.schedules` (cosine, momentum and
temperature schedules), :mod:`~featkit.dino.loss` (centred cross-entropy, Sinkhorn-Knopp,
KoLeo), :mod:`~featkit.dino.head` (projection head), :mod:`~featkit.dino.ema` (teacher
update), :mod:`~featkit.dino.multicrop` (views), :mod:`~featkit.dino.trainer` (the loop).
"""

from __future__ import annotations

from featkit.dino.trainer import PretrainConfig, PretrainResult, pretrain

__all__ = ["PretrainConfig", "PretrainResult", "pretrain"]
