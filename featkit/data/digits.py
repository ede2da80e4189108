"""The demo and test data set: the real scikit-learn digits written as image files.

``sklearn.datasets.load_digits`` holds 1,797 real handwritten digits, 8x8 pixels with
values 0..16, about 180 per class. :func:`write_digits` turns them into a small,
*imbalanced* image folder that featkit can extract, probe and fine-tune on in seconds:

- **Imbalance.** Class ``c`` (digit 0..9) keeps ``round(base * imbalance ** (-c / 9))``
  images, a geometric decay from digit 0 (the largest class) to digit 9 (the smallest),
  so that largest/smallest ≈ ``imbalance``. ``base`` is the size of the smallest
  sklearn class (174), or ``max_per_class`` when that is smaller; every class keeps at
  least one image. Which images a class keeps is a seeded random choice.
- **plain** variant: each digit scaled to ``size`` px by nearest neighbour (value
  ``v`` -> ``round(v * 255 / 16)``, white ink on black, grayscale stored as RGB). Raw
  pixels already classify these well.
- **scattered** variant: each digit resized (bilinear) to a random 40-75 % of the
  image side, pasted at a random position onto a random coloured texture (smooth
  colour field + stripes + grain), with white or black ink. Position, scale, contrast
  and background now vary, which is where learned invariances beat raw pixels.

Files are named by the digit's row in the sklearn array (``0042.png``) so a test can
compare any file with its source.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from featkit.errors import FeatkitError

__all__ = ["class_sizes", "write_digits"]

Variant = Literal["plain", "scattered"]
_NUM_CLASSES = 10


def class_sizes(available: int, imbalance: float, max_per_class: int | None = None) -> list[int]:
    """Images kept per digit 0..9: a geometric decay with largest/smallest ≈ ``imbalance``.

    ``available`` is the size of the smallest source class; ``max_per_class`` caps the
    largest class.
    """
    if not imbalance >= 1.0:
        raise FeatkitError(f"imbalance must be >= 1 (largest/smallest class), got {imbalance}")
    if max_per_class is not None and max_per_class < 1:
        raise FeatkitError(f"max_per_class must be >= 1, got {max_per_class}")
    base = available if max_per_class is None else min(available, max_per_class)
    last = _NUM_CLASSES - 1
    return [max(1, round(base * imbalance ** (-c / last))) for c in range(_NUM_CLASSES)]


def write_digits(
    root: Path | str,
    *,
    imbalance: float = 10.0,
    size: int = 32,
    variant: Variant = "plain",
    seed: int = 0,
    max_per_class: int | None = None,
    manifest: bool = False,
) -> Path:
    """Write an imbalanced digits image set under ``root``; return what to pass to discover.

    Without ``manifest`` the images go to class folders ``root/<digit>/<id>.png`` and
    ``root`` is returned. With ``manifest`` they go to ``root/images/<id>.png`` with a
    manifest ``root/digits.csv`` (``path,label``), and the manifest's path is returned.
    ``root`` must be new or empty. The same arguments always write the same files.
    """
    from sklearn.datasets import load_digits  # bundled with sklearn: no download

    if variant not in ("plain", "scattered"):
        raise FeatkitError(f"digits variant must be 'plain' or 'scattered', got {variant!r}")
    if size < 8:
        raise FeatkitError(f"digits image size must be >= 8 px, got {size}")
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FeatkitError(f"digits output {root} already exists: expected a new or empty folder")

    digits = load_digits()
    images: np.ndarray = digits.images  # [1797, 8, 8] float64, values 0..16
    targets: np.ndarray = digits.target
    rng = np.random.default_rng(seed)
    smallest = int(np.bincount(targets, minlength=_NUM_CLASSES).min())
    chosen: list[int] = []
    for digit, keep in enumerate(class_sizes(smallest, imbalance, max_per_class)):
        members = np.flatnonzero(targets == digit)
        chosen.extend(int(i) for i in rng.choice(members, size=keep, replace=False))
    chosen.sort()

    grid = np.mgrid[0:size, 0:size].astype(np.float32) / size  # [2, size, size]: y, x
    rows: list[tuple[str, str]] = []
    for index in chosen:
        label = str(int(targets[index]))
        if variant == "plain":
            pixels = _plain(images[index], size)
        else:
            pixels = _scattered(images[index], grid, rng)
        rel = f"images/{index:04d}.png" if manifest else f"{label}/{index:04d}.png"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, compress_level=1)  # speed over file size
        rows.append((rel, label))

    if not manifest:
        return root
    csv_path = root / "digits.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return csv_path


def _plain(digit: np.ndarray, size: int) -> np.ndarray:
    """[8, 8] values 0..16 -> [size, size, 3] uint8 by nearest neighbour."""
    gray = np.rint(digit * (255.0 / 16.0)).astype(np.uint8)
    src = np.arange(size) * 8 // size  # source row/column of each output pixel
    big = gray[src][:, src]
    return np.repeat(big[:, :, None], 3, axis=2)


def _scattered(digit: np.ndarray, grid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The digit at a random scale and position on a random texture, [size, size, 3] uint8."""
    size = grid.shape[1]
    background = _texture(grid, rng)
    side = int(rng.integers(max(8, round(0.4 * size)), max(8, round(0.75 * size)) + 1))
    side = min(side, size)
    ink_map = Image.fromarray((digit / 16.0).astype(np.float32)).resize(
        (side, side), Image.Resampling.BILINEAR
    )
    alpha = np.clip(np.asarray(ink_map), 0.0, 1.0)[:, :, None]
    top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    ink = 235.0 + rng.uniform(0, 20, 3) if rng.random() < 0.5 else rng.uniform(0, 20, 3)
    patch = background[top : top + side, left : left + side]
    background[top : top + side, left : left + side] = patch * (1 - alpha) + ink * alpha
    return np.clip(np.rint(background), 0, 255).astype(np.uint8)


def _texture(grid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A smooth colour field plus oriented stripes plus grain, [size, size, 3] float32."""
    size = grid.shape[1]
    coarse = rng.uniform(50, 200, (3, 3, 3)).astype(np.uint8)
    field = np.asarray(
        Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR), np.float32
    )
    yy, xx = grid
    angle = rng.uniform(0, np.pi)
    cycles = rng.uniform(2, 6)
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * cycles * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    grain = 6.0 * rng.standard_normal((size, size, 3), dtype=np.float32)
    return field + 25.0 * wave[:, :, None] + grain
