"""``featkit info`` shows how the features were computed: rule, preprocessing, precision."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from featkit.cli import app
from tests.helpers import digits_folder


@pytest.mark.slow  # a whole extraction pass with a ViT-S: about 12 s on 2 cores
def test_info_shows_the_position_rule_the_preprocessing_and_the_precision(
    tmp_path: Path,
) -> None:
    data = digits_folder(tmp_path, per_class=1)
    ws = tmp_path / "ws"
    runner = CliRunner()
    args = ["extract", str(data), "--model", "dinov2_vits14", "--random-init"]
    args += ["--image-size", "28", "--precision", "fp32", "--workers", "0", "-w", str(ws)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (store,) = (ws / "digits").glob("*.h5")
    info = runner.invoke(app, ["info", str(store)], env={"COLUMNS": "200"})
    assert info.exit_code == 0, info.output
    text = info.stdout
    assert "official-dinov2: bicubic scale (n+0.1)/M, no antialias" in text
    for needle in ("fingerprint.preprocessing.resize", "32", "fingerprint.preprocessing.crop"):
        assert needle in text
    assert "fingerprint.precision" in text and "fp32" in text
