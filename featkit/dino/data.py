"""Unlabelled multi-crop batches from a featkit data set (labels are never read)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset as TorchDataset

from featkit.dino.multicrop import MultiCrop
from featkit.errors import ImageDecodeError

logger = logging.getLogger("featkit")


class MultiCropImages(TorchDataset):
    """Image paths -> multi-crop views; an image that fails to decode yields ``None``.

    Bad images are skipped (and logged once each) rather than stopping a long run.
    """

    def __init__(self, paths: list[Path], transform: MultiCrop) -> None:
        self.paths = paths
        self.transform = transform
        self._reported: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> list[Tensor] | None:
        from featkit.data.images import load_image

        try:
            image = load_image(self.paths[index])
        except ImageDecodeError as error:
            if index not in self._reported:
                self._reported.add(index)
                logger.warning("skipping %s: %s", self.paths[index], error)
            return None
        return self.transform(image)


def collate_views(samples: list[list[Tensor] | None]) -> list[Tensor] | None:
    """Stack each view over the batch, dropping failed images: V tensors [B, 3, s, s]."""
    good = [s for s in samples if s is not None]
    if not good:
        return None
    return [torch.stack(views) for views in zip(*good, strict=True)]
