"""Faults seen from the command line: one line, a non-zero exit, and a rerun that resumes."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featkit import atomic, diskspace
from featkit.cli import app
from featkit.extraction.run import partial_dir
from featkit.store.reader import open_store
from featkit.store.writer import StoreWriter
from tests.helpers import digits_folder
from tests.test_evaluate import make_store
from tests.test_faults import zero_dataset

runner = CliRunner()
MODEL = ["--model", "timm:vit_tiny_patch16_224", "--random-init", "--image-size", "32"]
STORE = "timm-vit_tiny_patch16_224-random.h5"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _one_line(result: object, *words: str, code: int = 2) -> str:
    assert result.exit_code == code, result.output  # type: ignore[attr-defined]
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert "Traceback" not in result.output  # type: ignore[attr-defined]
    last = lines[-1]
    for word in words:
        assert word in last, last
    return last


def _no_space(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(diskspace.shutil, "disk_usage", lambda _: usage._replace(free=4096))


def test_extract_on_a_full_disk_is_one_line_then_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = digits_folder(tmp_path, per_class=1)
    ws = tmp_path / "ws"
    _no_space(monkeypatch, tmp_path)
    result = runner.invoke(app, ["extract", str(data), *MODEL, "-w", str(ws)])
    _one_line(result, "error: disk full", "needs about", "free", "rerun")
    assert not (ws / "digits" / STORE).exists()
    monkeypatch.undo()
    result = runner.invoke(app, ["extract", str(data), *MODEL, "-w", str(ws)])
    assert result.exit_code == 0, result.output
    with open_store(ws / "digits" / STORE) as store:
        assert store.num_rows == 10 and store.verify() == []


def test_import_on_a_full_disk_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.save(tmp_path / "f.npy", np.ones((30, 16), np.float32))
    (tmp_path / "l.csv").write_text("label\n" + "a\nb\n" * 15)
    _no_space(monkeypatch, tmp_path)
    args = ["import", str(tmp_path / "f.npy"), "--labels", str(tmp_path / "l.csv")]
    result = runner.invoke(app, [*args, "-w", str(tmp_path / "ws")])
    _one_line(result, "error: disk full: importing 30 rows", "rerun")
    assert not list((tmp_path).rglob("*.h5*"))


def test_probe_on_a_full_disk_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_store(tmp_path, "m")

    def full(path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "fsync_file", full)
    args = ["probe", "-w", str(tmp_path), "--protocols", "prototype", "--episodes", "1"]
    result = runner.invoke(app, [*args, "--shots", "1"])
    _one_line(result, "error: disk full: writing", "rerun")
    kept = [p for p in (tmp_path / "results").rglob("*") if p.is_file()]
    assert [p.name for p in kept] in ([], [".lock"])  # no result file, no temporary file


def test_probe_refuses_a_damaged_store_naming_it(tmp_path: Path) -> None:
    path = make_store(tmp_path, "m")
    with h5py.File(path, "r+") as h5:
        h5["images/label"][4] = 57
    args = ["probe", "-w", str(tmp_path), "--protocols", "prototype", "--episodes", "1"]
    result = runner.invoke(app, [*args, "--shots", "1"])
    _one_line(result, "m.h5", "label 57", "out of range for 3 classes")
    assert not (tmp_path / "results" / "results.csv").exists()


def test_info_verify_finds_zeroed_features(tmp_path: Path) -> None:
    path = make_store(tmp_path, "m")
    result = runner.invoke(app, ["info", str(path), "--verify"])
    assert result.exit_code == 0 and "checksums and finite features verified" in result.output
    zero_dataset(path, "features/patch_mean")
    assert runner.invoke(app, ["info", str(path)]).exit_code == 0  # a plain info reads rows only
    result = runner.invoke(app, ["info", str(path), "--verify"])
    _one_line(result, "m.h5: damaged: /features/patch_mean does not match its checksum")


def test_ctrl_c_during_merge_exits_130_and_the_rerun_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = digits_folder(tmp_path, per_class=1)
    ws = tmp_path / "ws"

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(StoreWriter, "write_images", interrupted)
    result = runner.invoke(app, ["extract", str(data), *MODEL, "-w", str(ws)])
    assert result.exit_code == 130, result.output
    assert "rerun the same command to resume" in result.stderr
    target = ws / "digits" / STORE
    assert not target.exists() and any(partial_dir(target).glob("shard-*.h5"))
    monkeypatch.undo()
    result = runner.invoke(app, ["extract", str(data), *MODEL, "-w", str(ws)])
    assert result.exit_code == 0 and "extracted 0" in result.output, result.output
