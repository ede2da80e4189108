"""The HDF5 store: layout, row selection, block reads, atomic writes, import, precision."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

import featkit
from featkit.errors import FeatkitError
from featkit.precision import Hardware, parse_cpuinfo, resolve_precision
from featkit.store import reader as store_mod
from featkit.store.fingerprint import BINDING_KEYS, differences
from featkit.store.reader import StoreWriter, atomic_hdf5, import_features, open_store

PATHS = [f"{c}/{i:02d}.png" for c in ("a", "b") for i in range(5)]  # 10 rows, sorted
LABELS = np.array([0] * 5 + [1] * 5)
SPLITS = ["train", "test"] * 5
STATUS = ["ok"] * 10
STATUS[3] = "failed"
ERRORS = [""] * 10
ERRORS[3] = "truncated: image file is truncated"


def _write(path: Path, *, grid: bool = True, patch_mean: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    cls = rng.normal(size=(10, 6)).astype(np.float32)
    mean = rng.normal(size=(10, 6)).astype(np.float32)
    patches = rng.normal(size=(10, 2, 3, 6)).astype(np.float16)
    cls[3] = mean[3] = np.nan
    patches[3] = np.nan
    with atomic_hdf5(path) as h5:
        writer = StoreWriter(
            h5,
            num_rows=10,
            dim=6,
            dataset="toy",
            model="m",
            label_names=["cat", "dog"],
            fingerprint={"model": "m"},
            patch_mean=patch_mean,
            grid=(2, 3) if grid else None,
        )
        for start in (0, 4, 8):  # uneven blocks
            stop = min(10, start + 4)
            writer.write_features(
                start,
                cls[start:stop],
                mean[start:stop] if patch_mean else None,
                patches[start:stop] if grid else None,
            )
        writer.write_images(PATHS, LABELS, SPLITS, STATUS, ERRORS)
    return {"cls": cls, "patch_mean": mean, "patches": patches}


@pytest.fixture(params=[4096, 3], ids=["one-block", "many-blocks"])
def toy(tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    # A tiny READ_BLOCK sends every read through the multi-block path.
    monkeypatch.setattr(store_mod, "READ_BLOCK", request.param)
    path = tmp_path / "toy.h5"
    return path, _write(path)


def test_layout_matches_the_contract(toy) -> None:
    path, _ = toy
    with h5py.File(path, "r") as h5:
        assert h5["features/cls"].dtype == np.float32
        assert h5["features/patch_mean"].dtype == np.float32
        assert h5["features/patches"].dtype == np.float16
        assert h5["features/patches"].shape == (10, 2, 3, 6)
        assert h5["images/label"].dtype == np.int64
        assert list(h5["images/path"].asstr()[:]) == PATHS
        assert json.loads(h5.attrs["label_names"]) == ["cat", "dog"]
        assert json.loads(h5.attrs["fingerprint"]) == {"model": "m"}
        assert h5.attrs["format_version"] == 1


def test_reads_select_the_same_rows_everywhere(toy) -> None:
    path, truth = toy
    ok = np.array([s == "ok" for s in STATUS])
    train = ok & (np.array(SPLITS) == "train")
    with featkit.open_store(path) as store:
        assert (store.num_rows, store.dataset, store.model) == (10, "toy", "m")
        assert store.label_names == ("cat", "dog")
        assert store.feature_kinds == ("cls", "patch_mean", "patches")
        np.testing.assert_array_equal(store.features(), truth["cls"][ok])
        np.testing.assert_array_equal(
            store.features("patch_mean", "train"), truth["patch_mean"][train]
        )
        both = store.features("cls+patch_mean", "train")
        np.testing.assert_array_equal(
            both, np.concatenate([truth["cls"][train], truth["patch_mean"][train]], axis=1)
        )
        assert store.labels("train").tolist() == LABELS[train].tolist()
        assert store.paths("train") == [p for p, k in zip(PATHS, train, strict=True) if k]
        assert store.splits() == [s for s, k in zip(SPLITS, ok, strict=True) if k]
        every = store.features(include_failed=True)
        assert every.shape == (10, 6) and np.isnan(every[3]).all()
        assert store.failures() == [(PATHS[3], ERRORS[3])]
        assert (
            store.rows("test").tolist()
            == np.flatnonzero(ok & (np.array(SPLITS) == "test")).tolist()
        )


@pytest.mark.parametrize("block", [1, 2, 256])
def test_iter_patches_positions_follow_the_selection(tmp_path: Path, block: int) -> None:
    truth = _write(tmp_path / "s.h5")
    ok = np.array([s == "ok" for s in STATUS])
    train = ok & (np.array(SPLITS) == "train")
    with open_store(tmp_path / "s.h5") as store:
        got = np.full((int(train.sum()), 2, 3, 6), np.nan, dtype=np.float16)
        seen = []
        for idx, grid in store.iter_patches(block=block, split="train"):
            assert grid.dtype == np.float16 and len(grid) <= block
            got[idx] = grid
            seen += idx.tolist()
        assert seen == list(range(int(train.sum())))
        np.testing.assert_array_equal(got, truth["patches"][train])
        assert store.grid == (2, 3)


def test_summary_counts(toy) -> None:
    path, _ = toy
    with open_store(path) as store:
        s = store.summary()
    assert (s["rows"], s["ok"], s["failed"]) == (10, 9, 1)
    assert s["label_counts"] == {"cat": 4, "dog": 5}
    assert s["split_counts"] == {"test": 4, "train": 5}
    assert s["file_size"] == path.stat().st_size
    assert s["failures"] == [(PATHS[3], ERRORS[3])]
    json.dumps(s)  # plain values only


def test_clear_errors_for_wrong_reads(tmp_path: Path) -> None:
    _write(tmp_path / "s.h5", grid=False, patch_mean=False)
    with open_store(tmp_path / "s.h5") as store:
        with pytest.raises(FeatkitError, match=r"patch_mean.*only cls"):
            store.features("patch_mean")
        with pytest.raises(FeatkitError, match="patch_mean"):
            store.features("cls+patch_mean")
        with pytest.raises(FeatkitError, match="--patches full"):
            next(store.iter_patches())
        with pytest.raises(FeatkitError, match=r"split.*'val'.*'test', 'train'"):
            store.features(split="val")
        with pytest.raises(FeatkitError, match="feature kind"):
            store.features("attention")


def test_open_store_refuses_non_stores(tmp_path: Path) -> None:
    with pytest.raises(FeatkitError, match="found nothing"):
        open_store(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"\x89HDF junk")
    with pytest.raises(FeatkitError, match="cannot be opened"):
        open_store(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5["x"] = [1, 2]
    with pytest.raises(FeatkitError, match="store layout"):
        open_store(tmp_path / "other.h5")


def test_failed_atomic_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    truth = _write(path)
    with pytest.raises(RuntimeError), atomic_hdf5(path) as h5:
        h5["features/cls"] = np.zeros((1, 1))
        raise RuntimeError("crash")
    assert not (tmp_path / "s.h5.tmp").exists()
    with open_store(path) as store:
        np.testing.assert_array_equal(store.features(include_failed=True), truth["cls"])


# -- import ---------------------------------------------------------------------------
def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_import_sorts_rows_by_path_and_keeps_features_aligned(tmp_path: Path) -> None:
    feats = np.arange(8, dtype=np.float64).reshape(4, 2)
    labels = _csv(
        tmp_path / "flowers.csv",
        "path,label,split\nd.png,b,train\nb.png,a,test\na.png,b,train\nc.png,,TEST\n",
    )
    out = import_features(feats, labels, "clip", tmp_path / "ws")
    assert out == tmp_path / "ws" / "flowers" / "clip.h5"
    with open_store(out) as store:
        assert store.paths() == ["a.png", "b.png", "c.png", "d.png"]
        np.testing.assert_array_equal(store.features(), feats[[2, 1, 3, 0]].astype(np.float32))
        assert store.label_names == ("a", "b")
        assert store.labels().tolist() == [1, 0, -1, 1]
        assert store.splits() == ["train", "test", "test", "train"]
        assert store.feature_kinds == ("cls",)
        assert store.fingerprint["source"] == "import"
        with pytest.raises(FeatkitError, match="patch_mean"):
            store.features("patch_mean")


def test_import_without_paths_keeps_row_order(tmp_path: Path) -> None:
    feats = np.random.default_rng(0).normal(size=(12, 3))
    labels = _csv(tmp_path / "l.csv", "label\n" + "".join(f"c{i % 3}\n" for i in range(12)))
    out = import_features(feats, labels, "x", tmp_path, dataset="mine")
    with open_store(out) as store:
        np.testing.assert_array_equal(store.features(), feats.astype(np.float32))
        assert store.dataset == "mine"
        assert store.paths()[:2] == ["000000", "000001"]


@pytest.mark.parametrize(
    ("feats", "csv", "match"),
    [
        (np.ones((3, 2)), "path,label\na,x\nb,y\n", "expected 3 rows.*got 2"),
        (np.ones((2, 2)), "path,name\na,x\nb,y\n", "'label' column.*path, name"),
        (np.ones((2, 2)), "label,split\nx,train\ny,holdout\n", "split values.*'holdout'"),
        (np.ones((2, 2)), "path,label\na,x\na,y\n", "unique.*'a'"),
        (np.ones(4), "label\nx\n", "2-D array"),
    ],
)
def test_import_rejects_bad_input(tmp_path: Path, feats: np.ndarray, csv: str, match: str) -> None:
    with pytest.raises(FeatkitError, match=match):
        import_features(feats, _csv(tmp_path / "l.csv", csv), "x", tmp_path)


def test_import_names_non_finite_rows(tmp_path: Path) -> None:
    feats = np.ones((9, 2))
    feats[2, 1] = np.nan
    feats[7, 0] = np.inf
    labels = _csv(tmp_path / "l.csv", "label\n" + "x\n" * 9)
    with pytest.raises(FeatkitError, match=r"2 row\(s\): 2, 7"):
        import_features(feats, labels, "x", tmp_path)
    assert not list(tmp_path.glob("l/*"))


def test_import_refuses_to_replace_without_overwrite(tmp_path: Path) -> None:
    labels = _csv(tmp_path / "l.csv", "label\nx\ny\n")
    import_features(np.zeros((2, 2)), labels, "x", tmp_path)
    with pytest.raises(FeatkitError, match=r"already exists.*overwrite"):
        import_features(np.ones((2, 2)), labels, "x", tmp_path)
    out = import_features(np.ones((2, 2)), labels, "x", tmp_path, overwrite=True)
    with open_store(out) as store:
        assert store.features().sum() == 4


# -- precision and fingerprint -----------------------------------------------------------
CPUINFO = "processor\t: 0\nflags\t\t: fpu sse avx512f {extra}\nbogomips\t: 4000\n"


@pytest.mark.parametrize(
    ("hardware", "requested", "expected"),
    [
        (
            Hardware("cpu", cpu_flags=parse_cpuinfo(CPUINFO.format(extra="amx_bf16"))),
            "auto",
            "bf16",
        ),
        (
            Hardware("cpu", cpu_flags=parse_cpuinfo(CPUINFO.format(extra="avx512_bf16"))),
            "auto",
            "bf16",
        ),
        (Hardware("cpu", cpu_flags=parse_cpuinfo(CPUINFO.format(extra="avx2"))), "auto", "fp32"),
        (Hardware("cpu"), "bf16", "bf16"),
        (Hardware("cpu", cpu_flags=frozenset({"amx_bf16"})), "fp32", "fp32"),
        (Hardware("cuda", cuda_bf16=True), "auto", "bf16"),
        (Hardware("cuda", cuda_bf16=False), "auto", "fp32"),
        (Hardware("cuda"), "fp16", "fp16"),
    ],
)
def test_resolve_precision(hardware: Hardware, requested: str, expected: str) -> None:
    assert resolve_precision(requested, hardware) == expected


def test_precision_errors() -> None:
    with pytest.raises(FeatkitError, match="fp16 only on a CUDA GPU"):
        resolve_precision("fp16", Hardware("cpu", cpu_flags=frozenset({"amx_bf16"})))
    with pytest.raises(FeatkitError, match="expected one of auto, fp32, bf16, fp16, got 'int8'"):
        resolve_precision("int8", Hardware("cpu"))
    assert parse_cpuinfo("no flags here") == frozenset()


def test_fingerprint_differences_name_the_changed_fields() -> None:
    old = {"model": "m", "precision": "bf16", "preprocessing": {"crop": 224, "resize": 256}}
    new = {"model": "m", "precision": "fp32", "preprocessing": {"crop": 448, "resize": 256}}
    assert differences(old, new, BINDING_KEYS) == [
        "preprocessing.crop: 224 -> 448",
        "precision: bf16 -> fp32",
    ]
    assert differences(old, old, BINDING_KEYS) == []
