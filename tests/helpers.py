"""Data helpers shared by the test modules: ``from tests.helpers import digits_folder``.

- :func:`digits_folder` writes a small set of real sklearn digits as class folders.
- :func:`write_bad_image_zoo` writes one file per decoding hazard (truncated, not an
  image, empty, CMYK, 16-bit, alpha, palette, EXIF-rotated, ...) and says which must
  decode (``"ok"``) and which must be recorded as ``"failed"``; :data:`ZOO_REASONS`
  gives a word each failure reason contains.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from featkit.data.digits import Variant, write_digits

__all__ = ["ZOO_REASONS", "ZOO_RED_CORNER", "digits_folder", "write_bad_image_zoo"]

# For each file of the zoo that must fail: a lower-case word its reason contains.
ZOO_REASONS = {
    "truncated.jpg": "truncated",
    "text.jpg": "not an image",
    "empty.jpg": "empty",
}

# exif_rotated.jpg stores a 40x24 image whose top-left 8x8 block is red, with EXIF
# orientation 6 ("rotate 90° clockwise to view"): decoded it is 24x40 and the red
# block sits at the top-right corner.
ZOO_RED_CORNER = {"size": (24, 40), "red_at": (20, 3)}  # (x, y) inside the red block


def digits_folder(
    tmp_path: Path,
    per_class: int = 10,
    size: int = 32,
    *,
    imbalance: float = 1.0,
    variant: Variant = "plain",
    seed: int = 0,
    manifest: bool = False,
    name: str = "digits",
) -> Path:
    """Real sklearn digits under ``tmp_path/name`` as class folders ``<digit>/<id>.png``.

    Balanced by default: exactly ``per_class`` images of each digit 0..9. With
    ``imbalance`` > 1 digit 0 keeps ``per_class`` and the others decay geometrically
    down to ``per_class / imbalance`` (see :mod:`featkit.data.digits`). With ``manifest``
    the returned path is the CSV manifest instead of the folder.
    """
    return write_digits(
        tmp_path / name,
        imbalance=imbalance,
        size=size,
        variant=variant,
        seed=seed,
        max_per_class=per_class,
        manifest=manifest,
    )


def write_bad_image_zoo(folder: Path) -> dict[str, str]:
    """Write the decoding hazards into ``folder``; return ``{filename: "ok" | "failed"}``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    expected: dict[str, str] = {}

    def put(name: str, status: str) -> Path:
        expected[name] = status
        return folder / name

    # Failures: cut mid-stream, text with an image name, zero bytes.
    Image.fromarray(noise).save(folder / "_whole.jpg", quality=90)
    whole = (folder / "_whole.jpg").read_bytes()
    (folder / "_whole.jpg").unlink()
    put("truncated.jpg", "failed").write_bytes(whole[: len(whole) // 2])
    put("text.jpg", "failed").write_text("this is not an image\n")
    put("empty.jpg", "failed").write_bytes(b"")

    # Decodable but not plain RGB.
    Image.fromarray(noise).save(put("rgb.jpg", "ok"), quality=90)
    Image.fromarray(noise).save(put("upper_case.JPEG", "ok"), quality=90)
    Image.fromarray(noise[:, :, 0]).save(put("gray.png", "ok"))
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(put("cmyk.jpg", "ok"))
    sixteen = (np.arange(40 * 30, dtype=np.uint32).reshape(30, 40) * 54).astype(np.uint16)
    Image.fromarray(sixteen).save(put("gray16.png", "ok"))
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[:, :20] = (255, 0, 0, 255)  # left half opaque red, right half fully transparent
    Image.fromarray(rgba).save(put("rgba.png", "ok"))
    Image.fromarray(noise).quantize(16).save(put("palette.png", "ok"))
    Image.fromarray(noise).save(put("rgb.webp", "ok"), quality=90)

    rotated = np.full((24, 40, 3), 128, np.uint8)
    rotated[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer must rotate 90° clockwise
    Image.fromarray(rotated).save(put("exif_rotated.jpg", "ok"), quality=95, exif=exif)
    return expected
