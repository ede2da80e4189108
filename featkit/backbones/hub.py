"""The official DINO hub names: each computes what the official code computes.

A hub name is built with timm (its architecture and hub weights) plus what the official
code does differently:

- DINO v1 and DINOv2 keep the released position-embedding grid and resample it at every
  forward with the family's rule (:mod:`featkit.backbones.official`);
- DINOv3 keeps the q/v biases whenever the weight file has them (the official models
  are built with them, with the k bias masked); released files that carry no bias, like
  timm's hub copies, build the bias-free variant, which computes the same thing.

The table also says what ``featkit models`` lists, without building anything.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featkit.backbones.base import HUB_IMAGE_SIZE, Backbone, _check_image_size
from featkit.backbones.registry import register_backbone, register_unsupported
from featkit.backbones.timm_models import StateDict, create_timm, hub_file
from featkit.errors import FeatkitError


@dataclass(frozen=True)
class HubModel:
    """One official hub name and the facts ``featkit models`` shows."""

    arch: str  # timm architecture.tag providing the architecture and the hub weights
    family: str  # "dino" | "dinov2" | "dinov2_reg" | "dinov3"
    patch_size: int
    embed_dim: int
    depth: int
    registers: int  # register (DINOv2) / storage (DINOv3) tokens
    # Input side the released position embeddings are stored for (None: RoPE, none stored).
    stored_size: int | None
    # DINOv3: whether the official architecture has q/v biases (all but the 7B).
    qkv_bias: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # more timm kwargs


# DINOv3 in timm pools by average by default; pooling does not matter for forward_features,
# but global_pool="token" keeps model(x) (fine-tuning heads) on the CLS token as upstream does.
_DINOV3 = {"global_pool": "token"}
_V2_SIZES: tuple[tuple[str, str, int, int], ...] = (
    ("s", "small", 384, 12),
    ("b", "base", 768, 12),
    ("l", "large", 1024, 24),
    ("g", "giant", 1536, 40),
)

HUB_MODELS: dict[str, HubModel] = {
    "dino_vits16": HubModel("vit_small_patch16_224.dino", "dino", 16, 384, 12, 0, 224),
    "dino_vits8": HubModel("vit_small_patch8_224.dino", "dino", 8, 384, 12, 0, 224),
    "dino_vitb16": HubModel("vit_base_patch16_224.dino", "dino", 16, 768, 12, 0, 224),
    "dino_vitb8": HubModel("vit_base_patch8_224.dino", "dino", 8, 768, 12, 0, 224),
    **{
        f"dinov2_vit{s}14": HubModel(
            f"vit_{size}_patch14_dinov2.lvd142m", "dinov2", 14, dim, depth, 0, 518
        )
        for s, size, dim, depth in _V2_SIZES
    },
    **{
        f"dinov2_vit{s}14_reg": HubModel(
            f"vit_{size}_patch14_reg4_dinov2.lvd142m", "dinov2_reg", 14, dim, depth, 4, 518
        )
        for s, size, dim, depth in _V2_SIZES
    },
    "dinov3_vits16": HubModel(
        "vit_small_patch16_dinov3.lvd1689m", "dinov3", 16, 384, 12, 4, None, True, _DINOV3
    ),
    "dinov3_vits16plus": HubModel(
        "vit_small_plus_patch16_dinov3.lvd1689m", "dinov3", 16, 384, 12, 4, None, True, _DINOV3
    ),
    "dinov3_vitb16": HubModel(
        "vit_base_patch16_dinov3.lvd1689m", "dinov3", 16, 768, 12, 4, None, True, _DINOV3
    ),
    "dinov3_vitl16": HubModel(
        "vit_large_patch16_dinov3.lvd1689m", "dinov3", 16, 1024, 24, 4, None, True, _DINOV3
    ),
    "dinov3_vith16plus": HubModel(
        "vit_huge_plus_patch16_dinov3.lvd1689m", "dinov3", 16, 1280, 32, 4, None, True, _DINOV3
    ),
    "dinov3_vit7b16": HubModel(
        "vit_7b_patch16_dinov3.lvd1689m", "dinov3", 16, 4096, 40, 4, None, False, _DINOV3
    ),
}

# Official names featkit does not build, with the reason (``featkit models`` lists them).
UNSUPPORTED_MODELS: dict[str, str] = {
    f"dinov3_convnext_{size}": (
        "DINOv3 ConvNeXt has no CLS token or patch tokens: featkit stores CLS and patch-grid "
        "features and CLS attention maps; use a DINOv3 ViT"
    )
    for size in ("tiny", "small", "base", "large")
}


def has_qkv_bias(state: StateDict) -> bool:
    """Whether a DINOv3 state dict (official or timm layout) carries attention biases."""
    return any(k.endswith(("attn.qkv.bias", "attn.q_bias")) for k in state)


def _create_hub(name: str, *, spec: HubModel, **options: Any) -> Backbone:
    if options.get("image_size") is None:
        options["image_size"] = HUB_IMAGE_SIZE
    # Check the size before building: a ViT-g takes long to initialise just to fail.
    _check_image_size(name, options["image_size"], spec.patch_size)
    extra = dict(spec.extra)
    if spec.family == "dinov3":

        def biases(state: StateDict | None) -> dict[str, Any]:
            return {"qkv_bias": spec.qkv_bias if state is None else has_qkv_bias(state)}

        return create_timm(name, spec.arch, extra=extra, kwargs_from_state=biases, **options)
    # Keep the file's grid (the released one for released files) so that nothing is
    # resampled at load; the official rule resamples it to each input at forward time.
    extra.update(img_size=spec.stored_size, dynamic_img_size=True)
    patch = int((options.get("model_kwargs") or {}).get("patch_size", spec.patch_size))

    def stored_grid(state: StateDict | None) -> dict[str, Any]:
        pos = None if state is None else state.get("pos_embed")
        if pos is None:
            return {}
        side = math.isqrt(pos.shape[1])  # timm register layout: patches only
        if side * side != pos.shape[1]:
            side = math.isqrt(pos.shape[1] - 1)  # official layout: a CLS slot first
        return {"img_size": side * patch}

    return create_timm(
        name,
        spec.arch,
        extra=extra,
        kwargs_from_state=stored_grid,
        pos_embed_family=spec.family,
        **options,
    )


for _hub_name, _spec in HUB_MODELS.items():
    register_backbone(_hub_name)(functools.partial(_create_hub, spec=_spec))
for _name, _reason in UNSUPPORTED_MODELS.items():
    register_unsupported(_name, _reason)


def cached_weights(name: str) -> Path | None:
    """The hub weight file of ``name`` if it is already on this machine (never downloads)."""
    try:
        return hub_file(name, HUB_MODELS[name].arch, local_files_only=True)
    except FeatkitError:
        return None


FAMILY_NAMES = {
    "dino": "DINO v1",
    "dinov2": "DINOv2",
    "dinov2_reg": "DINOv2 + registers",
    "dinov3": "DINOv3",
}


def describe_models(check_cache: bool = True) -> list[dict[str, Any]]:
    """One row per official name (``featkit models``): supported hub names, then the
    official names featkit does not build, each with the reason."""
    rows: list[dict[str, Any]] = []
    for name, spec in HUB_MODELS.items():
        path = cached_weights(name) if check_cache else None
        rows.append(
            {
                "name": name,
                "family": FAMILY_NAMES[spec.family],
                "patch_size": spec.patch_size,
                "embed_dim": spec.embed_dim,
                "depth": spec.depth,
                "registers": spec.registers,
                "supported": True,
                "weights_cached": str(path) if path is not None else None,
                "note": "",
            }
        )
    for name, reason in UNSUPPORTED_MODELS.items():
        rows.append(
            {
                "name": name,
                "family": "DINOv3 ConvNeXt",
                "patch_size": None,
                "embed_dim": None,
                "depth": None,
                "registers": None,
                "supported": False,
                "weights_cached": None,
                "note": f"not supported: {reason}",
            }
        )
    return rows
