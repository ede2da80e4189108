"""``featkit extract / info / import`` from the command line, including kill -9 and resume."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featkit.cli import app
from featkit.extraction.run import partial_dir
from featkit.store.reader import open_store
from tests.helpers import digits_folder
from tests.test_extract import assert_same_store

MODEL = ["--model", "timm:vit_tiny_patch16_224", "--random-init"]
STORE = "timm-vit_tiny_patch16_224-random.h5"
REPO = Path(__file__).resolve().parents[1]

runner = CliRunner()


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 in the subprocesses: same kernels
    yield
    torch.set_num_threads(before)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    return env


def _invoke(*args: str | Path) -> object:
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(result: object, *words: str) -> None:
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    err = errors[0]
    assert "Traceback" not in result.output  # type: ignore[attr-defined]
    for word in words:
        assert word in err, err


def test_kill_9_mid_run_then_resume_gives_the_same_store(tmp_path: Path) -> None:
    data = digits_folder(tmp_path, per_class=12)  # 120 images
    common = [*MODEL, "--image-size", "64", "--precision", "fp32", "--shard-size", "6"]
    common += ["--batch-size", "3"]
    ws = tmp_path / "ws"
    cmd = [sys.executable, "-m", "featkit", "extract", str(data), *common, "-w", str(ws)]
    store = ws / "digits" / STORE
    work = partial_dir(store)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(work.glob("shard-*.h5")):
        assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "no shard appeared"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not store.exists(), "the run finished before the kill; the test proves nothing"
    shards = sorted(work.glob("shard-*.h5"))
    assert 1 <= len(shards) < 20
    # Resume and the uninterrupted reference run in this process (same seed, same
    # thread count, so the same kernels as the killed subprocess).
    resumed = _invoke(*cmd[3:])
    assert resumed.exit_code == 0, resumed.output  # type: ignore[attr-defined]
    summary = resumed.stdout  # type: ignore[attr-defined]
    assert "120 rows" in summary and f"reused {6 * len(shards)}" in summary, summary
    assert not work.exists()
    ref = _invoke("extract", data, *common, "-w", tmp_path / "ref")
    assert ref.exit_code == 0, ref.output  # type: ignore[attr-defined]
    assert_same_store(store, tmp_path / "ref" / "digits" / STORE)


KILL_IN_MERGE = """
import os, signal, sys
from featkit.store.reader import StoreWriter
from featkit.cli import main

