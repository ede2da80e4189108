"""The example third-party plugin, installed as a user installs it: its own distribution,
found through the ``featkit.protocols`` entry point, run by ``featkit probe``, shown by
``featkit report``, and conforming to featkit.protocols.testing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from featkit.cli import app
from featkit.protocols import list_protocols, ordered_protocols, registry
from featkit.protocols.testing import check_protocol
from tests.test_evaluate import make_store

EXAMPLE = Path(__file__).parents[1] / "examples" / "featkit-nearest-mean-plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install --target`` of a copy (the build leaves files beside the sources),
    offline: no dependencies, no isolated build environment."""
    work = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(EXAMPLE, work / "source")
    target = work / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    return target


@pytest.fixture
def plugin(installed: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The installed plugin on sys.path, and a registry that reads entry points afresh."""
    monkeypatch.syspath_prepend(str(installed))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_SOURCES", {})
    yield
    sys.modules.pop("featkit_nearest_mean", None)


def test_the_plugin_is_discovered_and_conforms(plugin: None) -> None:
    assert "nearest-mean" in list_protocols()
    assert "nearest-mean" not in ordered_protocols(default_only=True)  # runs when named
    assert ordered_protocols().index("nearest-mean") == ordered_protocols().index("prototype") + 1
    assert len(check_protocol("nearest-mean")) >= 10


def test_probe_and_report_show_the_plugin(plugin: None, tmp_path: Path) -> None:
    make_store(tmp_path)
    runner = CliRunner()
    listed = runner.invoke(app, ["probe", "--list-protocols"])
    assert "nearest-mean" in listed.output and "temperature: float = 0.1" in listed.output
    probe = [
        "probe", "-w", str(tmp_path), "--shots", "5", "--episodes", "2",
        "--protocols", "balanced,nearest-mean,knn,prototype", "--param", "balanced.base=knn",
    ]  # fmt: skip
    result = runner.invoke(app, probe)
    assert result.exit_code == 0, result.output
    assert "nearest-mean" in result.output
    rows = pd.read_csv(tmp_path / "results" / "results.csv")
    mine = rows[rows["protocol"] == "nearest-mean"]
    assert len(mine) > 0 and mine["params"].eq("temperature=0.1").all()
    report = runner.invoke(app, ["report", str(tmp_path)])
    assert report.exit_code == 0, report.output
    table = (tmp_path / "report" / "comparison.md").read_text()
    rows = [line.split("|")[2].strip() for line in table.splitlines() if line.count("|") > 3]
    # The plugin's display_order (35) puts it between prototype (30) and balanced (40).
    assert [r for r in rows if r in ("knn", "prototype", "nearest-mean", "balanced")] == [
        "knn",
        "prototype",
        "nearest-mean",
        "balanced",
    ]
    assert "nearest-mean" in (tmp_path / "report" / "report.html").read_text()
