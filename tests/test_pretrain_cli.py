"""`featkit pretrain` from the command line, and its checkpoint read by `featkit extract`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from featkit.cli import app
from tests.helpers import digits_folder

runner = CliRunner()
TINY = json.dumps({"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2})
FAST = [
    "--image-size", "16", "--epochs", "1", "--batch-size", "10", "--out-dim", "32",
    "--hidden-dim", "32", "--local-crops", "1", "--precision", "fp32", "--warmup-epochs", "0",
]  # fmt: skip


def test_pretrain_then_extract(tmp_path: Path) -> None:
    data = digits_folder(tmp_path, per_class=2, size=16)
    ckpt = tmp_path / "dino.safetensors"
    args = ["pretrain", str(data), "--arch", "timm:vit_tiny_patch16_224", "--model-kwargs", TINY]
    result = runner.invoke(app, [*args, *FAST, "--out", str(ckpt)])
    assert result.exit_code == 0, result.output
    assert ckpt.is_file() and "featkit extract" in result.stdout
    # Rerunning without --resume refuses to overwrite; with it, a finished run is kept.
    again = runner.invoke(app, [*args, *FAST, "--out", str(ckpt)])
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = runner.invoke(app, [*args, *FAST, "--out", str(ckpt), "--resume"])
    assert resumed.exit_code == 0, resumed.output

    store = tmp_path / "store.h5"
    extract = ["extract", str(data), "--model", "timm:vit_tiny_patch16_224"]
    result = runner.invoke(app, [*extract, "--weights", str(ckpt), "--out", str(store)])
    assert result.exit_code == 0, result.output
    from featkit.store.reader import open_store

    with open_store(store) as s:
        features = s.features("cls")
    assert features.shape == (20, 32) and np.isfinite(features).all()


def test_pretrain_user_errors_are_one_line(tmp_path: Path) -> None:
    data = digits_folder(tmp_path, per_class=1, size=16)
    result = runner.invoke(app, ["pretrain", str(data), "--epochs", "1"])
    assert result.exit_code == 2 and "--arch" in result.output
    assert "Traceback" not in result.output
    bad = runner.invoke(
        app, ["pretrain", str(data), "--arch", "pixels", "--model-kwargs", "[1]", "--epochs", "1"]
    )
    assert bad.exit_code == 2 and "--model-kwargs" in bad.output
    mixed = runner.invoke(
        app,
        [
            "pretrain",
            str(data),
            "--arch",
            "dino_vits16",
            "--init",
            "dinov2_vits14",
            "--epochs",
            "1",
        ],
    )
    assert mixed.exit_code == 2 and "--init" in mixed.output


def test_pretrain_help_has_examples() -> None:
    result = runner.invoke(app, ["pretrain", "--help"])
    assert result.exit_code == 0
    assert "Examples" in result.output and "--centering" in result.output
