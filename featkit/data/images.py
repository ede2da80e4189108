"""Find the images of a data set and decode them safely.

A data source is one of

- an image folder whose sub-folders are the classes (``root/<class>/.../<image>``);
- the same below top-level split folders (``root/train/<class>/...``,
  ``root/val/...``, ``root/test/...``; the label names are the union over splits);
- a folder of images with no sub-folders (unlabelled);
- a CSV manifest with a ``path`` column (relative to the CSV's folder) and optional
  ``label`` and ``split`` columns. Paths that leave the CSV's folder (``../``, or
  absolute paths elsewhere) are refused unless ``allow_outside_root=True``; then the
  data set's root is the nearest folder holding every listed file.

:func:`discover` only lists files; :func:`load_image` decodes one of them into RGB
uint8 or raises :class:`~featkit.errors.ImageDecodeError` with a short reason, so that
the extraction pass can record a bad file and go on.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from featkit.errors import FeatkitError, ImageDecodeError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "SPLITS",
    "Dataset",
    "ImageRecord",
    "discover",
    "is_image_file",
    "load_image",
]

logger = logging.getLogger("featkit")

# .gif: the first frame is decoded (Pillow's first frame of an animation).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
SPLITS = ("train", "val", "test")

# Pillow's own default; an image with more pixels is refused before its data is read.
MAX_IMAGE_PIXELS = 89_478_485

# Only these decoders are tried: a file named .jpg that is really EPS or PDF must not
# reach a decoder that runs an external program. (Camera MPO files open through JPEG.)
_FORMATS = ("JPEG", "PNG", "BMP", "DIB", "TIFF", "WEBP", "GIF", "PPM")

# How many missing paths a manifest error names before it only counts them.
_NAMED_MISSING = 5


@dataclass(frozen=True)
class ImageRecord:
    path: str  # relative to Dataset.root, POSIX separators
    label: str | None  # class name; None when unlabelled
    split: str | None  # "train" | "val" | "test" when the data says so, else None


@dataclass(frozen=True)
class Dataset:
    root: Path  # folder the record paths are relative to (absolute)
    name: str  # folder name (or CSV stem) -> workspace sub-folder
    records: tuple[ImageRecord, ...]  # sorted by path
    label_names: tuple[str, ...]  # sorted class names; () when unlabelled

    def __len__(self) -> int:
        return len(self.records)

    def full_path(self, record: ImageRecord) -> Path:
        """The file of ``record`` on disk."""
        return self.root / record.path

    def label_index(self, record: ImageRecord) -> int:
        """Index of the record's label in :attr:`label_names`; -1 when unlabelled."""
        if record.label is None:
            return -1
        return self.label_names.index(record.label)

    def label_indices(self) -> list[int]:
        """:meth:`label_index` of every record, in record order."""
        index = {name: i for i, name in enumerate(self.label_names)}
        return [-1 if r.label is None else index[r.label] for r in self.records]


