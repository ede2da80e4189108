"""Backbones: a model name → a frozen feature extractor with its preprocessing.

One way in, timm-style: :func:`create_backbone` and :func:`list_backbones`. A name is an
official DINO hub name (``dinov2_vits14``), ``timm:<timm name>`` or ``hf:<hub id or
folder>``; extra backbones join through :func:`register_backbone`.

Every backbone returns the CLS token and the patch grid after the final norm, taking
the CLS token explicitly (timm's DINOv3 pools by average by default) and leaving the
register tokens out of the grid.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from featkit.errors import FeatkitError

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger("featkit")

# DINO's eval recipe resizes the shorter side to crop / 0.875 (256 for 224) before the crop.
DINO_CROP_PCT = 0.875
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How images become model input; part of the store fingerprint."""

    resize: int  # shorter side before the crop
    crop: int  # square centre crop = model input size
    interpolation: str  # "bicubic" | "bilinear" | "nearest" | ...
    mean: tuple[float, float, float]  # per-channel mean of the weights' training data
    std: tuple[float, float, float]  # per-channel std

    @classmethod
    def dino(
        cls,
        crop: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: str = "bicubic",
    ) -> Preprocessing:
        """The DINO eval recipe at input size ``crop``: resize to round(crop / 0.875), crop."""
        return cls(
            resize=round(crop / DINO_CROP_PCT),
            crop=crop,
            interpolation=interpolation,
            mean=_triple(mean),
            std=_triple(std),
        )

    def transform(self) -> Callable[[Image.Image], Tensor]:
        """A torchvision transform: PIL RGB image → float32 tensor ``[3, crop, crop]``."""
        from torchvision import transforms

        try:
            mode = transforms.InterpolationMode(self.interpolation)
        except ValueError as err:
            names = ", ".join(m.value for m in transforms.InterpolationMode)
            raise FeatkitError(
                f"interpolation {self.interpolation!r} is not known; expected one of {names}"
            ) from err
        return transforms.Compose(  # type: ignore[no-any-return]
            [
                transforms.Resize(self.resize, interpolation=mode),
                transforms.CenterCrop(self.crop),
                transforms.ToTensor(),
                transforms.Normalize(self.mean, self.std),
            ]
        )


@dataclass
class BackboneOutput:
    """What a forward pass gives: CLS and the patch grid, both after the final norm."""

    cls: Tensor  # [B, D]
    patches: Tensor  # [B, h, w, D], registers excluded


class Backbone(nn.Module):
    """A wrapped timm / transformers model with the metadata featkit needs.

    Subclasses implement :meth:`tokens`; :meth:`forward` splits them into CLS and grid.
    """

    name: str  # the name it was created with ("dinov2_vits14", "timm:...", "hf:...")
    patch_size: int
    embed_dim: int
    num_registers: int
    preprocessing: Preprocessing
    weights_sha256: str | None  # of the weight file used; None for random init
    model: nn.Module  # the wrapped module (LoRA, attention maps use it)
    lora_targets: tuple[str, ...]  # module-name suffixes for PEFT

    def __init__(
        self,
        *,
        name: str,
        model: nn.Module,
        patch_size: int,
        embed_dim: int,
        num_registers: int,
        preprocessing: Preprocessing,
        weights_sha256: str | None,
        lora_targets: tuple[str, ...],
    ) -> None:
        super().__init__()
        self.name = name
        self.model = model
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.num_registers = num_registers
        self.preprocessing = preprocessing
        self.weights_sha256 = weights_sha256
        self.lora_targets = lora_targets

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: CLS plus registers."""
        return 1 + self.num_registers

    @property
    def blocks(self) -> Sequence[nn.Module]:
        """The transformer blocks in order (last-block fine-tuning unfreezes ``blocks[-1]``)."""
        raise FeatkitError(f"backbone {self.name} has no transformer blocks to fine-tune")

    @property
    def final_norm(self) -> nn.Module:
        """The norm applied after the last block."""
        raise FeatkitError(f"backbone {self.name} has no final norm")

    def tokens(self, images: Tensor) -> Tensor:
        """All output tokens after the final norm: ``[B, 1 + registers + h*w, D]``."""
        raise NotImplementedError(f"{type(self).__name__} must implement tokens() or forward()")

    def forward(self, images: Tensor) -> BackboneOutput:
        """``images`` ``[B, 3, H, W]`` (H, W multiples of ``patch_size``) → CLS and grid."""
        b, _, height, width = images.shape
        h, w = height // self.patch_size, width // self.patch_size
        tokens = self.tokens(images)
        expected = self.num_prefix_tokens + h * w
        if tokens.shape[1] != expected:
            # A wrong count means the prefix layout was misread; fail rather than shift the grid.
            raise RuntimeError(
                f"{self.name}: got {tokens.shape[1]} tokens for a {h}x{w} grid, expected {expected}"
            )
        cls = tokens[:, 0]
        patches = tokens[:, self.num_prefix_tokens :].reshape(b, h, w, tokens.shape[-1])
        return BackboneOutput(cls=cls, patches=patches)


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


# --------------------------------------------------------------------------- registry

BackboneFactory = Callable[..., Backbone]
"""``factory(name, *, weights, image_size, pretrained, model_kwargs, device,
local_files_only, **more) -> Backbone``; accept ``**more`` so new options don't break it."""

