"""The official position-embedding rules of DINO v1 and DINOv2, applied at every forward.

The released DINO v1 and DINOv2 models store learned position embeddings for one grid
(14x14 for the /16 models at 224 px, 28x28 for /8, 37x37 for DINOv2 at 518 px) and
resample them to the input's grid *at every forward* with bicubic interpolation. The two
families differ in details that change features measurably (cosine 0.989 at
112 px for dinov2_vits14 when resampled the timm way):

- DINO v1 and DINOv2 without registers ask ``F.interpolate`` for a *scale factor* of
  ``(n + 0.1) / M`` (n the target side, M the stored one) rather than a size, without
  antialiasing. The 0.1 guards the output size against rounding down; as a side effect
  the sampling positions are those of the scale ``(n + 0.1) / M``, not ``n / M``.
- DINOv2 with registers asks for the target *size*, with antialiasing.
- Both return the stored embeddings untouched when the grid is the stored one.

timm resamples once when the weights are loaded (bicubic, antialiased, by size), which
equals only the registers rule. featkit therefore keeps the stored grid in the model and
applies the family's rule in the forward pass (:class:`OfficialPosEmbedViT`). DINOv3
uses RoPE and needs no rule. This module imports timm: import it inside functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn


@dataclass(frozen=True)
class PosEmbedRule:
    """How stored position embeddings are resampled to an input grid."""

    name: str  # recorded in the store fingerprint
    offset: float  # > 0: interpolate by scale factor (n + offset) / M; 0: by target size
    antialias: bool


POS_EMBED_RULES = {
    "dino": PosEmbedRule("official-dino: bicubic scale (n+0.1)/M, no antialias", 0.1, False),
    "dinov2": PosEmbedRule("official-dinov2: bicubic scale (n+0.1)/M, no antialias", 0.1, False),
    "dinov2_reg": PosEmbedRule("official-dinov2-reg: bicubic to size, antialias", 0.0, True),
}
# Names of the rules of backbones that do not use POS_EMBED_RULES.
ROPE_RULE = "rope: no position embeddings to resample (DINOv3)"
TIMM_RULE = "timm: resampled once at load, bicubic to size, antialias"


def resample_pos_embed(patch_pos: Tensor, grid: tuple[int, int], rule: PosEmbedRule) -> Tensor:
    """``patch_pos`` ``[1, M*M, D]`` (row-major M x M grid) → ``[1, h*w, D]`` for ``grid``.

    Computed in float32 (as DINOv2 does) and returned in the input dtype.
    """
    side = math.isqrt(patch_pos.shape[1])
    if side * side != patch_pos.shape[1]:
        raise ValueError(f"stored position embeddings are not a square grid: {patch_pos.shape}")
    h, w = grid
    if (h, w) == (side, side):
        return patch_pos
    dim = patch_pos.shape[-1]
    square = patch_pos.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if rule.offset:
        scale = ((h + rule.offset) / side, (w + rule.offset) / side)
        out = F.interpolate(square, scale_factor=scale, mode="bicubic", antialias=rule.antialias)
    else:
        out = F.interpolate(square, size=(h, w), mode="bicubic", antialias=rule.antialias)
    if out.shape[-2:] != (h, w):  # the offset exists to prevent this; keep the guarantee
        raise RuntimeError(f"position embeddings resampled to {tuple(out.shape[-2:])}, not {grid}")
    return out.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(patch_pos.dtype)


class OfficialPosEmbedViT(VisionTransformer):  # type: ignore[misc]
    """timm ViT whose position embeddings follow ``self.pos_embed_rule`` at every forward."""

    pos_embed_rule: PosEmbedRule

    def _pos_embed(self, x: Tensor) -> Tensor:
        # x: [B, h, w, D] patch embeddings (dynamic_img_size gives NHWC).
        b, h, w, d = x.shape
        patches = x.reshape(b, h * w, d)
        pos: Tensor = self.pos_embed  # type: ignore[assignment]  # never None for DINO v1/v2
        cls_token: Tensor = self.cls_token  # type: ignore[assignment]
        if self.no_embed_class:  # registers layout: the CLS slot is folded into cls_token
            cls, patch_pos = cls_token, pos
        else:
            cls, patch_pos = cls_token + pos[:, :1], pos[:, 1:]
        patches = patches + resample_pos_embed(patch_pos, (h, w), self.pos_embed_rule)
        prefix = [cls.expand(b, -1, -1)]
        if self.reg_token is not None:  # registers carry no position embedding
            prefix.append(self.reg_token.expand(b, -1, -1))
        out: Tensor = self.pos_drop(torch.cat([*prefix, patches], dim=1))
        return out


def use_official_pos_embed(model: nn.Module, rule: PosEmbedRule) -> None:
    """Make a timm ``VisionTransformer`` (built with ``dynamic_img_size=True`` at the stored
    grid) resample its position embeddings with ``rule`` at every forward.

    timm builds the architecture and its pretrained config by name; only the position
    step differs, so the instance's class becomes a subclass that adds no state (state
    dicts, PEFT and deep copies are unaffected).
    """
    if type(model) is not VisionTransformer:
        raise TypeError(f"expected a timm VisionTransformer, got {type(model).__name__}")
    if not getattr(model, "dynamic_img_size", False):
        raise ValueError("build the model with dynamic_img_size=True (patch grid in NHWC)")
    model.__class__ = OfficialPosEmbedViT
    setattr(model, "pos_embed_rule", rule)  # noqa: B010  (a plain attribute, not a Module)
