"""Stores probed side by side in worker processes give the rows of the one-by-one loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from featkit.errors import FeatkitError
from featkit.evaluation import probe as probe_module
from featkit.evaluation.probe import ProbeSettings, ProtocolSpec, probe
from featkit.evaluation.shots import parse_shots
from featkit.results.io import read_results
from tests.test_evaluate import make_store

SETTINGS = ProbeSettings(
    protocols=(ProtocolSpec.of("knn", k=5), ProtocolSpec.of("logistic", c=1.0)),
    shots=parse_shots("2,all"),
    episodes=2,
    bootstrap=20,
)
# What the evaluation measured about itself, not what it computed.
COST = ["seconds", "peak_mb"]


class Recorder:
    """A Progress that keeps every bar's total and what was advanced on it."""

    def __init__(self) -> None:
        self.bars: dict[str, list[int]] = {}

    def task(self, description: str, total: int | None) -> Any:
        bar = self.bars.setdefault(description, [total or 0, 0])

        class Task:
            def advance(self, n: int = 1, **fields: object) -> None:
                bar[1] += n

            def close(self) -> None:
                pass

        return Task()


def _stores(folder: Path) -> list[Path]:
    return [make_store(folder, f"m{i}", seed=i) for i in range(3)]


def test_parallel_rows_equal_the_sequential_ones(tmp_path: Path) -> None:
    stores = _stores(tmp_path / "data")
    one_by_one = probe(stores, SETTINGS, tmp_path / "a", workers=1)
    recorder = Recorder()
    side_by_side = probe(stores, SETTINGS, tmp_path / "b", recorder, workers=2)
    for frame in ("results", "per_class", "confusion"):
        a, b = getattr(one_by_one, frame), getattr(side_by_side, frame)
        pd.testing.assert_frame_equal(
            a.drop(columns=COST, errors="ignore"), b.drop(columns=COST, errors="ignore")
        )
    written = [read_results(tmp_path / w).drop(columns=COST) for w in ("a", "b")]
    pd.testing.assert_frame_equal(written[0], written[1])
    # Every store's bar was drawn in the parent and filled to its total.
    assert len(recorder.bars) == 3
    assert all(total > 0 and done == total for total, done in recorder.bars.values())


def test_a_failure_in_a_worker_is_raised_in_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stores = _stores(tmp_path / "data")
    real = probe_module.evaluate_arrays

    def failing(data: Any, *args: Any, **kwargs: Any) -> Any:
        if data.model == "m1":
            raise FeatkitError("store m1: expected to fail here")
        return real(data, *args, **kwargs)

    monkeypatch.setattr(probe_module, "evaluate_arrays", failing)  # forked workers see it
    with pytest.raises(FeatkitError, match="m1: expected to fail"):
        probe(stores, SETTINGS, tmp_path / "ws", workers=2)
