"""``featkit-tiny-dino``: a tiny ViT pretrained with ``featkit pretrain``, shipped in the package.

It makes the demo run with no network: a 4-block, 128-wide ViT on 32-px inputs with
8-px patches (a 4x4 grid), pretrained by DINO self-distillation on the images of the
demo digits set with no labels. How it was made and how well it does: docs/tiny-dino.md.

``pretrained=False`` gives the same architecture with random weights (the baseline the
pretraining must beat); ``weights=FILE`` loads another checkpoint of this architecture.
The architecture is timm's ``vit_tiny_patch16_224`` with the overrides in
:data:`ARCH_KWARGS`, so ``--model timm:vit_tiny_patch16_224 --weights FILE`` reads the
same files (their metadata records the overrides).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from featkit.backbones.base import Backbone
from featkit.backbones.registry import create_backbone, register_backbone
from featkit.errors import FeatkitError

NAME = "featkit-tiny-dino"
ARCH = "timm:vit_tiny_patch16_224"
ARCH_KWARGS: dict[str, Any] = {"patch_size": 8, "embed_dim": 128, "depth": 4, "num_heads": 4}
IMAGE_SIZE = 32
ASSET = "featkit-tiny-dino.safetensors"


def weights_file() -> Path:
    """The bundled weight file (inside the installed package)."""
    return Path(str(resources.files("featkit") / "assets" / ASSET))


@register_backbone(NAME)
def create_tiny_dino(
    name: str = NAME,
    *,
    weights: str | Path | None = None,
    image_size: int | None = None,
    pretrained: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    **options: Any,
) -> Backbone:
    """The bundled tiny DINO ViT (``pretrained=False``: random weights, same architecture)."""
    if pretrained and weights is None:
        weights = weights_file()
        if not weights.is_file():
            raise FeatkitError(
                f"{name}: the bundled weights {weights} are missing; reinstall featkit "
                "or pass --weights FILE"
            )
    backbone = create_backbone(
        ARCH,
        weights=weights,
        image_size=IMAGE_SIZE if image_size is None else image_size,
        pretrained=pretrained,
        model_kwargs={**ARCH_KWARGS, **(model_kwargs or {})},
        **options,
    )
    backbone.name = name
    return backbone
