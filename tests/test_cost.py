"""What each route costs: seconds and peak memory recorded by extraction, probe and
fine-tune, and the report's cost table built from them (or left out for older results)."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

from featkit.backbones import create_backbone
from featkit.cli import app
from featkit.cli.report import _cost_table
from featkit.data.images import discover
from featkit.evaluation.probe import EvalData, ProbeSettings, ProtocolSpec, evaluate_arrays, probe
from featkit.evaluation.splits import Sweep, parse_shots
from featkit.extraction.run import ExtractSettings, extract
from featkit.report.build import write_report
from featkit.results.io import RESULT_COLUMNS, read_results
from featkit.store.reader import open_store
from featkit.tune.run import FinetuneSettings, labelled_images, run_finetune
from tests.helpers import digits_folder

runner = CliRunner()


def rss_mb_now() -> float:
    """The process's peak RSS, read here independently of featkit.cost."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def per_episode(rows: pd.DataFrame) -> pd.DataFrame:
    keys = ["protocol", "shots", "episode"]
    return rows.drop_duplicates(keys)[[*keys, "seconds", "peak_mb"]]


def test_cost_columns_come_after_the_existing_ones() -> None:
    assert RESULT_COLUMNS[-2:] == ("seconds", "peak_mb")
    assert RESULT_COLUMNS.index("fitted") == len(RESULT_COLUMNS) - 3


def test_probe_seconds_are_positive_and_bounded_by_the_wall_clock() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 12)
    features = rng.normal(size=(labels.size, 16)).astype(np.float32) + labels[:, None]
    data = EvalData(
        dataset="toy",
        model="m",
        paths=[f"{i:03d}.png" for i in range(labels.size)],
        labels=labels,
        features={"cls": features},
    )
    settings = ProbeSettings(
        protocols=(ProtocolSpec.of("knn"), ProtocolSpec.of("prototype"), ProtocolSpec.of("kmeans")),
        shots=parse_shots("2,all"),
        episodes=2,
        bootstrap=50,
    )
    start = time.perf_counter()
    rows = evaluate_arrays(data, settings).results
    wall = time.perf_counter() - start
    episodes = per_episode(rows)
    # Every metric row of an episode repeats that episode's cost.
    assert rows.groupby(["protocol", "shots", "episode"])["seconds"].nunique().max() == 1
    assert len(episodes) == 2 * 3 + 2  # knn, prototype at 2 (x2) and all; kmeans x2
    assert (episodes["seconds"] > 0).all()
    # Fit + predict only: together they fit inside the call that made them.
    assert episodes["seconds"].sum() <= wall
    assert (episodes["peak_mb"] > 0).all() and (episodes["peak_mb"] <= rss_mb_now() + 1).all()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float, int]:
    """A pixels store of 60 real digits (extraction timed here) and its probe rows."""
    root = tmp_path_factory.mktemp("cost")
    data = digits_folder(root, per_class=6, size=16)
    store = root / "ws" / "digits" / "pixels.h5"
    start = time.perf_counter()
    extract(discover(data), create_backbone("pixels"), store, ExtractSettings(workers=0))
    wall = time.perf_counter() - start
    settings = ProbeSettings(
        protocols=(ProtocolSpec.of("prototype"),),
        shots=parse_shots("1,all"),
        episodes=2,
        bootstrap=50,
    )
    probe([store], settings, workspace=root / "ws")
    return root, wall, 60