_REGISTRY: dict[str, BackboneFactory] = {}
_PREFIXES = ("timm:", "hf:")
# featkit modules that register extra backbones when imported; imported on first use
# so that they can import this module without a cycle.
_PLUGIN_MODULES = ("featkit.pixels", "featkit.tiny_dino")


@functools.cache
def _load_plugins() -> None:
    import importlib

    for module in _PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:  # a missing dependency inside the plugin is a real error
                raise


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator registering ``factory`` under ``name`` (see :data:`BackboneFactory`)."""
    if name.startswith(_PREFIXES):
        raise ValueError(f"backbone names may not start with {_PREFIXES}: {name!r}")

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered names matching the fnmatch ``pattern``, sorted.

    ``timm:`` and ``hf:`` names are open-ended and not listed.
    """
    _load_plugins()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def create_backbone(
    name: str,
    weights: str | Path | None = None,
    image_size: int | None = None,
    pretrained: bool = True,
    *,
    model_kwargs: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    local_files_only: bool = False,
) -> Backbone:
    """Build a backbone in eval mode by name.

    ``name``: a registered name (``dinov2_vits14``, see :func:`list_backbones`),
    ``timm:<timm model name>`` or ``hf:<hub id or local folder>``.
    ``weights``: a local checkpoint (.pth/.pt/.bin/.safetensors; timm layout, official
    DINO/DINOv2/DINOv3 release layout, or a training checkpoint wrapping one). Without
    it, ``pretrained=True`` downloads the hub weights (or finds them in the cache) and
    ``pretrained=False`` gives random init.
    ``image_size``: input side, a multiple of the patch size (default 224 for hub
    names, the model's own size otherwise); position embeddings are interpolated.
    ``model_kwargs``: passed to ``timm.create_model`` / the transformers config (tiny
    depth or width in tests). ``device="meta"`` builds without allocating memory.
    ``local_files_only``: never touch the network for hub weights.
    """
    if image_size is not None and (not isinstance(image_size, int) or image_size <= 0):
        raise FeatkitError(f"image size must be a positive integer, got {image_size!r}")
    if device is not None and torch.device(device).type == "meta" and (pretrained or weights):
        raise FeatkitError(
            f"{name}: a meta-device backbone has no weights; pass pretrained=False and no weights"
        )
    options: dict[str, Any] = dict(
        weights=weights,
        image_size=image_size,
        pretrained=pretrained,
        model_kwargs=model_kwargs,
        device=device,
        local_files_only=local_files_only,
    )
    if name.startswith("timm:"):
        backbone = _create_timm(name, name.removeprefix("timm:"), **options)
    elif name.startswith("hf:"):
        from featkit.hf_backbone import create_hf_backbone

        backbone = create_hf_backbone(name, name.removeprefix("hf:"), **options)
    else:
        _load_plugins()
        factory = _REGISTRY.get(name)
        if factory is None:
            raise FeatkitError(
                f"unknown model {name!r}; expected a name from list_backbones() (featkit "
                f"models), timm:<timm name> or hf:<hub id or folder>"
                f"{_suggest(name, list_backbones())}"
            )
        backbone = factory(name, **options)
    return backbone.eval()


