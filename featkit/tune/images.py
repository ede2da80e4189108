"""Images for tuning: decoded once, augmented per step with an explicit generator.

Each image is kept twice: the exact evaluation tensor of ``Preprocessing.transform()``
(so tuned predictions and ``featkit extract`` see identical pixels) and a uint8 copy
resized to the preprocessing's shorter side, from which training crops are cut.
Random draws come from a ``torch.Generator`` so a seed fixes every crop and flip.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from featkit.backbones import Preprocessing
from featkit.errors import FeatkitError, ImageDecodeError
from featkit.progress import SILENT, Progress

logger = logging.getLogger("featkit")


@dataclass
class ImageSet:
    """Decoded images of one dataset, row-aligned with the paths they were loaded from."""

    paths: list[str]  # relative paths that decoded
    sources: list[Tensor]  # uint8 [3, h, w], shorter side = preprocessing.resize
    evals: Tensor  # float32 [N, 3, crop, crop], exactly Preprocessing.transform()
    failed: list[tuple[str, str]]  # (path, reason) of images that did not decode


def load_images(
    root: Path,
    paths: Sequence[str],
    preprocessing: Preprocessing,
    progress: Progress = SILENT,
) -> ImageSet:
    """Decode ``root / path`` for every path; undecodable images are recorded and skipped."""
    from torchvision import transforms
    from torchvision.transforms.functional import pil_to_tensor

    from featkit.data.images import load_image

    mode = transforms.InterpolationMode(preprocessing.interpolation)
    shrink = transforms.Resize(preprocessing.resize, interpolation=mode)
    to_eval = preprocessing.transform()
    kept: list[str] = []
    sources: list[Tensor] = []
    evals: list[Tensor] = []
    failed: list[tuple[str, str]] = []
    task = progress.task("loading images", len(paths))
    for path in paths:
        try:
            image = load_image(Path(root) / path)
        except ImageDecodeError as error:
            failed.append((path, str(error)))
            logger.warning("skipping %s: %s", path, error)
        else:
            kept.append(path)
            sources.append(pil_to_tensor(shrink(image)))
            evals.append(to_eval(image))
        task.advance(1)
    task.close()
    if not kept:
        raise FeatkitError(f"{root}: expected decodable images, got none of {len(paths)}")
    return ImageSet(kept, sources, torch.stack(evals), failed)


@dataclass(frozen=True)
class Augment:
    """Random resized crop + horizontal flip + normalisation, torchvision's recipe with
    our own generator (torchvision's transforms draw from the global RNG)."""

    preprocessing: Preprocessing
    # Crop area as a fraction of the image. At least 80 %: a light tune of a few hundred
    # steps cannot learn to recognise a class from half an image, and on data whose
    # object fills the frame (digits, text, lesions) such a crop can drop the object.
    # Measured on the demo (featkit-tiny-dino, 10-shot digits, last-block, 3 episodes):
    # areas 50-100 % ended at a training loss of 2.3-2.4 (chance ln 10 = 2.3), 80-100 %
    # at 1.75-1.96, balanced accuracy 61.0 vs 60.7 %.
    scale: tuple[float, float] = (0.8, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio range
    hflip: bool = True

    def __call__(self, sources: Sequence[Tensor], generator: torch.Generator) -> Tensor:
        """``sources`` uint8 ``[3, h, w]`` each → float32 ``[B, 3, crop, crop]``."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2.functional import resized_crop

        size = self.preprocessing.crop
        mode = InterpolationMode(self.preprocessing.interpolation)
        out = []
        for image in sources:
            top, left, h, w = self._box(image.shape[-2], image.shape[-1], generator)
            crop = resized_crop(image, top, left, h, w, [size, size], mode, antialias=True)
            if self.hflip and torch.rand((), generator=generator) < 0.5:
                crop = crop.flip(-1)
            out.append(crop)
        batch = torch.stack(out).float().div_(255.0)
        mean = torch.tensor(self.preprocessing.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocessing.std).view(1, 3, 1, 1)
        return (batch - mean) / std

    def _box(self, height: int, width: int, generator: torch.Generator) -> tuple[int, ...]:
        area = height * width
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            u = torch.rand(2, generator=generator).tolist()
            target = area * (self.scale[0] + u[0] * (self.scale[1] - self.scale[0]))
            aspect = math.exp(log_lo + u[1] * (log_hi - log_lo))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (), generator=generator))
                left = int(torch.randint(0, width - w + 1, (), generator=generator))
                return top, left, h, w
        side = min(height, width)  # fall back to the central square
        return (height - side) // 2, (width - side) // 2, side, side
