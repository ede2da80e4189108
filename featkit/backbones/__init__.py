"""Backbones: a model name → a frozen feature extractor with its preprocessing.

One way in, timm-style: :func:`create_backbone` and :func:`list_backbones`. A name is an
official DINO hub name (``dinov2_vits14``, computing what the official code computes),
``timm:<timm name>``, ``hf:<hub id or folder>``, ``pixels``, ``pixels-grey`` or
``featkit-tiny-dino``; extra backbones join through :func:`register_backbone`.

Modules: ``base`` (the contract and preprocessing), ``registry`` (names and schemes →
factories; it imports no family), and one module per family, each registering itself
when imported: ``hub`` (the official names), ``official`` (DINO v1/v2 position-embedding
rules), ``timm_models`` (``timm:``), ``hf`` (``hf:``), ``pixels``, ``tiny_dino``;
``checkpoints`` reads weight files. Importing this package imports every family once.
"""

# The families register on import; the order is free (the registry imports none of them).
from featkit.backbones import hf, pixels, tiny_dino  # noqa: F401
from featkit.backbones.base import (
    DINO_CROP_PCT,
    HUB_IMAGE_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    BackboneOutput,
    Preprocessing,
    _check_image_size,
    _suggest,
)
from featkit.backbones.hub import HUB_MODELS, UNSUPPORTED_MODELS, HubModel
from featkit.backbones.registry import (
    _REGISTRY,
    BackboneFactory,
    create_backbone,
    list_backbones,
    register_backbone,
    register_scheme,
)
from featkit.backbones.timm_models import TimmBackbone

__all__ = [
    "DINO_CROP_PCT",
    "HUB_IMAGE_SIZE",
    "HUB_MODELS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "UNSUPPORTED_MODELS",
    "_REGISTRY",
    "Backbone",
    "BackboneFactory",
    "BackboneOutput",
    "HubModel",
    "Preprocessing",
    "TimmBackbone",
    "_check_image_size",
    "_suggest",
    "create_backbone",
    "list_backbones",
    "register_backbone",
    "register_scheme",
]