def is_image_file(name: str) -> bool:
    """True for a visible file with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def discover(source: Path | str, *, allow_outside_root: bool = False) -> Dataset:
    """List the images of an image folder or a CSV manifest.

    Hidden files and folders (dot-prefixed) are ignored; records are sorted by their
    relative POSIX path, so the same files always give the same data set. Raises
    :class:`FeatkitError` for a missing source, a source with no images, a manifest
    naming missing files, or split names other than train/val/test, and for manifest
    paths outside the manifest's folder unless ``allow_outside_root``.
    """
    source = Path(source)
    if not source.exists():
        raise FeatkitError(
            f"data source {source} does not exist: expected an image folder or a CSV manifest"
        )
    # abspath, not resolve: a linked folder keeps the name the user gave it.
    absolute = Path(os.path.abspath(source))
    if source.is_dir():
        return _discover_folder(absolute)
    if source.suffix.lower() == ".csv":
        return _discover_manifest(absolute, allow_outside_root)
    raise FeatkitError(
        f"data source {source} is a {source.suffix or 'suffix-less'} file: "
        "expected an image folder or a .csv manifest"
    )


# --- image folders ---------------------------------------------------------------------


def _images_below(folder: Path) -> list[str]:
    """Relative POSIX paths of every visible image below ``folder``, hidden parts pruned."""
    found: list[str] = []
    skipped = 0
    # Symlinked class folders are common (a data set assembled from links), so links are
    # followed; a link back to a folder already on the current walk path would loop, so
    # each walked folder remembers the real folders above it.
    above: dict[str, frozenset[str]] = {str(folder): frozenset({os.path.realpath(folder)})}
    for dirpath, dirnames, filenames in os.walk(folder, onerror=_unreadable, followlinks=True):
        chain = above.pop(dirpath)
        kept = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if not d.startswith(".") and real not in chain:
                above[os.path.join(dirpath, d)] = chain | {real}
                kept.append(d)
        dirnames[:] = kept
        rel = Path(dirpath).relative_to(folder)
        for name in filenames:
            if is_image_file(name):
                found.append((rel / name).as_posix())
            elif not name.startswith("."):
                skipped += 1
    if skipped:
        logger.info("%s: ignored %d files that are not images", folder, skipped)
    return found


def _unreadable(error: OSError) -> NoReturn:
    # os.walk would skip an unreadable folder silently and lose a class with it.
    raise FeatkitError(
        f"cannot read folder {error.filename}: {error.strerror}; expected a readable image folder"
    )


def _label_tree(folder: Path, prefix: str, split: str | None) -> list[ImageRecord]:
    """Records of one folder: labelled by its first-level sub-folders, or unlabelled."""
    paths = _images_below(folder)
    loose = [p for p in paths if "/" not in p]
    nested = [p for p in paths if "/" in p]
    if loose and nested:
        raise FeatkitError(
            f"{folder} has images directly in it ({', '.join(loose[:3])}) beside class "
            "sub-folders: expected either class sub-folders or only images"
        )
    return [ImageRecord(prefix + p, p.split("/", 1)[0] if nested else None, split) for p in paths]


def _discover_folder(root: Path) -> Dataset:
    try:
        entries = sorted(os.listdir(root))
    except OSError as e:
        _unreadable(e)
    top = [n for n in entries if not n.startswith(".") and (root / n).is_dir()]
    split_dirs = [name for name in top if name in SPLITS]
    records: list[ImageRecord] = []
    if split_dirs:
        others = [name for name in top if name not in SPLITS]
        if others:
            raise FeatkitError(
                f"{root} mixes split folders ({', '.join(split_dirs)}) with other folders "
                f"({', '.join(others[:5])}): expected only {', '.join(SPLITS)} at the top"
            )
        loose = [name for name in entries if is_image_file(name)]
        if loose:
            raise FeatkitError(
                f"{root} has images ({', '.join(loose[:3])}) beside its split folders: "
                f"expected all images inside {', '.join(split_dirs)}"
            )
        for split in split_dirs:
            records.extend(_label_tree(root / split, split + "/", split))
    else:
        records = _label_tree(root, "", None)
    if not records:
        raise FeatkitError(
            f"no images found in {root}: expected {', '.join(sorted(IMAGE_EXTENSIONS))} files "
            "directly in it or in class sub-folders"
        )
    return _dataset(root, root.name, records)


# --- CSV manifests ---------------------------------------------------------------------


def _discover_manifest(csv_path: Path, allow_outside_root: bool = False) -> Dataset:
    root = csv_path.parent
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FeatkitError(f"manifest {csv_path} cannot be read as UTF-8 CSV: {e}") from None
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise FeatkitError(f"manifest {csv_path} is empty: expected a header path,label[,split]")
    header = [cell.strip().lower() for cell in rows[0]]
    if "path" not in header:
        raise FeatkitError(
            f"manifest {csv_path} has columns {', '.join(header)}: expected a 'path' column "
            "(and optional 'label', 'split')"
        )
    col_path = header.index("path")
    col_label = header.index("label") if "label" in header else None
    col_split = header.index("split") if "split" in header else None

    records: list[ImageRecord] = []
    missing: list[str] = []
    seen: set[str] = set()
    for line, row in enumerate(rows[1:], start=2):

        def cell(col: int | None, row: list[str] = row) -> str:
            return row[col].strip() if col is not None and col < len(row) else ""

        raw = cell(col_path)
        if not raw:
            raise FeatkitError(f"manifest {csv_path} line {line}: expected a path, got none")
        rel = _relative(root, raw)
        if (rel == ".." or rel.startswith("../")) and not allow_outside_root:
            # A manifest is often shared; silently reading files anywhere on the disk
            # would make its meaning depend on where it is opened.
            raise FeatkitError(
                f"manifest {csv_path} line {line}: path {raw} points outside {root}: "
                "expected paths inside the manifest's folder (to use them anyway: "
                "featkit extract --allow-outside-root)"
            )
        if rel in seen:
            raise FeatkitError(f"manifest {csv_path} line {line}: path {raw} is listed twice")
        seen.add(rel)
        split = cell(col_split).lower() or None
        if split is not None and split not in SPLITS:
            raise FeatkitError(
                f"manifest {csv_path} line {line}: unknown split {cell(col_split)!r}: "
                f"expected one of {', '.join(SPLITS)} or empty"
            )
        if not (root / rel).is_file():
            missing.append(raw)
        records.append(ImageRecord(rel, cell(col_label) or None, split))

    if missing:
        named = ", ".join(missing[:_NAMED_MISSING])
        more = f" and {len(missing) - _NAMED_MISSING} more" if len(missing) > _NAMED_MISSING else ""
        raise FeatkitError(
            f"manifest {csv_path} names {len(missing)} files that do not exist "
            f"(paths are relative to {root}): {named}{more}"
        )
    if not records:
        raise FeatkitError(f"manifest {csv_path} has a header but no rows: expected image paths")
    if any(r.path.startswith("../") for r in records):
        # The resolved root: the nearest folder above every file, so stored paths never
        # hold "..".
        files = [os.path.normpath(root / r.path) for r in records]
        common = Path(os.path.commonpath([os.path.dirname(f) for f in files]))
        records = [
            ImageRecord(_relative(common, str(root / r.path)), r.label, r.split) for r in records
        ]
        root = common
    return _dataset(root, csv_path.stem, records)


def _relative(root: Path, raw: str) -> str:
    """A manifest path as a normalised POSIX path relative to ``root`` (may start with ..)."""
    path = Path(raw.replace("\\", "/"))
    joined = path if path.is_absolute() else root / path
    return Path(os.path.relpath(os.path.normpath(joined), root)).as_posix()


def _dataset(root: Path, name: str, records: list[ImageRecord]) -> Dataset:
    records.sort(key=lambda r: r.path)
    labels = sorted({r.label for r in records if r.label is not None})
    return Dataset(root=root, name=name, records=tuple(records), label_names=tuple(labels))


# --- decoding --------------------------------------------------------------------------


def load_image(path: Path | str, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode ``path`` fully into an RGB uint8 image, upright as its EXIF says.

    Grayscale, palette, CMYK and 16-bit images become RGB (16-bit values are scaled
    to 8 bits, 65535 -> 255, not clamped); transparent pixels are composited onto
    white. A truncated, corrupt, empty, non-image or oversized file raises
    :class:`ImageDecodeError` whose message is a short reason; no Pillow exception
    escapes.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except OSError as e:
        raise ImageDecodeError(f"cannot read file: {e.strerror or e}") from None
    if not path.is_file():
        raise ImageDecodeError("not a file")
    if size == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with Image.open(path, formats=_FORMATS) as img:
            pixels = img.width * img.height
            if pixels > max_pixels:
                raise ImageDecodeError(
                    f"image too large: {img.width}x{img.height} pixels exceeds the limit of "
                    f"{max_pixels} (decompression bomb guard)"
                )
            # Force the full decode now, so truncation fails here and not inside a batch.
            # Relies on Pillow's ImageFile.LOAD_TRUNCATED_IMAGES staying False (its
            # default, never changed by featkit): True would pad truncated JPEGs with grey.
            img.load()
            upright = ImageOps.exif_transpose(img)
            return _to_rgb(upright)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"image too large (decompression bomb guard): {e}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            "not an image: unrecognised data (expected JPEG, PNG, BMP, TIFF or WebP)"
        ) from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, zlib errors ...
        raise ImageDecodeError(_reason(e)) from None


def _reason(error: Exception) -> str:
    message = " ".join(str(error).split()) or type(error).__name__
    if "truncated" in message.lower():
        return f"truncated file: {message}"
    return f"corrupt image data: {message}"[:200]


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any decoded Pillow image as RGB uint8, alpha composited onto white."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        img = Image.fromarray(_to_uint8(img))  # 2-D uint8 -> mode L
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode == "RGB":
        return img  # exif_transpose already returned a new image, detached from the file
    try:
        return img.convert("RGB")
    except ValueError:
        raise ImageDecodeError(f"unsupported colour mode {img.mode}") from None


def _to_uint8(img: Image.Image) -> np.ndarray:
    """High-bit-depth grayscale scaled into 0..255 by its value range, not clamped.

    16-bit modes keep the top byte (65535 -> 255, 32768 -> 128). Mode ``I`` holds
    16-bit data when its values fit 0..65535 and is scaled the same way; wider
    integer and float data are stretched linearly from their min..max (floats already
    in 0..1 are multiplied by 255).
    """
    a = np.asarray(img)
    if img.mode.startswith("I;16"):
        return (a.astype(np.uint32) >> 8).astype(np.uint8)
    a = np.nan_to_num(a.astype(np.float64))
    lo, hi = float(a.min()), float(a.max())
    if img.mode == "I" and lo >= 0 and hi <= 65535:
        return (a.astype(np.uint32) >> 8).astype(np.uint8)
    if img.mode == "F" and lo >= 0 and hi <= 1:
        return np.rint(a * 255).astype(np.uint8)
    if hi == lo:
        return np.zeros(a.shape, np.uint8)
    return np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
