"""The ``pixels`` backbone: the image itself, resized, as the feature vector.

The baseline every table needs: if a backbone does not beat raw pixels on a data set,
its features add nothing there. Features are the RGB values in [0, 1] (no mean/std
normalisation, so cosine k-NN compares raw intensities) of the image resized and
centre-cropped to ``image_size`` (default 32 px), flattened channel-first: ``D =
3 * image_size**2``.

``pixels-grey`` keeps one channel, the mean of R, G and B (for a grey image, whose
three channels are equal, exactly its grey value): ``D = image_size**2``, a third of
the width and of the store for the same information on grey data (digits, X-rays).
``pixels`` does the same by itself when no image of the data set holds colour (stored
grey, Pillow modes 1, L, LA, I, I;16, F, read from the header; or decoded to three
equal channels), decided once per extraction so that the store has one width, and
recorded in the store's fingerprint as ``"channels": 1``.

To fit the :class:`~featkit.backbones.Backbone` contract the whole image is one
"patch": ``patch_size == image_size``, the grid is 1x1, and CLS, the single patch and
therefore the patch mean are all the same vector (``cls_is_patch_mean``: the store
links ``patch_mean`` to ``cls`` instead of holding it twice). There are no weights:
``weights`` is refused and ``pretrained`` changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from featkit.backbones.base import Backbone, Preprocessing
from featkit.backbones.registry import register_backbone
from featkit.errors import FeatkitError

NAME = "pixels"
GREY_NAME = "pixels-grey"
DEFAULT_IMAGE_SIZE = 32
# Pillow modes whose pixels carry one grey value (with or without alpha).
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def is_grey(path: Path) -> bool | None:
    """Whether the image at ``path`` holds no colour: stored with one grey channel (read
    from the header), or decoded to three equal channels. None when it cannot be decoded.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from featkit.data.images import load_image
    from featkit.errors import ImageDecodeError

    try:
        with Image.open(path) as img:
            if img.mode in GREY_MODES:
                return True
        rgb = np.asarray(load_image(path))
    except (OSError, ValueError, UnidentifiedImageError, ImageDecodeError):
        return None
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def all_grey(paths: Iterable[Path]) -> bool:
    """True when every decodable image among ``paths`` holds no colour (:func:`is_grey`).

    Stops at the first colour image, so a colour data set costs about one decode; a grey
    one stored as RGB is decoded once in full. A file that cannot be decoded is skipped:
    extraction records it as failed, and it holds no colour to lose.
    """
    verdicts = (is_grey(Path(p)) for p in paths)
    seen = False
    for grey in verdicts:
        if grey is False:
            return False
        seen = seen or grey is True
    return seen


class PixelsBackbone(Backbone):
    """Raw pixels; tokens are ``[B, 2, 3*s*s]``: CLS and the one patch, both the image."""

    channels: int = 3  # 1: the mean of the RGB channels (pixels-grey)
    cls_is_patch_mean = True  # the one "patch" is the image: the store keeps one copy
    auto_grey = False  # pixels: one channel when every image of the data set is grey

    def adapt_to_images(self, paths: Iterable[Path]) -> dict[str, Any]:
        """Settle the channel count for one extraction of ``paths``.

        Returns the fingerprint entries that record the choice (``{"channels": 1}``
        when ``pixels`` went grey; nothing for RGB, so that stores made before the
        choice existed still match).
        """
        if not self.auto_grey:
            return {}
        self.set_channels(1 if all_grey(paths) else 3)
        return {"channels": 1} if self.channels == 1 else {}

    def set_channels(self, channels: int) -> None:
        self.channels = channels
        self.embed_dim = channels * self.patch_size * self.patch_size

    def tokens(self, images: Tensor) -> Tensor:
        if self.channels == 1:
            images = images.mean(dim=1, keepdim=True)
        flat = images.flatten(1)
        return torch.stack([flat, flat], dim=1)

    @property
    def blocks(self) -> Sequence[nn.Module]:
        raise FeatkitError(f"{self.name} has no transformer blocks to fine-tune; pick a ViT")

    @property
    def final_norm(self) -> nn.Module:
        raise FeatkitError(f"{self.name} has no final norm to fine-tune; pick a ViT")


@register_backbone(NAME)
def create_pixels(
    name: str = NAME,
    *,
    weights: str | Path | None = None,
    image_size: int | None = None,
    pretrained: bool = True,
    device: str | torch.device | None = None,
    **_more: Any,
) -> PixelsBackbone:
    """The ``pixels`` backbone at ``image_size`` px (default 32)."""
    if weights is not None:
        raise FeatkitError(f"--weights {weights}: the {name} backbone has no weights; drop it")
    size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if size < 1:
        raise FeatkitError(f"image size for {name}: expected a positive integer, got {size}")
    model = nn.Identity()
    if device is not None:
        model = model.to(device)
    channels = 1 if name == GREY_NAME else 3
    backbone = PixelsBackbone(
        name=name,
        model=model,
        patch_size=size,
        embed_dim=channels * size * size,
        num_registers=0,
        preprocessing=Preprocessing(
            resize=size,
            crop=size,
            interpolation="bilinear",
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
        ),
        weights_sha256=None,
        lora_targets=(),
    )
    backbone.set_channels(channels)
    backbone.auto_grey = name == NAME
    return backbone


@register_backbone(GREY_NAME)
def create_pixels_grey(name: str = GREY_NAME, **settings: Any) -> Backbone:
    """One channel (the RGB mean) at ``image_size`` px: ``D = image_size**2``."""
    return create_pixels(name, **settings)
