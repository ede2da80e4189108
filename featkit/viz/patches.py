"""What the final patch tokens show: similarity to the patch under a point, PCA colours,
and the mapping of an image pixel into the model input the DINO eval transform makes."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from featkit.errors import FeatkitError


def check_point(point: tuple[float, float], size: tuple[int, int]) -> None:
    """FeatkitError unless the pixel (x, y) lies inside an image of ``size`` (width, height)."""
    x, y = point
    width, height = size
    if not (0 <= x < width and 0 <= y < height):
        raise FeatkitError(
            f"--point {x:g},{y:g}: expected pixel coordinates inside the image "
            f"(0 ≤ x < {width}, 0 ≤ y < {height}), got a point outside it"
        )


def map_point(
    point: tuple[float, float],
    original_size: tuple[int, int],
    resize: int,
    crop: int,
) -> tuple[float, float]:
    """Image pixel (x, y) of the original image -> (x, y) in the model input.

    Follows the DINO eval transform: shorter side resized to ``resize``, centre crop
    ``crop``. A point outside the image, or cut away by the crop, is a FeatkitError.
    """
    check_point(point, original_size)
    x, y = point
    width, height = original_size
    scale = resize / min(width, height)
    left = (width * scale - crop) / 2
    top = (height * scale - crop) / 2
    mx, my = x * scale - left, y * scale - top
    if not (0 <= mx < crop and 0 <= my < crop):
        raise FeatkitError(
            f"--point {x:g},{y:g}: expected a point inside the centre crop the model sees, "
            f"got one that the {crop}px crop cuts away"
        )
    return mx, my


def point_similarity(patch_tokens: Tensor, point: tuple[float, float], patch_size: int) -> Tensor:
    """Cosine similarity of the patch under ``point`` (model-input x, y) to every patch.

    patch_tokens: [h, w, D] -> [h, w] in [-1, 1]; 1 at the chosen patch.
    """
    h, w, _ = patch_tokens.shape
    col, row = int(point[0] // patch_size), int(point[1] // patch_size)
    if not (0 <= row < h and 0 <= col < w):
        raise FeatkitError(
            f"--point {point[0]:g},{point[1]:g}: expected a point inside the "
            f"{w * patch_size}x{h * patch_size} model input, got one outside it"
        )
    unit = torch.nn.functional.normalize(patch_tokens.float(), dim=-1)
    return unit @ unit[row, col]


def pca_rgb(patch_tokens: Tensor) -> np.ndarray:
    """First three principal components of the patch features as RGB in [0, 1]: [h, w, 3]."""
    h, w, d = patch_tokens.shape
    x = patch_tokens.reshape(h * w, d).double()
    x = x - x.mean(dim=0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    k = min(3, v.shape[0])
    comps = torch.zeros(h * w, 3, dtype=torch.float64)
    comps[:, :k] = x @ v[:k].T
    low = comps.min(dim=0).values
    span = (comps.max(dim=0).values - low).clamp_min(1e-12)
    return ((comps - low) / span).reshape(h, w, 3).numpy()