def test_extraction_cost_is_in_the_store_and_info_shows_it(
    workspace: tuple[Path, float, int],
) -> None:
    root, wall, n = workspace
    store = root / "ws" / "digits" / "pixels.h5"
    with open_store(store) as opened:
        cost = json.loads(opened.attr("cost"))
    assert cost["images"] == n and cost["device"] == "cpu"
    assert 0 < cost["seconds"] <= wall
    # Both are rounded when stored (seconds to 4 decimals, per image to 6): allow for it.
    assert cost["seconds_per_image"] == pytest.approx(cost["seconds"] / n, rel=1e-3, abs=2e-6)
    assert 0 < cost["peak_mb"] <= rss_mb_now() + 1
    shown = runner.invoke(app, ["info", str(store)], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert f"{n} images in" in shown.output and "images/s" in shown.output
    as_json = runner.invoke(app, ["info", str(store), "--json"])
    assert json.loads(as_json.output)["cost"]["images"] == n


def test_report_shows_the_cost_of_every_route(workspace: tuple[Path, float, int]) -> None:
    root = workspace[0]
    ws = root / "ws"
    rows = read_results(ws)
    files = write_report(ws, root / "report")
    assert files.cost is not None
    cost = pd.read_csv(root / "report" / "cost.csv")
    assert list(cost["method"]) == ["prototype"]
    expected = per_episode(rows)
    assert cost.loc[0, "n_episodes"] == len(expected) == 3  # 1-shot x2 and all
    assert cost.loc[0, "seconds_per_episode"] == pytest.approx(expected["seconds"].mean(), 1e-4)
    assert cost.loc[0, "seconds_max"] == pytest.approx(expected["seconds"].max(), 1e-4)
    with open_store(ws / "digits" / "pixels.h5") as opened:
        per_image = json.loads(opened.attr("cost"))["seconds_per_image"]
    assert cost.loc[0, "extract_s_per_image"] == pytest.approx(per_image, 1e-4)
    # Each comparison cell carries the mean seconds of its own episodes.
    cells = pd.read_csv(root / "report" / "comparison.csv", dtype={"shots": str})
    at_one = expected[expected["shots"] == "1"]["seconds"].mean()
    assert cells.set_index("shots").loc["1", "seconds"] == pytest.approx(at_one, abs=1e-4)
    page = files.html.read_text()
    assert "<h2>Cost</h2>" in page and "extraction ms/image" in page
    # What `featkit report` prints after the comparison.
    console = Console(width=200, record=True)
    console.print(_cost_table(files.cost))
    printed = console.export_text()
    assert "Cost per route" in printed and "per episode" in printed and "prototype" in printed


def test_older_results_without_cost_columns_still_report(tmp_path: Path) -> None:
    header = "dataset,model,feature,protocol,params,shots,episode,metric,value\n"
    body = "".join(
        f"d,m,cls,knn,,{s},{e},balanced_accuracy,{v}\n"
        for s, e, v in (("1", 0, 0.5), ("1", 1, 0.6), ("all", 0, 0.8))
    )
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "results.csv").write_text(header + body)
    files = write_report(tmp_path)
    assert files.cost is None
    assert "<h2>Cost</h2>" not in files.html.read_text()
    assert not (files.folder / "cost.csv").exists()
    cells = pd.read_csv(files.folder / "comparison.csv")
    assert cells["seconds"].isna().all()


def test_finetune_records_training_seconds_and_peak_memory(tmp_path: Path) -> None:
    data = digits_folder(tmp_path, per_class=4, size=16)
    backbone = create_backbone("pixels")
    start = time.perf_counter()
    with threadpool_limits(limits=1):
        run = run_finetune(
            labelled_images(data),
            backbone,
            FinetuneSettings(method="linear", precision="fp32", steps=20),
            Sweep(parse_shots("1"), episodes=2),
            workspace=tmp_path / "ws",
            save_adapters=False,
        )
    wall = time.perf_counter() - start
    seconds = [o.seconds for o in run.outcomes]
    assert all(s > 0 for s in seconds) and sum(seconds) <= wall
    assert all(0 < o.peak_mb <= rss_mb_now() + 1 for o in run.outcomes)
    rows = per_episode(read_results(tmp_path / "ws")).sort_values("episode")
    assert rows["seconds"].tolist() == pytest.approx(seconds, abs=1e-9)


def test_on_a_gpu_the_peak_is_torchs_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU in the default run: stand in for torch.cuda's counters to check which one
    # measure() reads and that it starts a new peak first.
    import torch

    from featkit.cost import measure

    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: calls.append(f"reset {d}"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 3 * 2**20)
    with measure("cuda:0") as cost:
        calls.append("work")
    assert calls == ["reset cuda:0", "work"]
    assert cost.peak_mb == 3.0 and cost.seconds > 0
