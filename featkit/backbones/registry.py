"""The backbone registry: a name → the factory of its family.

It imports no family: each family module registers its own names
(:func:`register_backbone`), its open-ended ``scheme:`` prefix (:func:`register_scheme`)
and the official names it declines (:func:`register_unsupported`) when it is imported,
and the package ``featkit.backbones`` imports every family once. A family imports this
module and :mod:`featkit.backbones.base`, never the package, so no import runs in a circle.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from featkit.backbones.base import Backbone, _suggest
from featkit.errors import FeatkitError

BackboneFactory = Callable[..., Backbone]
"""``factory(name, *, weights, image_size, pretrained, model_kwargs, device,
local_files_only, **more) -> Backbone``; accept ``**more`` so new options don't break it."""

SchemeFactory = Callable[..., Backbone]
"""``factory(name, target, *, transform, weights, image_size, pretrained, model_kwargs,
device, local_files_only) -> Backbone``: ``target`` is what follows the scheme
(``vit_small_patch16_224`` in ``timm:vit_small_patch16_224``)."""

_REGISTRY: dict[str, BackboneFactory] = {}
_SCHEMES: dict[str, SchemeFactory] = {}
_SCHEME_USAGE: dict[str, str] = {}  # scheme → how to write a name, for error messages
_UNSUPPORTED: dict[str, str] = {}  # official names no family builds → the reason
# What ``transform=`` accepts: the model's own processor recipe, or its family's.
TRANSFORMS = ("processor", "family")


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator registering ``factory`` under ``name`` (see :data:`BackboneFactory`)."""
    if name.startswith(tuple(_SCHEMES)):
        raise ValueError(f"backbone names may not start with {tuple(_SCHEMES)}: {name!r}")

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        _REGISTRY[name] = factory
        return factory

    return decorator


def register_scheme(scheme: str, factory: SchemeFactory, usage: str = "") -> SchemeFactory:
    """Route every name starting with ``scheme`` (``"timm:"``) to ``factory``; ``usage``
    (``"timm:<timm name>"``) tells a user who misspelt a name how to write one."""
    if not scheme.endswith(":"):
        raise ValueError(f"a scheme ends with ':', got {scheme!r}")
    taken = [n for n in _REGISTRY if n.startswith(scheme)]
    if taken:
        raise ValueError(f"scheme {scheme!r} would hide registered names {taken}")
    _SCHEMES[scheme] = factory
    _SCHEME_USAGE[scheme] = usage or f"{scheme}<name>"
    return factory


def register_unsupported(name: str, reason: str) -> None:
    """An official name that featkit declines, so that asking for it says why."""
    _UNSUPPORTED[name] = reason


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered names matching the fnmatch ``pattern``, sorted.

    Scheme names (``timm:``, ``hf:``) are open-ended and not listed.
    """
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def list_schemes() -> list[str]:
    """The registered prefixes, e.g. ``["hf:", "timm:"]``."""
    return sorted(_SCHEMES)


def create_backbone(
    name: str,
    weights: str | Path | None = None,
    image_size: int | None = None,
    pretrained: bool = True,
    *,
    model_kwargs: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    local_files_only: bool = False,
    transform: str = "processor",
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
    ``transform``: for ``hf:`` names, "processor" follows the model's processor config
    and "family" the DINO evaluation recipe; other names always use their family's.
    """
    if image_size is not None and (not isinstance(image_size, int) or image_size <= 0):
        raise FeatkitError(f"image size must be a positive integer, got {image_size!r}")
    if transform not in TRANSFORMS:
        raise FeatkitError(f"transform: expected processor or family, got {transform!r}")
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
    scheme = next((s for s in _SCHEMES if name.startswith(s)), None)
    if scheme is not None:
        target = name.removeprefix(scheme)
        backbone = _SCHEMES[scheme](name, target, transform=transform, **options)
        return backbone.eval()
    if name in _UNSUPPORTED:
        raise FeatkitError(f"{name} is not supported: {_UNSUPPORTED[name]}")
    factory = _REGISTRY.get(name)
    if factory is None:
        schemes = " or ".join(_SCHEME_USAGE[s] for s in sorted(_SCHEMES, reverse=True))
        raise FeatkitError(
            f"unknown model {name!r}; expected a name from list_backbones() (featkit "
            f"models), {schemes}{_suggest(name, list_backbones())}"
        )
    return factory(name, **options).eval()
