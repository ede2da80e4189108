"""timm backbones: ``timm:<name>`` and the builder the official hub names share.

A ``timm:`` name computes what timm computes (position embeddings resampled once when
the weights load). The hub names (:mod:`featkit.backbones.hub`) reuse :func:`create_timm`
with the official rules on top.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import featkit.backbones.checkpoints as checkpoints
from featkit.backbones.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    Preprocessing,
    _check_image_size,
    _square,
    _suggest,
)
from featkit.backbones.registry import register_scheme
from featkit.errors import FeatkitError

StateDict = dict[str, Tensor]


class TimmBackbone(Backbone):
    """A timm ViT: ``VisionTransformer`` (DINO v1/v2) or ``Eva`` (timm's DINOv3)."""

    def tokens(self, images: Tensor) -> Tensor:
        # forward_features ends with the final norm in both classes and never pools,
        # so token 0 is the CLS token whatever the model's global_pool says.
        model: Any = self.model
        out: Tensor = model.forward_features(images)
        return out

    @property
    def blocks(self) -> Sequence[nn.Module]:
        return self.model.blocks  # type: ignore[return-value]

    @property
    def final_norm(self) -> nn.Module:
        return self.model.norm  # type: ignore[return-value]


def create_timm(
    name: str,
    arch: str,
    *,
    weights: str | Path | None,
    image_size: int | None,
    pretrained: bool,
    model_kwargs: dict[str, Any] | None,
    device: str | torch.device | None,
    local_files_only: bool,
    extra: dict[str, Any] | None = None,
    kwargs_from_state: Callable[[StateDict | None], dict[str, Any]] | None = None,
    pos_embed_family: str | None = None,
) -> Backbone:
    """Build ``arch`` with timm and load ``weights`` (or the hub file) strictly.

    ``extra``: architecture kwargs (an ``img_size`` there fixes the stored position grid,
    and ``image_size`` then only sets the preprocessing). ``kwargs_from_state``: more
    kwargs decided by the weights about to be loaded (None: random init).
    ``pos_embed_family``: a key of ``official.POS_EMBED_RULES`` to apply at every forward.
    """
    import timm

    if not timm.is_model(arch):
        known = timm.list_models() + timm.list_models(pretrained=True)
        raise FeatkitError(
            f"unknown timm model {arch!r} in {name!r}; expected a name from "
            f"timm.list_models(){_suggest(arch, known)}"
        )
    path = checkpoints.check_weights_path(weights) if weights is not None else None
    kwargs: dict[str, Any] = {"num_classes": 0, **(extra or {})}
    if path is not None:
        kwargs.update(checkpoints.model_kwargs_from_metadata(path))
    elif pretrained:
        # Resolve the hub file before building: offline, the error comes at once, not
        # after a minute spent initialising a large model.
        path = hub_file(name, arch, local_files_only=local_files_only)
    # The architecture may depend on the file (DINOv3 q/v biases), so read it first.
    state = checkpoints.read_state_dict(path) if path is not None else None
    if kwargs_from_state is not None:
        kwargs.update(kwargs_from_state(state))
    kwargs.update(model_kwargs or {})
    if image_size is not None and "img_size" not in (extra or {}):
        kwargs["img_size"] = image_size
    try:
        with torch.device(device if device is not None else "cpu"):
            model: Any = timm.create_model(arch, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        # unknown keyword or tag, inconsistent sizes (embed_dim vs num_heads), ...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise FeatkitError(f"cannot build {name} with {kwargs}: {first}") from err

    if getattr(model, "cls_token", None) is None or not hasattr(model, "num_prefix_tokens"):
        raise FeatkitError(
            f"{name} is a {type(model).__name__} without a CLS token; "
            "expected a ViT with a class token (DINO, DINOv2, DINOv3, ...)"
        )
    patch_size = _square(model.patch_embed.patch_size, f"{name} patch size")
    crop = image_size or _square(model.patch_embed.img_size, f"{name} image size")
    _check_image_size(name, crop, patch_size)

    sha = None
    if path is not None and state is not None:
        source = f"weights file {path}"
        checkpoints.load_strict(model, checkpoints.to_timm_layout(state, model), source)
        sha = checkpoints.sha256_file(path)

    rule = _pos_embed_rule(model, pos_embed_family)
    model_cfg: dict[str, Any] = dict(model.pretrained_cfg or {})
    return TimmBackbone(
        name=name,
        model=model,
        patch_size=patch_size,
        embed_dim=int(model.embed_dim),
        num_registers=int(model.num_prefix_tokens) - 1,
        preprocessing=Preprocessing.dino(
            crop,
            mean=model_cfg.get("mean", IMAGENET_MEAN),
            std=model_cfg.get("std", IMAGENET_STD),
            interpolation=model_cfg.get("interpolation", "bicubic"),
        ),
        weights_sha256=sha,
        lora_targets=("qkv",),
        pos_embed_rule=rule,
    )


def hub_file(name: str, arch: str, *, local_files_only: bool) -> Path:
    """The hub weight file of timm's ``arch`` (downloaded unless ``local_files_only``)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    return checkpoints.hub_weights_file(
        name, cfg.to_dict() if cfg is not None else {}, local_files_only=local_files_only
    )


def _pos_embed_rule(model: Any, family: str | None) -> str:
    """Switch ``model`` to the family's official rule; the rule's name for the record."""
    import featkit.backbones.official as official  # it imports timm

    if family is not None:
        rule = official.POS_EMBED_RULES[family]
        official.use_official_pos_embed(model, rule)
        return rule.name
    if getattr(model, "pos_embed", None) is None:
        return official.ROPE_RULE
    return official.TIMM_RULE


def _create_timm_name(name: str, arch: str, *, transform: str, **options: Any) -> Backbone:
    # A timm name always uses the DINO evaluation recipe with the weights' statistics:
    # timm models carry no processor config for ``transform`` to choose.
    return create_timm(name, arch, **options)


register_scheme("timm:", _create_timm_name, usage="timm:<timm name>")
