"""Backbones: a model name → a frozen feature extractor with its preprocessing.

One way in, timm-style: :func:`create_backbone` and :func:`list_backbones`. A name is an
official DINO hub name (``dinov2_vits14``, computing what the official code computes),
``timm:<timm name>`` or ``hf:<hub id or folder>``; extra backbones join through
:func:`register_backbone`.

Modules: ``base`` (the contract, preprocessing, registry), ``timm_models`` (``timm:``),
``hub`` (the official names), ``official`` (DINO v1/v2 position-embedding rules).
"""

from featkit.backbones.base import (
    _REGISTRY,
    DINO_CROP_PCT,
    HUB_IMAGE_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    BackboneFactory,
    BackboneOutput,
    Preprocessing,
    _check_image_size,
    _suggest,
    create_backbone,
    list_backbones,
    register_backbone,
)
from featkit.backbones.hub import HUB_MODELS, UNSUPPORTED_MODELS, HubModel
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
]