def die(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

StoreWriter.write_images = die
sys.argv = ["featkit", *sys.argv[1:]]
main()
"""


def test_kill_9_during_merge_leaves_the_old_store_readable(tmp_path: Path) -> None:
    data = digits_folder(tmp_path, per_class=3)
    aside = tmp_path / "aside"
    aside.mkdir()
    for path in sorted((data / "5").iterdir())[:2]:
        shutil.move(path, aside / path.name)
    ws = tmp_path / "ws"
    first = _invoke("extract", data, *MODEL, "--image-size", "32", "-w", ws)
    assert first.exit_code == 0, first.output  # type: ignore[attr-defined]
    store = ws / "digits" / STORE
    for path in aside.iterdir():
        shutil.move(path, data / "5" / path.name)
    cmd = [sys.executable, "-c", KILL_IN_MERGE, "extract", str(data), *MODEL]
    cmd += ["--image-size", "32", "-w", str(ws)]
    killed = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert store.with_name(STORE + ".tmp").exists()  # the merge had started
    with open_store(store) as old:
        assert old.num_rows == 28
    again = _invoke("extract", data, *MODEL, "--image-size", "32", "-w", ws)
    assert again.exit_code == 0, again.output  # type: ignore[attr-defined]
    assert "extracted 0" in again.stdout  # type: ignore[attr-defined]
    with open_store(store) as new:
        assert new.num_rows == 30
    assert not store.with_name(STORE + ".tmp").exists() and not partial_dir(store).exists()


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    data = digits_folder(root, per_class=2)
    (data / "4" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    result = _invoke("extract", data, *MODEL, "--image-size", "32", "-w", root / "ws")
    torch.set_num_threads(before)
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    out = result.stdout  # type: ignore[attr-defined]
    assert "21 rows" in out and "extracted 21" in out and "1 failed" in out
    assert "failed: 4/broken.png" in out
    return data, root / "ws"


def test_rerun_is_up_to_date_and_mismatch_is_one_line(extracted: tuple[Path, Path]) -> None:
    data, ws = extracted
    again = _invoke("extract", data, *MODEL, "--image-size", "32", "-w", ws)
    assert again.exit_code == 0 and "up to date" in again.stdout  # type: ignore[attr-defined]
    other = _invoke("extract", data, *MODEL, "--image-size", "32", "--patches", "full", "-w", ws)
    _one_line_error(other, "patches: mean -> full", "--overwrite")


def test_info_describes_the_store(extracted: tuple[Path, Path]) -> None:
    _, ws = extracted
    result = runner.invoke(app, ["info", str(ws / "digits" / STORE)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = result.stdout
    for needle in ("21: 20 ok, 1 failed", "4/broken.png", "0: 2", "9: 2", "cls, patch_mean"):
        assert needle in text, text
    for needle in ("fingerprint.precision", "fingerprint.weights_sha256", "fingerprint.torch"):
        assert needle in text
    as_json = runner.invoke(app, ["info", str(ws / "digits" / STORE), "--json"])
    assert '"failed": 1' in as_json.stdout


@pytest.mark.parametrize(
    ("setup", "args", "words"),
    [
        ("missing", [], ["does not exist"]),
        ("empty", [], ["no images found"]),
        ("csv", [], ["gone.png"]),
        ("digits", ["--image-size", "33"], ["33", "16"]),
        ("digits", ["--weights", "w.pth"], ["--random-init"]),
        ("digits", ["--patches", "grid"], []),
    ],
)
def test_user_mistakes_exit_non_zero_with_one_line(
    tmp_path: Path, setup: str, args: list[str], words: list[str]
) -> None:
    target = tmp_path / "data"
    if setup == "empty":
        target.mkdir()
    elif setup == "csv":
        (tmp_path / "x.png").write_bytes(b"")
        target = tmp_path / "list.csv"
        target.write_text("path,label\nx.png,a\ngone.png,b\n")
    elif setup == "digits":
        target = digits_folder(tmp_path, per_class=1)
    result = _invoke("extract", target, *MODEL, *args, "-w", tmp_path / "ws")
    if setup == "digits" and args[0] == "--patches":
        assert result.exit_code == 2  # typer's own usage error  # type: ignore[attr-defined]
        return
    _one_line_error(result, *words)
    assert not (tmp_path / "ws").exists() or not list((tmp_path / "ws").rglob("*.h5"))


def test_import_then_info(tmp_path: Path) -> None:
    feats = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    np.save(tmp_path / "f.npy", feats)
    (tmp_path / "flowers.csv").write_text("label,split\n" + "a,train\nb,test\n" * 3)
    result = _invoke(
        "import",
        tmp_path / "f.npy",
        "--labels",
        tmp_path / "flowers.csv",
        "--name",
        "mine",
        "-w",
        tmp_path / "ws",
    )
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    store = tmp_path / "ws" / "flowers" / "mine.h5"
    with open_store(store) as opened:
        np.testing.assert_array_equal(opened.features(), feats)
    info = runner.invoke(app, ["info", str(store)], env={"COLUMNS": "200"})
    assert "6: 6 ok, 0 failed" in info.stdout and "a: 3" in info.stdout


def test_import_rejects_nan_rows(tmp_path: Path) -> None:
    feats = np.ones((5, 3))
    feats[4, 2] = np.nan
    np.save(tmp_path / "f.npy", feats)
    (tmp_path / "l.csv").write_text("label\n" + "a\n" * 5)
    result = _invoke(
        "import",
        tmp_path / "f.npy",
        "--labels",
        tmp_path / "l.csv",
        "--name",
        "x",
        "-w",
        tmp_path / "ws",
    )
    _one_line_error(result, "NaN or inf", "row(s): 4")
    wrong = _invoke("import", tmp_path / "l.csv", "--labels", tmp_path / "l.csv", "--name", "x")
    _one_line_error(wrong, ".npy")


@pytest.mark.parametrize("command", ["extract", "info", "import"])
def test_help_has_examples(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Examples" in result.stdout
