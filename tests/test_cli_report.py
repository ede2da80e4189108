"""`featkit report` and `featkit attention` as a user runs them."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from typer.testing import CliRunner

from featkit.cli import app
from tests.test_plots import assert_real_png, make_workspace

runner = CliRunner()


def test_report_command_writes_tables_plots_and_html(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    result = runner.invoke(app, ["report", str(workspace), "--shots", "10"])
    assert result.exit_code == 0, result.output
    folder = workspace / "report"
    expected = {
        "comparison.csv",
        "comparison.md",
        "comparison.tex",
        "data_summary.csv",
        "report.html",
        "shots_balanced_accuracy.png",
        "confusion.png",
        "recall_vs_class_size.png",
        "pca_toy_tiny-a.png",
    }
    assert {p.name for p in folder.iterdir()} == expected
    assert "tiny-b" in result.stdout and "finetune" in result.stdout  # the table is printed
    table = pd.read_csv(folder / "comparison.csv", dtype={"shots": str})
    best_at_10 = table[(table["shots"] == "10") & table["best"]]
    assert list(best_at_10["method"]) == ["finetune-lora"]

    # Self-contained: every picture is embedded, nothing refers to a file beside it.
    html = (folder / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 4
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'src="(?!data:)', html)
    assert '<td class="num best">' in html


def test_report_other_metric_and_out_folder(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    out = tmp_path / "elsewhere"
    result = runner.invoke(
        app, ["report", "-w", str(workspace), "--metric", "accuracy", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert (out / "shots_accuracy.png").is_file()
    assert "accuracy" in (out / "comparison.tex").read_text()


def test_report_errors_are_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "expected results in" in result.output and "featkit probe" in result.output
    assert "Traceback" not in result.output
    workspace = make_workspace(tmp_path / "ws")
    result = runner.invoke(app, ["report", str(workspace), "--shots", "7"])
    assert result.exit_code == 2
    assert "--shots 7: expected one of the evaluated shot counts 0, 1, 5, 10, all" in result.output


def test_help_has_examples() -> None:
    for command in ("report", "attention"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0
        assert "Examples:" in result.output


def _image(path: Path) -> Path:
    # A bright square on a dark background, larger than the model input (it gets resized).
    pixels = np.zeros((90, 120, 3), dtype=np.uint8)
    pixels[20:70, 40:90] = (230, 200, 40)
    Image.fromarray(pixels).save(path)
    return path


def test_attention_command_writes_maps(tmp_path: Path) -> None:
    image = _image(tmp_path / "square.png")
    out = tmp_path / "maps"
    args = [
        "attention",
        str(image),
        "--model",
        "timm:vit_tiny_patch16_224",
        "--random-init",
        "--image-size",
        "64",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, [*args, "--point", "60,45", "--pca"])
    assert result.exit_code == 0, result.output
    for name in ("square_attention.png", "square_point.png", "square_pca.png"):
        assert_real_png(out / name)

    result = runner.invoke(app, [*args, "--point", "500,10"])
    assert result.exit_code == 2
    assert "--point 500,10: expected pixel coordinates inside the image" in result.output
    result = runner.invoke(app, [*args, "--point", "12"])
    assert result.exit_code == 2 and "expected pixel coordinates as X,Y" in result.output
    result = runner.invoke(app, [*args[:1], str(tmp_path / "nope.png"), *args[2:]])
    assert result.exit_code == 2 and "expected an image file" in result.output


def test_report_target_opens_with_the_answer_and_the_data(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    result = runner.invoke(app, ["report", str(workspace), "--target", "80"])
    assert result.exit_code == 0, result.output
    folder = workspace / "report"
    answer = (folder / "answer.md").read_text()
    assert answer.startswith("Target: 80.0 % balanced_accuracy on toy.")
    assert result.stdout.startswith("Target: 80.0 % balanced_accuracy on toy.")
    # Every claim of the answer agrees with the table's intervals.
    table = pd.read_csv(folder / "comparison.csv", dtype={"shots": str})
    for model in ("tiny-a", "tiny-b"):
        rows = table[table["model"] == model]
        if (rows["ci95_low"] >= 80).any():
            assert f"{model} reaches it" in answer
        elif (rows["ci95_high"] >= 80).any():
            assert f"{model} may reach it" in answer
        else:
            assert f"{model} falls short" in answer
    # The data summary counts the store's ok rows in the probes' 80/20 split:
    # 40/20/10/5 images → test 8/4/2/1, train 32/16/8/4.
    data = pd.read_csv(folder / "data_summary.csv")
    assert dict(zip(data["class"], data["test"], strict=True)) == {
        "cat": 8,
        "dog": 4,
        "fox": 2,
        "owl": 1,
    }
    assert "toy: 4 classes, 60 training and 15 test images; 1 failed to decode" in result.stdout
    html = (folder / "report.html").read_text()
    assert (
        html.index("<h2>Answer</h2>") < html.index("<h2>Data</h2>") < html.index("<h2>Comparison")
    )
    assert "3 classes have fewer than 5 test images" in html
