"""featkit.data.images: discovery of folders and manifests, and safe decoding of bad files."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featkit.data.images import Dataset, ImageRecord, discover, load_image
from featkit.errors import FeatkitError, ImageDecodeError
from tests.helpers import ZOO_REASONS, ZOO_RED_CORNER, write_bad_image_zoo


def _png(path: Path, width: int, height: int, bit_depth: int, colour: int, raw: bytes) -> Path:
    """A PNG written by hand (filter 0 on every row), independent of Pillow's encoder."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + (chunk(b"IDAT", zlib.compress(raw)) if raw else b"")
        + chunk(b"IEND", b"")
    )
    return path


def _touch_image(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(
        path.suffix.lower(), path.suffix.lower().lstrip(".").upper()
    )
    Image.new("RGB", (4, 4), (value, value, value)).save(path, format=fmt)


def _error(exc: pytest.ExceptionInfo[FeatkitError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# --- decoding --------------------------------------------------------------------------


def test_bad_image_zoo_statuses_and_reasons(tmp_path: Path) -> None:
    expected = write_bad_image_zoo(tmp_path)
    assert set(ZOO_REASONS) <= {name for name, st in expected.items() if st == "failed"}
    for name, status in expected.items():
        if status == "ok":
            img = load_image(tmp_path / name)
            assert img.mode == "RGB", name
            assert np.asarray(img).dtype == np.uint8
        else:
            with pytest.raises(ImageDecodeError) as exc:
                load_image(tmp_path / name)
            assert ZOO_REASONS[name] in _error(exc).lower(), (name, str(exc.value))


def test_zoo_exif_orientation_6_transposes_and_moves_the_mark(tmp_path: Path) -> None:
    write_bad_image_zoo(tmp_path)
    img = load_image(tmp_path / "exif_rotated.jpg")
    # Stored 40x24 with a red block at the top-left; rotating 90° clockwise moves the
    # top-left corner to the top-right of a 24x40 image.
    assert img.size == ZOO_RED_CORNER["size"]
    a = np.asarray(img).astype(int)
    x, y = ZOO_RED_CORNER["red_at"]
    assert a[y, x, 0] > 200 and a[y, x, 1] < 60 and a[y, x, 2] < 60
    assert abs(a[3, 3] - 128).max() < 20  # the old top-left is now grey
    assert abs(a[36, 20] - 128).max() < 20


@pytest.mark.parametrize(
    ("orientation", "size", "red_xy"),
    [(1, (40, 24), (3, 3)), (3, (40, 24), (36, 20)), (8, (24, 40), (3, 36))],
)
def test_other_exif_orientations(
    tmp_path: Path, orientation: int, size: tuple[int, int], red_xy: tuple[int, int]
) -> None:
    stored = np.full((24, 40, 3), 128, np.uint8)
    stored[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "o.jpg", quality=95, exif=exif)
    img = load_image(tmp_path / "o.jpg")
    assert img.size == size
    x, y = red_xy
    assert np.asarray(img)[y, x, 0] > 200 and np.asarray(img)[y, x, 1] < 60


def test_16bit_gray_png_is_scaled_not_clamped(tmp_path: Path) -> None:
    values = np.array([[0, 255, 256, 300, 32768, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")  # really 16-bit on disk
    a = np.asarray(load_image(tmp_path / "g16.png"))
    assert a.shape == (1, 6, 3)
    np.testing.assert_array_equal(a[0, :, 0], [0, 0, 1, 1, 128, 255])
    np.testing.assert_array_equal(a[..., 0], a[..., 2])


def test_16bit_gray_tiff_and_hand_written_16bit_png(tmp_path: Path) -> None:
    Image.fromarray(np.array([[65535, 32768, 512]], np.uint16)).save(tmp_path / "g.tif")
    np.testing.assert_array_equal(
        np.asarray(load_image(tmp_path / "g.tif"))[0, :, 0], [255, 128, 2]
    )
    # 16-bit gray, big-endian samples, written without Pillow.
    raw = b"\x00" + struct.pack(">3H", 0xFFFF, 0x8000, 0x0100)
    _png(tmp_path / "hand.png", 3, 1, 16, 0, raw)
    np.testing.assert_array_equal(
        np.asarray(load_image(tmp_path / "hand.png"))[0, :, 1], [255, 128, 1]
    )


def test_16bit_rgb_png_keeps_the_high_byte(tmp_path: Path) -> None:
    # Pillow cannot write 16-bit RGB; write it by hand: one pixel per channel value.
    raw = b"\x00" + struct.pack(">6H", 0x1234, 0x8000, 0xFFFF, 0x00FF, 0x0100, 0x7FFF)
    _png(tmp_path / "rgb16.png", 2, 1, 16, 2, raw)
    a = np.asarray(load_image(tmp_path / "rgb16.png"))
    np.testing.assert_array_equal(a[0], [[0x12, 0x80, 0xFF], [0x00, 0x01, 0x7F]])


def test_alpha_is_composited_onto_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[:, 0] = (255, 0, 0, 255)  # opaque red
    rgba[:, 1] = (0, 0, 0, 0)  # transparent black -> white
    rgba[:, 2] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    Image.fromarray(rgba).save(tmp_path / "a.png")
    a = np.asarray(load_image(tmp_path / "a.png")).astype(int)
    np.testing.assert_array_equal(a[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(a[0, 1], [255, 255, 255])
    assert np.all(abs(a[0, 2] - 255 * (1 - 128 / 255)) <= 1)
    la = np.array([[[0, 0], [200, 255]]], np.uint8)  # gray+alpha
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(
        np.asarray(load_image(tmp_path / "la.png"))[0], [[255, 255, 255], [200, 200, 200]]
    )


def test_palette_png_with_and_without_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(
        np.asarray(load_image(tmp_path / "p.png"))[0], [[10, 20, 30], [200, 100, 50]]
    )
    pal.save(tmp_path / "pt.png", transparency=0)  # index 0 transparent -> white
    np.testing.assert_array_equal(
        np.asarray(load_image(tmp_path / "pt.png"))[0], [[255, 255, 255], [200, 100, 50]]
    )


def test_cmyk_jpeg_and_grayscale_become_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # pure red in CMYK
    a = np.asarray(load_image(tmp_path / "c.jpg")).astype(int)
    assert a.shape == (8, 8, 3) and abs(a[4, 4] - [255, 0, 0]).max() < 10
    Image.new("L", (3, 2), 77).save(tmp_path / "g.png")
    assert (np.asarray(load_image(tmp_path / "g.png")) == 77).all()
    Image.new("1", (3, 2), 1).save(tmp_path / "b.png")
    assert (np.asarray(load_image(tmp_path / "b.png")) == 255).all()


def test_rgb_png_decodes_exactly(tmp_path: Path) -> None:
    a = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "x.PNG")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "x.PNG")), a)


def test_truncated_jpeg_is_an_error_wherever_it_is_cut(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    for cut in (400, len(data) // 2, len(data) - 40, len(data) - 2):
        (tmp_path / "t.jpg").write_bytes(data[:cut])
        with pytest.raises(ImageDecodeError, match="truncated"):
            load_image(tmp_path / "t.jpg")


def test_files_that_are_not_images(tmp_path: Path) -> None:
    cases = {
        "missing.png": ("file not found", None),
        "empty.png": ("empty", b""),
        "text.jpg": ("not an image", b"hello, world\n"),
    }
    for name, (reason, content) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(ImageDecodeError, match=reason):
            load_image(tmp_path / name)
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageDecodeError, match="not a file"):
        load_image(tmp_path / "dir.png")
    # An EPS file named .jpg is refused rather than handed to Ghostscript.
    (tmp_path / "eps.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(tmp_path / "eps.jpg")


def test_decompression_bombs_are_refused(tmp_path: Path) -> None:
    # A header claiming 10^10 pixels and no data: refused before any allocation.
    _png(tmp_path / "bomb.png", 100_000, 100_000, 8, 0, b"")
    with pytest.raises(ImageDecodeError, match="too large"):
        load_image(tmp_path / "bomb.png")
    Image.new("RGB", (20, 10)).save(tmp_path / "small.png")
    with pytest.raises(ImageDecodeError, match=r"too large: 20x10"):
        load_image(tmp_path / "small.png", max_pixels=199)
    assert load_image(tmp_path / "small.png", max_pixels=200).size == (20, 10)


def test_corrupted_bytes_never_leak_pillow_errors(tmp_path: Path) -> None:
    # Fault injection: whatever happens to the bytes, the result is an RGB image or an
    # ImageDecodeError; never another exception.
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for fmt in ("png", "jpg", "bmp", "tif", "webp"):
        Image.fromarray(noise).save(tmp_path / f"src.{fmt}")
        data = bytearray((tmp_path / f"src.{fmt}").read_bytes())
        for _ in range(12):
            bad = bytearray(data)
            for pos in rng.integers(0, len(bad), size=int(rng.integers(1, 8))):
                bad[pos] = int(rng.integers(0, 256))
            (tmp_path / f"bad.{fmt}").write_bytes(bytes(bad))
            try:
                assert load_image(tmp_path / f"bad.{fmt}").mode == "RGB"
            except ImageDecodeError as e:
                assert str(e) and "\n" not in str(e)


def test_decode_error_is_a_featkit_error() -> None:
    assert issubclass(ImageDecodeError, FeatkitError)


# --- discovery: folders ----------------------------------------------------------------


def test_class_folders_are_labels_sorted_by_path(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    for rel in ("dog/b.png", "cat/z.jpg", "dog/a.jpg", "cat/sub/deep.png", "bird/x.bmp"):
        _touch_image(root / rel)
    (root / "notes.txt").write_text("not an image")
    (root / "dog" / "labels.csv").write_text("x")
    ds = discover(root)
    assert ds.name == "pets" and ds.root == root.resolve()
    assert [r.path for r in ds.records] == [
        "bird/x.bmp",
        "cat/sub/deep.png",
        "cat/z.jpg",
        "dog/a.jpg",
        "dog/b.png",
    ]
    assert [r.label for r in ds.records] == ["bird", "cat", "cat", "dog", "dog"]
    assert all(r.split is None for r in ds.records)
    assert ds.label_names == ("bird", "cat", "dog")
    assert ds.label_indices() == [0, 1, 1, 2, 2]
    assert ds.full_path(ds.records[0]) == root.resolve() / "bird" / "x.bmp"
    assert len(ds) == 5
    assert discover(str(root)) == ds  # str accepted, and discovery is deterministic


def test_split_folders_are_honoured_and_labels_are_the_union(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for rel in ("train/cat/1.png", "train/dog/2.png", "val/cat/3.png", "test/fox/4.png"):
        _touch_image(root / rel)
    ds = discover(root)
    assert ds.records == (
        ImageRecord("test/fox/4.png", "fox", "test"),
        ImageRecord("train/cat/1.png", "cat", "train"),
        ImageRecord("train/dog/2.png", "dog", "train"),
        ImageRecord("val/cat/3.png", "cat", "val"),
    )
    assert ds.label_names == ("cat", "dog", "fox")


def test_unlabelled_split_folder_beside_labelled_ones(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for rel in ("train/cat/1.png", "test/9.png"):
        _touch_image(root / rel)
    ds = discover(root)
    assert ds.records == (
        ImageRecord("test/9.png", None, "test"),
        ImageRecord("train/cat/1.png", "cat", "train"),
    )
    assert [ds.label_index(r) for r in ds.records] == [-1, 0]


def test_flat_folder_is_unlabelled(tmp_path: Path) -> None:
    for name in ("b.png", "a.jpg"):
        _touch_image(tmp_path / "flat" / name)
    ds = discover(tmp_path / "flat")
    assert ds == Dataset(
        root=(tmp_path / "flat").resolve(),
        name="flat",
        records=(ImageRecord("a.jpg", None, None), ImageRecord("b.png", None, None)),
        label_names=(),
    )


def test_hidden_files_and_folders_are_ignored(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for rel in ("cat/a.png", "cat/.hidden.png", ".cache/dog/x.png", "cat/.thumbs/t.png"):
        _touch_image(root / rel)
    (root / "cat" / "._a.png").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    ds = discover(root)
    assert [r.path for r in ds.records] == ["cat/a.png"]
    assert ds.label_names == ("cat",)


def test_extensions_are_case_insensitive(tmp_path: Path) -> None:
    names = ["a.JPG", "b.Jpeg", "c.PNG", "d.bmp", "e.TIF", "f.tiff", "g.WebP", "h.jpg"]
    for name in names:
        _touch_image(tmp_path / "ds" / "k" / name)
    for other in ("y.txt", "z.jpg.bak"):
        (tmp_path / "ds" / "k" / other).write_bytes(b"x")
    assert [r.path for r in discover(tmp_path / "ds").records] == [f"k/{n}" for n in names]


@pytest.mark.parametrize("content", [None, "notes.txt", ".hidden.png", "empty_class/"])
def test_folder_without_images_is_an_error(tmp_path: Path, content: str | None) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    if content and content.endswith("/"):
        (root / content).mkdir()
    elif content:
        (root / content).write_text("x")
    with pytest.raises(FeatkitError, match="no images found") as exc:
        discover(root)
    assert str(root) in _error(exc)


def test_missing_source_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FeatkitError, match="does not exist") as exc:
        discover(tmp_path / "nope")
    assert "nope" in _error(exc)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(FeatkitError, match=r"expected an image folder or a \.csv manifest"):
        discover(tmp_path / "file.txt")


def test_split_folders_mixed_with_class_folders_is_an_error(tmp_path: Path) -> None:
    for rel in ("train/cat/1.png", "dog/2.png"):
        _touch_image(tmp_path / "ds" / rel)
    with pytest.raises(
        FeatkitError, match=r"mixes split folders \(train\) with other folders \(dog\)"
    ):
        discover(tmp_path / "ds")


def test_images_beside_class_folders_is_an_error(tmp_path: Path) -> None:
    for rel in ("cat/1.png", "stray.png"):
        _touch_image(tmp_path / "ds" / rel)
    with pytest.raises(FeatkitError, match=r"stray\.png.*beside class sub-folders"):
        discover(tmp_path / "ds")


# --- discovery: CSV manifests ----------------------------------------------------------


def test_manifest_relative_paths_labels_and_splits(tmp_path: Path) -> None:
    for rel in ("img/a.png", "img/sub/b.jpg", "c.png", "other/d.png"):
        _touch_image(tmp_path / rel)
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "flowers.csv").write_text(
        "\ufeffPath, Label ,split,extra\n"
        "../img/sub/b.jpg,rose,train,x\n"
        "../img/a.png,tulip,TEST,y\n"
        "../c.png,rose,,z\n"
        "\n"
        f"{(tmp_path / 'other' / 'd.png').as_posix()},tulip,val,w\n",
        encoding="utf-8",
    )
    with pytest.raises(FeatkitError, match=r"line 2: path \.\./img/sub/b\.jpg points outside"):
        discover(meta / "flowers.csv")  # leaving the manifest's folder needs consent
    ds = discover(meta / "flowers.csv", allow_outside_root=True)
    # The resolved root is recorded: the nearest folder above every file.
    assert ds.name == "flowers" and ds.root == tmp_path.resolve()
    assert ds.records == (
        ImageRecord("c.png", "rose", None),
        ImageRecord("img/a.png", "tulip", "test"),
        ImageRecord("img/sub/b.jpg", "rose", "train"),
        ImageRecord("other/d.png", "tulip", "val"),
    )
    assert ds.label_names == ("rose", "tulip")
    assert all(ds.full_path(r).is_file() for r in ds.records)


def test_manifest_absolute_path_outside_needs_the_flag(tmp_path: Path) -> None:
    _touch_image(tmp_path / "far" / "x.png")
    _touch_image(tmp_path / "here" / "y.png")
    csv = tmp_path / "here" / "m.csv"
    csv.write_text(f"path,label\ny.png,a\n{(tmp_path / 'far' / 'x.png').as_posix()},b\n")
    with pytest.raises(FeatkitError, match=r"line 3: path .*far/x\.png points outside") as exc:
        discover(csv)
    _error(exc)
    ds = discover(csv, allow_outside_root=True)
    assert ds.root == tmp_path.resolve()
    assert [r.path for r in ds.records] == ["far/x.png", "here/y.png"]
    inside = tmp_path / "here" / "in.csv"  # absolute, but inside: no flag needed
    inside.write_text(f"path\n{(tmp_path / 'here' / 'y.png').as_posix()}\n")
    assert [r.path for r in discover(inside).records] == ["y.png"]


def test_gif_first_frame_is_decoded(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "ds" / "k" / "anim.gif"
    path.parent.mkdir(parents=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    ds = discover(tmp_path / "ds")
    assert [r.path for r in ds.records] == ["k/anim.gif"]
    pixels = np.asarray(load_image(path))
    assert pixels.shape == (8, 8, 3) and (pixels == (255, 0, 0)).all()


def test_manifest_without_label_column_is_unlabelled(tmp_path: Path) -> None:
    _touch_image(tmp_path / "x" / "a.png")
    (tmp_path / "list.csv").write_text("path\n./x/a.png\n")
    ds = discover(tmp_path / "list.csv")
    assert ds.records == (ImageRecord("x/a.png", None, None),)
    assert ds.label_names == ()


def test_manifest_naming_missing_files(tmp_path: Path) -> None:
    _touch_image(tmp_path / "ok.png")
    missing = [f"gone{i}.png" for i in range(7)]
    (tmp_path / "m.csv").write_text("path,label\nok.png,a\n" + "".join(f"{m},b\n" for m in missing))
    with pytest.raises(FeatkitError) as exc:
        discover(tmp_path / "m.csv")
    message = _error(exc)
    assert "names 7 files that do not exist" in message
    assert all(m in message for m in missing[:5]) and "gone5.png" not in message
    assert "and 2 more" in message and str(tmp_path / "m.csv") in message


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("path,label,split\na.png,x,holdout\n", r"line 2: unknown split 'holdout'"),
        ("file,label\na.png,x\n", "expected a 'path' column"),
        ("", "is empty"),
        ("path,label\n", "no rows"),
        ("path,label\na.png,x\na.png,y\n", "listed twice"),
        ("path,label\n,x\n", "line 2: expected a path"),
    ],
)
def test_manifest_errors(tmp_path: Path, text: str, match: str) -> None:
    _touch_image(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(FeatkitError, match=match) as exc:
        discover(tmp_path / "m.csv")
    _error(exc)


def test_symlinked_class_folders_are_followed_without_looping(tmp_path: Path) -> None:
    _touch_image(tmp_path / "elsewhere" / "c.png")
    _touch_image(tmp_path / "ds" / "cat" / "a.png")
    (tmp_path / "ds" / "dog").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "ds" / "cat" / "loop").symlink_to(tmp_path / "ds", target_is_directory=True)
    # A cycle through two links that are not each other's ancestors.
    (tmp_path / "elsewhere" / "back").symlink_to(tmp_path / "ds" / "dog")
    ds = discover(tmp_path / "ds")
    assert [(r.path, r.label) for r in ds.records] == [("cat/a.png", "cat"), ("dog/c.png", "dog")]
    # Two links to the same folder are two classes with the same files.
    (tmp_path / "ds" / "hound").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert discover(tmp_path / "ds").label_names == ("cat", "dog", "hound")


def test_unreadable_class_folder_is_an_error_not_a_lost_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for rel in ("cat/a.png", "dog/b.png"):
        _touch_image(tmp_path / "ds" / rel)
    real_scandir = os.scandir

    def scandir(path: str) -> object:  # permission bits do not stop root, so inject it
        if os.path.basename(path) == "dog":
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(FeatkitError, match=r"cannot read folder .*dog: Permission denied"):
        discover(tmp_path / "ds")


def test_linked_root_keeps_the_name_it_was_given(tmp_path: Path) -> None:
    _touch_image(tmp_path / "v3" / "cat" / "a.png")
    (tmp_path / "birds").symlink_to(tmp_path / "v3", target_is_directory=True)
    ds = discover(tmp_path / "birds")
    assert ds.name == "birds" and ds.full_path(ds.records[0]).is_file()