# --------------------------------------------------------------------------- timm models

# Official hub names → timm architecture.tag. DINOv3 in timm pools by average by
# default; pooling does not matter for forward_features, but global_pool="token" keeps
# model(x) (used by fine-tuning heads) on the CLS token as upstream does.
_DINOV3 = {"global_pool": "token"}
HUB_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "dino_vits16": ("vit_small_patch16_224.dino", {}),
    "dino_vits8": ("vit_small_patch8_224.dino", {}),
    "dino_vitb16": ("vit_base_patch16_224.dino", {}),
    "dino_vitb8": ("vit_base_patch8_224.dino", {}),
    **{
        f"dinov2_vit{s}14": (f"vit_{size}_patch14_dinov2.lvd142m", {})
        for s, size in zip("sblg", ("small", "base", "large", "giant"), strict=True)
    },
    **{
        f"dinov2_vit{s}14_reg": (f"vit_{size}_patch14_reg4_dinov2.lvd142m", {})
        for s, size in zip("sblg", ("small", "base", "large", "giant"), strict=True)
    },
    "dinov3_vits16": ("vit_small_patch16_dinov3.lvd1689m", _DINOV3),
    "dinov3_vits16plus": ("vit_small_plus_patch16_dinov3.lvd1689m", _DINOV3),
    "dinov3_vitb16": ("vit_base_patch16_dinov3.lvd1689m", _DINOV3),
    "dinov3_vitl16": ("vit_large_patch16_dinov3.lvd1689m", _DINOV3),
    "dinov3_vith16plus": ("vit_huge_plus_patch16_dinov3.lvd1689m", _DINOV3),
    "dinov3_vit7b16": ("vit_7b_patch16_dinov3.lvd1689m", _DINOV3),
}
# The official linear / k-NN evaluations of all three families run at 224 px.
HUB_IMAGE_SIZE = 224


def _create_hub(name: str, *, arch: str, extra: dict[str, Any], **options: Any) -> Backbone:
    if options.get("image_size") is None:
        options["image_size"] = HUB_IMAGE_SIZE
    # Check the size before building: a ViT-g takes long to initialise just to fail.
    patch = re.search(r"_patch(\d+)", arch)
    if patch:
        _check_image_size(name, options["image_size"], int(patch.group(1)))
    return _create_timm(name, arch, extra=extra, **options)


for _hub_name, (_arch, _extra) in HUB_MODELS.items():
    register_backbone(_hub_name)(functools.partial(_create_hub, arch=_arch, extra=_extra))


def _create_timm(
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
) -> Backbone:
    import timm

    from featkit import checkpoints

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
        cfg = timm.models.get_pretrained_cfg(arch)
        path = checkpoints.hub_weights_file(
            name, cfg.to_dict() if cfg is not None else {}, local_files_only=local_files_only
        )
    kwargs.update(model_kwargs or {})
    if image_size is not None:
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
    if path is not None:
        checkpoints.load_timm_weights(model, path)
        sha = checkpoints.sha256_file(path)

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
    )


def _check_image_size(name: str, size: int, patch_size: int) -> None:
    if size % patch_size:
        lower = max(patch_size, size // patch_size * patch_size)
        upper = (size // patch_size + 1) * patch_size
        raise FeatkitError(
            f"image size {size} is not a multiple of the patch size {patch_size} of {name}; "
            f"use {lower} or {upper}"
        )


def _square(value: Any, what: str) -> int:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or pair[0] != pair[1]:
        raise FeatkitError(f"{what} is {value}; featkit supports square sizes only")
    return int(pair[0])


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return (a, b, c)


def _suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""
