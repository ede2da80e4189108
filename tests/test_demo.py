"""`featkit demo` end to end at a reduced size: data, three stores, probes, LoRA, report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from featkit.cli import app
from featkit.store.reader import open_store


def test_demo_runs_the_whole_story(tmp_path: Path) -> None:
    args = ["demo", "-w", str(tmp_path), "--max-per-class", "12", "--episodes", "2"]
    args += ["--shots", "1,all", "--finetune-shots", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "knn" in result.output and "pixels" in result.output

    stores = sorted(p.name for p in (tmp_path / "digits").glob("*.h5"))
    assert stores == ["featkit-tiny-dino-random.h5", "featkit-tiny-dino.h5", "pixels.h5"]
    with open_store(tmp_path / "digits" / "featkit-tiny-dino.h5") as store:
        n_images = len(list((tmp_path / "data" / "digits").rglob("*.png")))
        assert store.num_rows == n_images
        assert store.features("cls").shape == (n_images, 128)

    rows = pd.read_csv(tmp_path / "results" / "results.csv", dtype={"shots": str})
    assert {"knn", "logistic", "prototype", "balanced", "kmeans", "finetune-lora"} <= set(
        rows["protocol"]
    )
    assert set(rows["model"]) == {"featkit-tiny-dino", "featkit-tiny-dino-random", "pixels"}
    assert {"0", "1", "all"} <= set(rows["shots"])
    report = tmp_path / "report"
    for name in ("comparison.md", "comparison.csv", "comparison.tex", "report.html"):
        assert (report / name).stat().st_size > 0


def test_demo_random_twin_is_the_same_every_run(tmp_path: Path) -> None:
    """The baseline must not change between runs (it is drawn from a fixed seed)."""
    from featkit.demo import DemoSettings, run_demo

    settings = DemoSettings(
        max_per_class=6, episodes=1, shots="all", finetune_shots="", digit_size=32
    )
    features = []
    for run in ("a", "b"):
        run_demo(tmp_path / run, settings)
        with open_store(tmp_path / run / "digits" / "featkit-tiny-dino-random.h5") as store:
            features.append(store.features("cls"))
    assert (features[0] == features[1]).all()
