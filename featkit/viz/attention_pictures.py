"""The pictures of ``featkit attention``: per image, the CLS attention of every head with
its mask, and optionally the similarity to one point and the PCA colours of the patches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from featkit.progress import SILENT, Progress
from featkit.viz import plots
from featkit.viz.attention import DEFAULT_THRESHOLD, attention_masks, compute_attention
from featkit.viz.patches import map_point, pca_rgb, point_similarity


@dataclass(frozen=True)
class AttentionSettings:
    threshold: float = DEFAULT_THRESHOLD  # mass each head's mask keeps
    point: tuple[float, float] | None = None  # original-image pixel (x, y) for similarity
    pca: bool = False  # also write the PCA-RGB picture of the patch features


def write_attention_maps(
    model: nn.Module,
    transform: Callable[[Any], Tensor],
    resize: int,
    crop: int,
    images: Sequence[Path],
    out: Path,
    settings: AttentionSettings = AttentionSettings(),
    *,
    device: str | torch.device = "cpu",
    progress: Progress = SILENT,
) -> list[Path]:
    """Write ``<stem>_attention.png`` (and ``_point.png``, ``_pca.png``) per image.

    ``transform``/``resize``/``crop`` are the backbone's preprocessing; the picture shows
    the centre crop the model saw, de-normalised.
    """
    from featkit.data.images import load_image

    out = Path(out)
    written: list[Path] = []
    task = progress.task("attention maps", total=len(images))
    model = model.to(device)
    for path in images:
        image = load_image(Path(path))
        tensor = transform(image).unsqueeze(0).to(device)
        maps = compute_attention(model, tensor)
        attention = maps.patch_attention()[0].cpu()
        masks = attention_masks(attention, settings.threshold)
        shown = _visible_crop(image, resize, crop)
        stem = Path(path).stem
        target = out / f"{stem}_attention.png"
        plots.plot_attention(
            shown,
            attention.numpy(),
            masks.numpy(),
            target,
            title=f"{Path(path).name}: last-block CLS attention",
            threshold=settings.threshold,
        )
        written.append(target)
        if settings.point is not None:
            mx, my = map_point(settings.point, image.size, resize, crop)
            sim = point_similarity(maps.patch_tokens[0].cpu(), (mx, my), maps.patch_size)
            target = out / f"{stem}_point.png"
            plots.plot_point_similarity(
                shown,
                sim.numpy(),
                (mx, my),
                target,
                title=f"{Path(path).name}: cosine similarity to the "
                f"patch at {settings.point[0]:g},{settings.point[1]:g}",
            )
            written.append(target)
        if settings.pca:
            target = out / f"{stem}_pca.png"
            plots.plot_pca_rgb(
                shown,
                pca_rgb(maps.patch_tokens[0].cpu()),
                target,
                title=f"{Path(path).name}: patch features, first 3 PCs as RGB",
            )
            written.append(target)
        task.advance()
    task.close()
    return written


def _visible_crop(image: Any, resize: int, crop: int) -> np.ndarray:
    """The RGB centre crop the model sees (without normalisation): [crop, crop, 3] uint8."""
    from PIL import Image

    width, height = image.size
    scale = resize / min(width, height)
    size = (max(crop, round(width * scale)), max(crop, round(height * scale)))
    resized = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    left = (size[0] - crop) // 2
    top = (size[1] - crop) // 2
    return np.asarray(resized.crop((left, top, left + crop, top + crop)))
