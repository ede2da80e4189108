"""A `pixels` store is as wide as its information: one channel for grey data, and the patch
mean (equal to the CLS by construction) linked to the CLS instead of stored twice."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from featkit.backbones import create_backbone
from featkit.backbones.pixels import all_grey
from featkit.cli import app
from featkit.data.images import discover
from featkit.errors import FingerprintMismatchError
from featkit.extraction.run import ExtractSettings, extract
from featkit.store.export import export_store
from featkit.store.importer import import_features
from featkit.store.integrity import verify_file
from featkit.store.reader import open_store
from tests.helpers import digits_folder

ROWS_PER_CLASS = 20  # 200 digits of 32x32 px


@pytest.fixture(scope="module")
def grey_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data folder, pixels store) for 200 grey digits saved as RGB PNGs."""
    tmp = tmp_path_factory.mktemp("grey")
    data = digits_folder(tmp, per_class=ROWS_PER_CLASS)
    return data, extract(discover(data), create_backbone("pixels"), tmp / "pixels.h5").path


def test_grey_digits_keep_one_channel_and_one_copy(grey_store: tuple[Path, Path]) -> None:
    data, path = grey_store
    with open_store(path) as store:
        assert store.dim == 32 * 32 and store.fingerprint["channels"] == 1
        cls, mean = store.features("cls"), store.features("patch_mean")
        rows = store.num_rows
    # The one channel is each image's grey value, resized as pixels resizes it.
    first = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))[0]
    grey = np.asarray(Image.open(data / first).convert("L").resize((32, 32), Image.BILINEAR))
    np.testing.assert_allclose(cls[0] * 255, grey.ravel(), atol=0.5)
    np.testing.assert_array_equal(mean, cls)
    with h5py.File(path, "r") as h5:
        link = h5["features"].get("patch_mean", getlink=True)
        assert isinstance(link, h5py.SoftLink) and link.path == "/features/cls"
    # Before: 3 identical channels, and the patch mean as a second copy of the CLS.
    before = rows * 3 * 32 * 32 * 4 * 2
    assert before / path.stat().st_size == pytest.approx(6, rel=0.1)


def test_a_linked_store_verifies_and_its_damage_is_found(
    grey_store: tuple[Path, Path], tmp_path: Path
) -> None:
    _, path = grey_store
    assert verify_file(path) == []
    with open_store(path) as store:
        assert store.verify() == []
    result = CliRunner().invoke(app, ["info", str(path), "--verify"])
    assert result.exit_code == 0, result.output
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(path.read_bytes())
    with h5py.File(damaged, "r+") as h5:
        h5["features/cls"][3, :4] = 0.5  # the one copy behind both names
    assert any("/features/cls" in d for d in verify_file(damaged))
    with open_store(damaged) as store:
        damage = store.verify()
    assert any("cls" in d for d in damage) and any("patch_mean" in d for d in damage)


def test_export_and_import_round_trip_a_linked_store(
    grey_store: tuple[Path, Path], tmp_path: Path
) -> None:
    _, path = grey_store
    with open_store(path) as store:
        cls = store.features("cls")
        labels = [store.label_names[i] for i in store.labels()]
        paths = store.paths()
    export_store(path, tmp_path / "out", "npy", kind="patch_mean")
    exported = np.load(tmp_path / "out" / "features.npy")
    np.testing.assert_array_equal(exported, cls)
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "path,label\n" + "".join(f"{p},{y}\n" for p, y in zip(paths, labels, strict=True))
    )
    imported = import_features(exported, csv, "again", tmp_path / "ws", dataset="digits")
    with open_store(imported) as store:
        np.testing.assert_array_equal(store.features("cls"), cls)


def test_colour_data_keeps_three_channels(tmp_path: Path) -> None:
    data = digits_folder(tmp_path, per_class=1, size=16)
    target = sorted(data.rglob("*.png"))[0]
    rgb = np.asarray(Image.open(target).convert("RGB")).copy()
    rgb[0, 0] = (255, 0, 0)  # one red pixel is colour
    Image.fromarray(rgb).save(target)
    assert not all_grey(sorted(data.rglob("*.png")))
    report = extract(discover(data), create_backbone("pixels", image_size=16), tmp_path / "c.h5")
    with open_store(report.path) as store:
        assert store.dim == 3 * 16 * 16 and "channels" not in store.fingerprint


def test_a_colour_image_added_to_a_grey_store_is_refused(tmp_path: Path) -> None:
    data = digits_folder(tmp_path, per_class=1, size=16)
    out = tmp_path / "s.h5"
    backbone = create_backbone("pixels", image_size=16)
    extract(discover(data), backbone, out)
    Image.new("RGB", (16, 16), (200, 20, 20)).save(data / "3" / "red.png")
    with pytest.raises(FingerprintMismatchError, match="channels"):
        extract(discover(data), backbone, out)
    report = extract(discover(data), backbone, out, ExtractSettings(overwrite=True))
    with open_store(report.path) as store:
        assert store.dim == 3 * 16 * 16 and store.num_rows == 11


def test_grey_is_read_from_the_header_or_the_pixels(tmp_path: Path) -> None:
    values = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(values).save(tmp_path / "l.png")  # mode L
    Image.fromarray(values).convert("RGB").save(tmp_path / "rgb.png")  # grey as RGB
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert all_grey([tmp_path / "l.png", tmp_path / "rgb.png", tmp_path / "broken.png"])
    assert not all_grey([tmp_path / "broken.png"])  # nothing decodable: keep RGB
