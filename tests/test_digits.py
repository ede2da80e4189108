"""featkit.data.digits: the real sklearn digits written as an imbalanced image set."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from featkit.data.digits import class_sizes, write_digits
from featkit.data.images import discover
from featkit.errors import FeatkitError
from tests.helpers import digits_folder


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_default_set_is_geometrically_imbalanced(tmp_path: Path) -> None:
    root = write_digits(tmp_path / "d")
    counts = Counter(r.label for r in discover(root).records)
    # Hand formula: the smallest sklearn class has 174 images; digit c keeps
    # 174 * 10^(-c/9), so digit 0 keeps 174 and digit 9 keeps 17.
    expected = {str(c): round(174 * 10 ** (-c / 9)) for c in range(10)}
    assert dict(counts) == expected
    assert counts["0"] == 174 and counts["9"] == 17
    assert 9.0 <= counts["0"] / counts["9"] <= 11.0


@pytest.mark.parametrize("imbalance", [1.0, 3.0, 25.0])
def test_class_sizes_ratio(imbalance: float) -> None:
    sizes = class_sizes(174, imbalance, max_per_class=60)
    assert sizes[0] == 60 and sizes == sorted(sizes, reverse=True)
    assert abs(sizes[-1] - 60 / imbalance) <= 0.5  # the smallest is 60/imbalance, rounded
    # Consecutive classes shrink by the same factor imbalance^(1/9), up to rounding.
    np.testing.assert_allclose(sizes, 60 * imbalance ** (-np.arange(10) / 9), atol=0.5)
    assert class_sizes(174, 1000.0, max_per_class=5)[-1] == 1  # never an empty class


def test_pixels_are_the_upscaled_sklearn_digits(tmp_path: Path) -> None:
    digits = load_digits()
    for size in (32, 16):
        root = write_digits(tmp_path / f"d{size}", imbalance=1.0, max_per_class=4, size=size)
        files = sorted(root.glob("*/*.png"))
        assert len(files) == 40
        for path in files:
            index = int(path.stem)
            assert path.parent.name == str(digits.target[index])  # the folder is the label
            gray = np.rint(digits.images[index] * 255 / 16).astype(np.uint8)
            expected = np.kron(gray, np.ones((size // 8, size // 8), np.uint8))
            got = np.asarray(Image.open(path))
            assert got.shape == (size, size, 3)
            for channel in range(3):
                np.testing.assert_array_equal(got[..., channel], expected)


def test_same_seed_same_files_other_seed_other_images(tmp_path: Path) -> None:
    for variant in ("plain", "scattered"):
        a = _files(write_digits(tmp_path / f"a{variant}", variant=variant, max_per_class=6))
        b = _files(write_digits(tmp_path / f"b{variant}", variant=variant, max_per_class=6))
        c = _files(write_digits(tmp_path / f"c{variant}", variant=variant, max_per_class=6, seed=1))
        assert a == b
        assert set(a) != set(c)  # another seed picks other images
        assert sum(Counter(k.split("/")[0] for k in a).values()) == sum(class_sizes(174, 10.0, 6))


def test_scattered_variant_places_the_digit_on_a_texture(tmp_path: Path) -> None:
    root = write_digits(
        tmp_path / "s", variant="scattered", imbalance=1.0, max_per_class=3, size=48
    )
    plain = write_digits(tmp_path / "p", imbalance=1.0, max_per_class=3, size=48)
    files = sorted(root.glob("*/*.png"))
    assert [f.relative_to(root) for f in files] == [
        f.relative_to(plain) for f in sorted(plain.glob("*/*.png"))
    ]
    for path in files:
        a = np.asarray(Image.open(path)).astype(float)
        assert a.shape == (48, 48, 3)
        assert not np.array_equal(a, np.asarray(Image.open(plain / path.relative_to(root))))
        # A textured, coloured background: channels differ and no constant black field.
        assert a.std() > 15 and np.abs(a[..., 0] - a[..., 1]).mean() > 5


def test_manifest_output(tmp_path: Path) -> None:
    manifest = write_digits(tmp_path / "m", imbalance=2.0, max_per_class=5, manifest=True)
    assert manifest == tmp_path / "m" / "digits.csv"
    with manifest.open() as f:
        rows = list(csv.DictReader(f))
    ds = discover(manifest)
    assert ds.name == "digits" and len(ds) == len(rows) == sum(class_sizes(174, 2.0, 5))
    assert ds.label_names == tuple(str(d) for d in range(10))
    digits = load_digits()
    assert all(r.label == str(digits.target[int(Path(r.path).stem)]) for r in ds.records)


def test_helper_digits_folder_is_balanced(tmp_path: Path) -> None:
    ds = discover(digits_folder(tmp_path, per_class=3, size=16))
    assert Counter(r.label for r in ds.records) == {str(d): 3 for d in range(10)}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"imbalance": 0.5}, "imbalance must be >= 1"),
        ({"variant": "fancy"}, "variant must be"),
        ({"size": 4}, "size must be >= 8"),
        ({"max_per_class": 0}, "max_per_class must be >= 1"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(FeatkitError, match=match):
        write_digits(tmp_path / "x", **kwargs)  # type: ignore[arg-type]


def test_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(FeatkitError, match="already exists"):
        write_digits(tmp_path / "x")
