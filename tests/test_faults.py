"""Fault injection: full disks, files damaged between write and rename, damaged stores.

Every fault is injected in-process. A full disk that HDF5 does not report is imitated
by zeroing a dataset's bytes in the temporary file at the moment it is fsynced, i.e.
after h5py closed it without an error and before it would be renamed into place.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

import tests.test_extract as extraction_tests
from featkit import diskspace
from featkit.backbones import Backbone
from featkit.data.images import discover
from featkit.errors import DiskFullError, FeatkitError, StoreDamagedError
from featkit.extraction import run as extract_mod
from featkit.extraction.run import ExtractSettings, extract, partial_dir
from featkit.store.reader import StoreWriter, import_features, open_store
from tests.helpers import digits_folder

SETTINGS = ExtractSettings(precision="fp32", batch_size=4, shard_size=8, workers=0)


# The extraction tests' tiny ViT and their one-thread rule (bit-comparable runs).
one_thread = extraction_tests.one_thread
backbone = extraction_tests.backbone


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_folder(tmp_path_factory.mktemp("faults"), per_class=2)  # 20 images


@pytest.fixture(scope="module")
def reference(data: Path, backbone: Backbone, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run: the independent truth every faulty run must end at."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    extract(discover(data), backbone, out, SETTINGS)
    return out


def _arrays(path: Path) -> dict[str, Any]:
    with open_store(path) as store:
        got: dict[str, Any] = {
            "paths": store.paths(include_failed=True),
            "labels": store.labels(include_failed=True).tolist(),
            "status": store.status(),
        }
        for kind in store.feature_kinds:
            got[kind] = store.raw_rows(kind, 0, store.num_rows)
    return got


def assert_identical(a: Path, b: Path) -> None:
    left, right = _arrays(a), _arrays(b)
    assert left.keys() == right.keys()
    for key, value in left.items():
        if isinstance(value, np.ndarray):
            assert value.tobytes() == right[key].tobytes(), key
        else:
            assert value == right[key], key


def zero_dataset(path: Path, name: str) -> None:
    """Overwrite the stored bytes of dataset ``name`` with zeros, as a lost write leaves."""
    with h5py.File(path, "r") as h5:
        ds = h5[name]
        if ds.chunks is None:
            spans = [(ds.id.get_offset(), ds.id.get_storage_size())]
        else:
            spans = [
                (ds.id.get_chunk_info(i).byte_offset, ds.id.get_chunk_info(i).size)
                for i in range(ds.id.get_num_chunks())
            ]
    with open(path, "rb+") as handle:
        for offset, size in spans:
            handle.seek(offset)
            handle.write(b"\0" * size)


def lose_writes_at_fsync(monkeypatch: pytest.MonkeyPatch, file_part: str, name: str) -> list[str]:
    """Make the next fsync of a temporary file whose name has ``file_part`` lose ``name``."""
    real = os.fsync
    hit: list[str] = []

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if not hit and file_part in os.path.basename(target) and target.endswith(".tmp"):
            hit.append(target)
            zero_dataset(Path(target), name)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return hit


def test_a_shard_lost_to_a_full_disk_is_never_kept(
    data: Path, backbone: Backbone, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "s.h5"
    hit = lose_writes_at_fsync(monkeypatch, "shard-000001", "cls")
    with pytest.raises(StoreDamagedError, match=r"failed verification.*rerun"):
        extract(discover(data), backbone, out, SETTINGS)
    assert hit and not out.exists()
    assert not (partial_dir(out) / "shard-000001.h5").exists()  # never renamed into place
    monkeypatch.undo()  # space freed
    report = extract(discover(data), backbone, out, SETTINGS)
    assert report.extracted == 20 - 8  # shard 0 was kept, shards 1 and 2 done now
    assert_identical(out, reference)


def test_a_store_lost_to_a_full_disk_keeps_the_old_one(
    data: Path, backbone: Backbone, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "s.h5"
    shutil.copy(reference, out)
    extra = tmp_path / "more"
    shutil.copytree(data, extra)
    shutil.copy(extra / "3" / sorted(os.listdir(extra / "3"))[0], extra / "3" / "new.png")
    lose_writes_at_fsync(monkeypatch, "s.h5", "features/patch_mean")
    with pytest.raises(StoreDamagedError):
        extract(discover(extra), backbone, out, SETTINGS)
    assert_identical(out, reference)  # the old store is untouched
    monkeypatch.undo()
    report = extract(discover(extra), backbone, out, SETTINGS)
    assert (report.extracted, report.rows) == (0, 21)  # its shard was whole: kept
    with open_store(out) as store:
        assert store.verify() == []


def test_a_damaged_shard_on_disk_is_extracted_again(
    data: Path, backbone: Backbone, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "s.h5"

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(extract_mod, "merge", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract(discover(data), backbone, out, SETTINGS)
    monkeypatch.undo()
    zero_dataset(partial_dir(out) / "shard-000002.h5", "cls")  # damaged after the rename
    report = extract(discover(data), backbone, out, SETTINGS)
    assert report.extracted == 4  # only the damaged shard (rows 16..19)
    assert_identical(out, reference)


def test_enospc_while_writing_is_one_line_and_resumes(
    data: Path, backbone: Backbone, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "s.h5"
    real = StoreWriter.write_features

    def full(self: StoreWriter, *args: Any, **kwargs: Any) -> None:
        raise OSError("Can't write data (file write failed: errno = 28, No space left on device)")

    monkeypatch.setattr(StoreWriter, "write_features", full)
    with pytest.raises(DiskFullError, match=r"disk full: writing .*s\.h5.*rerun") as err:
        extract(discover(data), backbone, out, SETTINGS)
    assert "\n" not in str(err.value)
    assert not out.exists() and not out.with_name("s.h5.tmp").exists()
    monkeypatch.setattr(StoreWriter, "write_features", real)
    report = extract(discover(data), backbone, out, SETTINGS)
    assert report.extracted == 0  # every shard was kept; only the merge ran again
    assert_identical(out, reference)


def test_too_little_space_is_refused_before_writing(
    data: Path, backbone: Backbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(diskspace.shutil, "disk_usage", lambda _: usage._replace(free=1000))
    out = tmp_path / "s.h5"
    with pytest.raises(DiskFullError, match=r"needs about .* free; free space and rerun"):
        extract(discover(data), backbone, out, SETTINGS)
    assert not out.exists() and not any(partial_dir(out).glob("shard-*"))
    csv = tmp_path / "labels.csv"
    csv.write_text("label\n" + "a\n" * 50)
    with pytest.raises(DiskFullError, match="disk full: importing 50 rows"):
        import_features(np.ones((50, 400), np.float32), csv, "m", tmp_path / "ws")
    assert not (tmp_path / "ws").exists() or not any((tmp_path / "ws").rglob("*.h5*"))


def test_enospc_from_the_os_is_recognised() -> None:
    assert diskspace.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert diskspace.is_disk_full(OSError("Can't close file (errno = 28, No space left)"))
    assert not diskspace.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not diskspace.is_disk_full(ValueError("No space left on device"))


# -- damaged stores ---------------------------------------------------------------------
def _toy_store(tmp_path: Path, classes: int = 10) -> Path:
    rng = np.random.default_rng(0)
    csv = tmp_path / "labels.csv"
    csv.write_text("label\n" + "".join(f"c{i % classes}\n" for i in range(40)))
    return import_features(rng.normal(size=(40, 8)).astype(np.float32), csv, "m", tmp_path)


def test_zeroed_feature_bytes_are_found(tmp_path: Path) -> None:
    path = _toy_store(tmp_path)
    zero_dataset(path, "features/cls")
    with open_store(path) as store:
        with pytest.raises(StoreDamagedError, match=r"m\.h5: damaged: /features/cls does not"):
            store.features("cls")
        assert store.verify() == ["/features/cls does not match its checksum"]


def test_nan_features_in_ok_rows_are_found(tmp_path: Path) -> None:
    path = _toy_store(tmp_path)
    with h5py.File(path, "r+") as h5:
        h5["features/cls"][5, 3] = np.nan
    with open_store(path) as store:
        with pytest.raises(StoreDamagedError, match="expected finite cls features"):
            store.features("cls", split=None)
        damage = store.verify()
    assert "/features/cls has NaN or inf in ok rows" in damage
    assert "/features/cls does not match its checksum" in damage


def test_out_of_range_label_is_refused_at_open(tmp_path: Path) -> None:
    path = _toy_store(tmp_path)
    with h5py.File(path, "r+") as h5:
        h5["images/label"][7] = 57
    with pytest.raises(
        StoreDamagedError, match=r"label 57 in row 7 .* out of range for 10 classes"
    ):
        open_store(path)


def test_changed_per_row_array_is_refused_at_open(tmp_path: Path) -> None:
    path = _toy_store(tmp_path)
    with h5py.File(path, "r+") as h5:
        h5["images/label"][7] = 3 if h5["images/label"][7] != 3 else 4  # in range, but wrong
    with pytest.raises(StoreDamagedError, match="/images/label does not match its checksum"):
        open_store(path)


def test_truncated_store_is_one_line(tmp_path: Path) -> None:
    path = _toy_store(tmp_path)
    size = path.stat().st_size
    with open(path, "rb+") as handle:
        handle.truncate(size // 2)
    with pytest.raises(FeatkitError) as err, open_store(path) as store:
        store.features("cls")
    assert "m.h5" in str(err.value) and "\n" not in str(err.value)


def test_import_removes_temporary_files_of_killed_imports(tmp_path: Path) -> None:
    store = _toy_store(tmp_path)
    dead, alive = 2**22 + 12345, os.getppid()  # pid_max is at most 2**22: never running
    stale = store.with_name(f".{store.name}.{dead}.tmp")
    running = store.with_name(f".{store.name}.{alive}.tmp")
    stale.write_bytes(b"\0" * 1000)
    running.write_bytes(b"\0" * 1000)
    csv = tmp_path / "labels.csv"
    import_features(np.ones((40, 8), np.float32), csv, "m", tmp_path, overwrite=True)
    assert not stale.exists() and running.exists()
