"""Which old rows a write supersedes: the grouped rule against a row-by-row reading of it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from featkit.results.io import CONFIG_COLUMNS, _replaced_runs


def _rule_row_by_row(old: pd.DataFrame, new: pd.DataFrame) -> set[str]:
    """The documented rule, one configuration at a time: a rerun replaces its own run ids;
    a configuration that comes back with another seed, or with one of its old episodes
    under another run id, loses every old row."""
    replaced = set(new["run_id"])
    for config, fresh in new.groupby(list(CONFIG_COLUMNS)):
        previous = old[(old[list(CONFIG_COLUMNS)] == pd.Series(config, CONFIG_COLUMNS)).all(1)]
        moved = previous["episode"].isin(set(fresh["episode"])) & ~previous["run_id"].isin(replaced)
        if moved.any() or (set(previous["seed"]) != set(fresh["seed"]) and len(previous)):
            replaced |= set(previous["run_id"])
    return replaced


def _rows(rng: np.random.Generator, n: int) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "dataset": "d",
            "model": rng.choice(["a", "b"], n),
            "feature": "cls",
            "protocol": rng.choice(["knn", "logistic", "prototype"], n),
            "params": "",
            "shots": rng.choice(["1", "5", "all"], n),
            "episode": rng.integers(0, 4, n).astype(str),
            "seed": rng.choice(["0", "0", "0", "1"], n),
        }
    )
    # Mostly the same run id for the same cell, sometimes another (changed data).
    frame["run_id"] = frame.astype(str).agg("|".join, axis=1) + rng.choice(["", "", "", "x"], n)
    return frame


@pytest.mark.parametrize("seed", range(30))
def test_superseded_runs_follow_the_rule(seed: int) -> None:
    rng = np.random.default_rng(seed)
    old, new = _rows(rng, 60), _rows(rng, 15)
    assert _replaced_runs(old, new) == _rule_row_by_row(old, new)
