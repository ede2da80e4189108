"""Multi-crop views: 2 global crops for teacher and student, N small local crops for the student.

Matching a small local crop to the teacher's view of a global crop teaches
"local-to-global" correspondence, DINO's main source of invariance. The augmentations
are DINO v1's (BYOL's): random resized crop, flip, colour jitter, grayscale, Gaussian
blur and, on the second global view, solarisation. Blur radii are scaled with the crop
size (DINO's 0.1–2 px are for 224-px crops) so that small images are not blurred away.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision import transforms as T


@dataclass(frozen=True)
class MultiCropConfig:
    global_size: int  # side of the 2 global crops (the model's input size)
    local_size: int  # side of the local crops (DINO: 96 for 224)
    n_local: int = 6  # local crops per image (DINO: 6-10)
    global_scale: tuple[float, float] = (0.4, 1.0)  # area fraction of a global crop
    local_scale: tuple[float, float] = (0.05, 0.4)  # area fraction of a local crop
    flip: bool = True  # random horizontal flip (off for data where mirroring changes meaning)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


def default_local_size(global_size: int, patch_size: int) -> int:
    """DINO's 96/224 ratio, rounded to a whole number of patches (at least one)."""
    patches = max(1, round(global_size * 96 / 224 / patch_size))
    return patches * patch_size


def _blur(size: int, p: float) -> T.RandomApply:
    sigma_max = 2.0 * size / 224
    sigma_min = min(0.1 * size / 224, sigma_max)
    kernel = 2 * math.ceil(3 * sigma_max) + 1
    return T.RandomApply([T.GaussianBlur(kernel, sigma=(sigma_min, sigma_max))], p=p)


class MultiCrop:
    """PIL image -> [global_1, global_2, local_1, ..., local_N] float tensors [3, s, s]."""

    def __init__(self, config: MultiCropConfig) -> None:
        self.config = config
        c = config
        flip: list[Callable] = [T.RandomHorizontalFlip(p=0.5)] if c.flip else []
        colour = [
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ]
        normalize = [T.ToTensor(), T.Normalize(c.mean, c.std)]
        bicubic = T.InterpolationMode.BICUBIC

        def crop(size: int, scale: tuple[float, float]) -> T.RandomResizedCrop:
            return T.RandomResizedCrop(size, scale=scale, interpolation=bicubic)

        gs, ls = c.global_size, c.local_size
        self.global_1 = T.Compose(
            [crop(gs, c.global_scale), *flip, *colour, _blur(gs, 1.0), *normalize]
        )
        self.global_2 = T.Compose(
            [
                crop(gs, c.global_scale),
                *flip,
                *colour,
                _blur(gs, 0.1),
                T.RandomSolarize(128, p=0.2),
                *normalize,
            ]
        )
        self.local = T.Compose(
            [crop(ls, c.local_scale), *flip, *colour, _blur(ls, 0.5), *normalize]
        )

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        views = [self.global_1(image), self.global_2(image)]
        views.extend(self.local(image) for _ in range(self.config.n_local))
        return views
