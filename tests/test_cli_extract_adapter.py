"""`featkit extract --adapter`: tuned features in a new store that `featkit probe` reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from featkit.cli import app
from featkit.store.reader import open_store
from tests.helpers import digits_folder

runner = CliRunner()


def test_extract_with_a_finetune_adapter(tmp_path: Path) -> None:
    data = digits_folder(tmp_path, per_class=4, size=32)
    ws = str(tmp_path / "ws")
    tuned = runner.invoke(
        app,
        [
            "finetune",
            str(data),
            "--model",
            "featkit-tiny-dino",
            "--method",
            "lora",
            "--shots",
            "1",
            "--episodes",
            "1",
            "--steps",
            "3",
            "--no-flip",
            "-w",
            ws,
        ],
    )
    assert tuned.exit_code == 0, tuned.output
    (episode,) = sorted((tmp_path / "ws" / "finetune").rglob("episode-0"))

    base = runner.invoke(app, ["extract", str(data), "--model", "featkit-tiny-dino", "-w", ws])
    assert base.exit_code == 0, base.output
    result = runner.invoke(
        app,
        ["extract", str(data), "--model", "featkit-tiny-dino", "--adapter", str(episode), "-w", ws],
    )
    assert result.exit_code == 0, result.output
    stores = sorted((tmp_path / "ws" / data.name).glob("featkit-tiny-dino-lora-*.h5"))
    assert len(stores) == 1
    with (
        open_store(stores[0]) as store,
        open_store(stores[0].with_name("featkit-tiny-dino.h5")) as plain,
    ):
        assert "+adapter:" in store.fingerprint["weights_sha256"]
        tuned_cls, plain_cls = store.features("cls"), plain.features("cls")
    assert tuned_cls.shape == plain_cls.shape
    assert not np.allclose(tuned_cls, plain_cls)  # the adapter changed the features

    probed = runner.invoke(
        app,
        [
            "probe",
            str(stores[0]),
            "--shots",
            "1",
            "--episodes",
            "1",
            "--protocols",
            "knn",
            "-w",
            ws,
        ],
    )
    assert probed.exit_code == 0, probed.output

    # Weights that are not the ones adapter.json was written for are refused in one line.
    weights = episode / "adapter.safetensors"
    data_bytes = bytearray(weights.read_bytes())
    data_bytes[-1] ^= 0x01
    weights.write_bytes(bytes(data_bytes))
    refused = runner.invoke(
        app,
        ["extract", str(data), "--model", "featkit-tiny-dino", "--adapter", str(episode), "-w", ws],
    )
    assert refused.exit_code == 2, refused.output
    assert "damaged or mixed" in refused.output and "Traceback" not in refused.output


def test_extract_with_a_missing_adapter_is_one_line(tmp_path: Path) -> None:
    data = digits_folder(tmp_path, per_class=2, size=32)
    result = runner.invoke(
        app,
        [
            "extract",
            str(data),
            "--model",
            "featkit-tiny-dino",
            "--adapter",
            str(tmp_path / "nope"),
            "-w",
            str(tmp_path / "ws"),
        ],
    )
    assert result.exit_code == 2
    assert "error" in result.output and "nope" in result.output
