"""The backbone contract: what every family returns and how images become its input.

Every backbone returns the CLS token and the patch grid after the final norm, taking
the CLS token explicitly (timm's DINOv3 pools by average by default) and leaving the
register tokens out of the grid. Families live in their own modules and register their
names in :mod:`featkit.backbones.registry`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from featkit.errors import FeatkitError

if TYPE_CHECKING:
    from PIL import Image


# DINO's eval recipe resizes the shorter side to crop / 0.875 (256 for 224) before the crop.
DINO_CROP_PCT = 0.875
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The official linear / k-NN evaluations of all three families run at 224 px.
HUB_IMAGE_SIZE = 224


@dataclass(frozen=True)
class Preprocessing:
    """How images become model input; part of the store fingerprint."""

    resize: int  # shorter side before the crop
    crop: int  # square centre crop = model input size
    interpolation: str  # "bicubic" | "bilinear" | "nearest" | ...
    mean: tuple[float, float, float]  # per-channel mean of the weights' training data
    std: tuple[float, float, float]  # per-channel std
    # "shorter": resize the shorter side to ``resize``, then centre-crop ``crop`` (DINO eval);
    # "square": resize straight to ``crop`` x ``crop``, aspect ratio not kept, nothing cut
    # (what DINOv3's Hugging Face processor does).
    resize_mode: str = "shorter"

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
        if self.resize_mode == "square":
            geometry = [transforms.Resize((self.crop, self.crop), interpolation=mode)]
        elif self.resize_mode == "shorter":
            geometry = [
                transforms.Resize(self.resize, interpolation=mode),
                transforms.CenterCrop(self.crop),
            ]
        else:
            raise FeatkitError(
                f"resize mode {self.resize_mode!r} is not known; expected shorter or square"
            )
        return transforms.Compose(  # type: ignore[no-any-return]
            [
                *geometry,
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
    # How position embeddings reach the input size (recorded in the store fingerprint):
    # see featkit.backbones.official.POS_EMBED_RULES for the hub names' rules.
    pos_embed_rule: str
    # One-line notices for the caller (the library never prints), e.g. a changed statistic.
    notices: tuple[str, ...]

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
        pos_embed_rule: str = "none",
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
        self.pos_embed_rule = pos_embed_rule
        self.notices = ()

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

    def depth(self) -> int:
        """Number of transformer blocks; 0 for a backbone without blocks (pixels)."""
        try:
            return len(self.blocks)
        except FeatkitError:
            return 0

    def forward_layers(self, images: Tensor, n: int) -> tuple[BackboneOutput, Tensor]:
        """:meth:`forward` plus the CLS tokens of the last ``n`` blocks: ``[B, n, D]``.

        Oldest block first, each through the final norm, as the official DINO v1 and
        DINOv2 linear evaluations take them (``get_intermediate_layers`` normalises every
        block it returns). Hooks read the blocks during the one ordinary forward, so the
        family's own token layout and position-embedding rule stay in force.
        """
        depth = self.depth()
        if not 1 <= n <= max(depth, 1):
            raise FeatkitError(
                f"layers: expected 1 to {max(depth, 1)} for {self.name} "
                f"({depth} transformer blocks), got {n}"
            )
        if n == 1:
            out = self.forward(images)
            return out, out.cls[:, None]
        seen: list[Tensor] = []

        def keep(_module: nn.Module, _args: Any, output: Any) -> None:
            # transformers blocks return tuples; the hidden states come first.
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            seen.append(hidden[:, 0].clone())  # not a view that keeps the block output

        handles = [block.register_forward_hook(keep) for block in self.blocks[-n:]]
        try:
            out = self.forward(images)
        finally:
            for handle in handles:
                handle.remove()
        if len(seen) != n:
            raise RuntimeError(f"{self.name}: saw {len(seen)} of the last {n} blocks run")
        # A layer norm acts on each token alone, so normalising the CLS rows is the same
        # as normalising the whole sequence and taking row 0.
        layers = self.final_norm(torch.stack(seen[:-1], dim=1)).to(out.cls.dtype)
        # The last block's CLS is the forward's own, so cls<n> ends with exactly `cls`.
        return out, torch.cat([layers, out.cls[:, None]], dim=1)


# --------------------------------------------------------------------------- helpers


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
