"""Names of derived stores and the one seeded random twin of a backbone.

Every path that builds a random-init baseline (``featkit extract --random-init``,
``featkit finetune`` on a ``<model>-random`` store, the demo, ``featkit neighbors
--query`` on such a store) goes through :func:`build_backbone`, so all of them get the
same weights, and none of them changes the caller's global random state. Stores made
with a fine-tune adapter are named and fingerprinted by :func:`adapter_store_name` and
:func:`mark_adapter`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from featkit.backbones.base import Backbone

RANDOM_INIT_SUFFIX = "-random"
# Fixed, so that a resumed extraction, every torchrun rank, a fine-tune of the store and
# a rebuilt query backbone all see the same random weights.
RANDOM_INIT_SEED = 0


def random_init_name(model: str) -> str:
    """The store model name of ``model``'s random twin: ``<model>-random``."""
    return model + RANDOM_INIT_SUFFIX


def is_random_init(store_model: str) -> bool:
    """Whether a store's model name is that of a random twin."""
    return store_model.endswith(RANDOM_INIT_SUFFIX)


def base_model(store_model: str) -> str:
    """The backbone name behind a store model name (the random suffix removed)."""
    return store_model.removesuffix(RANDOM_INIT_SUFFIX)


def build_backbone(
    name: str,
    weights: str | Path | None = None,
    image_size: int | None = None,
    pretrained: bool = True,
    **options: Any,
) -> Backbone:
    """:func:`featkit.backbones.create_backbone`, with random init drawn from
    :data:`RANDOM_INIT_SEED` on a forked generator: the same twin on every call, and the
    caller's global random state untouched."""
    import torch

    from featkit.backbones import create_backbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return create_backbone(name, weights, image_size, pretrained, **options)


def adapter_store_name(model: str, tuned: Mapping[str, Any]) -> str:
    """``<model>-<method>-<first 8 hex of the adapter's sha256>`` for a tuned store;
    ``tuned`` is :func:`featkit.tune.adapter_fingerprint`'s dict."""
    return f"{model}-{tuned['adapter_method']}-{str(tuned['adapter_sha256'])[:8]}"


def mark_adapter(backbone: Backbone, tuned: Mapping[str, Any]) -> None:
    """Fold the adapter's hash into the backbone's weights hash: the tuned weights are what
    a store's features depend on, so they belong in its fingerprint."""
    base = backbone.weights_sha256 or "random"
    backbone.weights_sha256 = f"{base}+adapter:{tuned['adapter_sha256']}"
