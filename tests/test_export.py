"""``featkit export``: features out, and back in through ``featkit import`` unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from featkit.cli import app
from featkit.store.export import parquet_available
from featkit.store.reader import StoreWriter, atomic_hdf5, open_store
from tests.helpers import digits_folder

runner = CliRunner()


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real sklearn digits (10 per class) through pixels at 8 px: grey, so D = 64."""
    from featkit.backbones import create_backbone
    from featkit.data.images import discover
    from featkit.extraction.run import ExtractSettings, extract

    root = tmp_path_factory.mktemp("export")
    data = discover(digits_folder(root, per_class=10, size=8))
    backbone = create_backbone("pixels", image_size=8)
    out = root / "ws" / "digits" / "pixels.h5"
    extract(data, backbone, out, ExtractSettings(workers=0, precision="fp32"))
    return out


def _invoke(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def _probe_values(workspace: Path, model: str) -> pd.DataFrame:
    rows = pd.read_csv(workspace / "results" / "results.csv")
    rows = rows[rows["model"] == model]
    keys = ["protocol", "params", "feature", "shots", "episode", "metric"]
    return rows.set_index(keys)["value"].sort_index()


def test_npy_export_round_trips_through_import_to_identical_probe_results(
    digits_store: Path, tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    code, output = _invoke("export", digits_store, "--out", tmp_path / "emb")
    assert code == 0, output
    assert "exported 100 rows of cls (dim 64)" in output
    meta = pd.read_csv(tmp_path / "emb" / "metadata.csv", dtype=str, keep_default_na=False)
    assert list(meta.columns) == ["path", "label", "split"]
    code, output = _invoke(
        "import", tmp_path / "emb" / "features.npy", "--labels", tmp_path / "emb" / "metadata.csv",
        "--name", "roundtrip", "--dataset", "digits", "-w", ws,
    )  # fmt: skip
    assert code == 0, output
    copy = ws / "digits" / "roundtrip.h5"
    with open_store(digits_store) as a, open_store(copy) as b:
        np.testing.assert_array_equal(a.features("cls"), b.features("cls"))
        assert a.paths() == b.paths() and a.splits() == b.splits()
        assert [a.label_names[i] for i in a.labels()] == [b.label_names[i] for i in b.labels()]
    fast = ["--shots", "1,all", "--protocols", "knn,prototype,kmeans", "--episodes", "2"]
    code, output = _invoke("probe", digits_store, copy, "-w", ws, *fast)
    assert code == 0, output
    original, imported = _probe_values(ws, "pixels"), _probe_values(ws, "roundtrip")
    assert len(original) > 0
    pd.testing.assert_series_equal(original, imported)


def test_csv_export_restores_every_float32_exactly(digits_store: Path, tmp_path: Path) -> None:
    code, output = _invoke("export", digits_store, "--format", "csv", "--out", tmp_path)
    assert code == 0, output
    frame = pd.read_csv(tmp_path / "features.csv", dtype={"label": str, "split": str},
                        keep_default_na=False)  # fmt: skip
    assert list(frame.columns[:3]) == ["path", "label", "split"]
    features = frame.iloc[:, 3:].to_numpy(dtype=np.float64).astype(np.float32)
    with open_store(digits_store) as store:
        np.testing.assert_array_equal(features, store.features("cls"))
        assert frame["path"].tolist() == store.paths()
        assert frame["label"].tolist() == [store.label_names[i] for i in store.labels()]


def test_parquet_layout_matches_rows(digits_store: Path, tmp_path: Path) -> None:
    if not parquet_available():
        code, output = _invoke("export", digits_store, "--format", "parquet", "--out", tmp_path)
        assert code == 2 and "pip install pyarrow" in output
        pytest.skip("pyarrow is not installed: parquet export is the optional 'parquet' extra")
    code, output = _invoke("export", digits_store, "--format", "parquet", "--out", tmp_path)
    assert code == 0, output
    emb = np.load(tmp_path / "img_emb" / "img_emb_0.npy")
    meta = pd.read_parquet(tmp_path / "metadata" / "metadata_0.parquet")
    with open_store(digits_store) as store:
        np.testing.assert_array_equal(emb, store.features("cls"))
        assert meta["image_path"].tolist() == store.paths()


def _store_with_a_failed_row(folder: Path) -> Path:
    path = folder / "toy" / "m.h5"
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    x[1] = np.nan
    with atomic_hdf5(path) as h5:
        writer = StoreWriter(h5, num_rows=4, dim=3, dataset="toy", model="m",
                             label_names=["a", "b"], fingerprint={}, patch_mean=False)  # fmt: skip
        writer.write_features(0, x)
        writer.write_images(["p0", "p1", "p2", "p3"], np.array([0, 1, -1, 1]),
                            ["train", "train", "test", ""], ["ok", "failed", "ok", "ok"],
                            ["", "truncated", "", ""])  # fmt: skip
    return path


def test_failed_rows_are_left_out_and_unlabelled_rows_have_an_empty_label(tmp_path: Path) -> None:
    store = _store_with_a_failed_row(tmp_path)
    code, output = _invoke("export", store)
    assert code == 0, output
    assert "exported 3 rows" in output and "1 failed rows left out" in output
    folder = tmp_path / "toy" / "m-npy"
    np.testing.assert_array_equal(
        np.load(folder / "features.npy"), np.array([[0, 1, 2], [6, 7, 8], [9, 10, 11]], np.float32)
    )
    meta = pd.read_csv(folder / "metadata.csv", dtype=str, keep_default_na=False)
    assert meta.values.tolist() == [["p0", "a", "train"], ["p2", "", "test"], ["p3", "b", ""]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--feature", "patch_mean"], "expected patch_mean features"),
        (["--format", "xml"], "'xml' is not one of"),
    ],
)
def test_bad_export_input_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    store = _store_with_a_failed_row(tmp_path)
    code, output = _invoke("export", store, *args)
    assert code == 2 and message in output, output
    code, output = _invoke("export", tmp_path / "missing.h5")
    assert code == 2 and "found nothing" in output
