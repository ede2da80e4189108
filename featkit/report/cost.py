"""The price of each route beside its accuracy: the report's cost table.

One row per model × method (the rows of the comparison table): the extraction time per
image of the model's store (one pass, shared by every route that reads the store), the
mean and largest wall seconds per episode (fit + predict of a probe; the whole tune of
a fine-tune) and the peak memory in MiB (see :mod:`featkit.cost` for what it measures).
The numbers come from the ``seconds``/``peak_mb`` result columns and the store's
``cost`` attribute; results written before they existed leave the cells empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from featkit.report.table import MISSING, ComparisonTable
from featkit.results.io import CONFIG_COLUMNS

COLUMNS = (
    "dataset",
    "model",
    "method",
    "extract_s_per_image",
    "n_episodes",
    "seconds_per_episode",
    "seconds_max",
    "peak_mb",
)
HEADERS = {
    "extract_s_per_image": "extraction ms/image",
    "n_episodes": "episodes",
    "seconds_per_episode": "per episode",
    "seconds_max": "slowest episode",
    "peak_mb": "peak MB",
}
COST_NOTE = (
    "Extraction: wall time of the store's pass per image (decode + forward), paid once and "
    "shared by every route that reads the store. Per episode: mean wall time of one "
    "episode, fit + predict for a probe, the whole tune (head, training, test predictions) "
    "for a fine-tune; slowest: usually the largest shot count. Peak MB: the "
    "process's peak resident memory on the CPU, torch's peak allocation on a GPU."
)


def episode_costs(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (configuration, episode) that recorded a cost: ``seconds``, ``peak_mb``."""
    if results.empty or "seconds" not in results.columns:
        return pd.DataFrame(columns=[*CONFIG_COLUMNS, "episode", "seconds", "peak_mb"])
    frame = results[[*CONFIG_COLUMNS, "episode"]].copy()
    frame["seconds"] = pd.to_numeric(results["seconds"], errors="coerce")
    peak = results["peak_mb"] if "peak_mb" in results.columns else np.nan
    frame["peak_mb"] = pd.to_numeric(peak, errors="coerce")
    frame = frame[frame["seconds"].notna()]
    # Every metric row of an episode repeats its cost: one row per episode.
    return frame.drop_duplicates([*CONFIG_COLUMNS, "episode"]).reset_index(drop=True)


def cell_costs(results: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """``seconds`` (mean per episode) and ``peak_mb`` (largest) of each comparison cell,
    aligned with ``cells`` (NaN where nothing was recorded)."""
    per_episode = episode_costs(results)
    grouped = per_episode.groupby(list(CONFIG_COLUMNS), dropna=False).agg(
        seconds=("seconds", "mean"), peak_mb=("peak_mb", "max")
    )
    keys = pd.MultiIndex.from_frame(cells[list(CONFIG_COLUMNS)].astype(str))
    grouped.index = pd.MultiIndex.from_frame(grouped.index.to_frame().astype(str))
    found = grouped.reindex(keys)
    return pd.DataFrame(
        {"seconds": found["seconds"].to_numpy(), "peak_mb": found["peak_mb"].to_numpy()},
        index=cells.index,
    )


def extraction_costs(stores: list[Path]) -> dict[tuple[str, str], dict[str, Any]]:
    """(dataset, model) → the ``cost`` attribute of its store, for stores that have one."""
    from featkit.cost import COST_ATTR, read_cost
    from featkit.errors import FeatkitError
    from featkit.store.reader import open_store

    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in stores:
        try:
            with open_store(path) as store:
                cost = read_cost(store.attr(COST_ATTR))
                if cost is not None:
                    found.setdefault((store.dataset, store.model), cost)
        except (FeatkitError, OSError):  # the report warns about such stores elsewhere
            continue
    return found


@dataclass
class CostTable:
    """The cost of every route: ``frame`` has :data:`COLUMNS`, one row per table row."""

    frame: pd.DataFrame
    several_datasets: bool = False

    def display(self) -> pd.DataFrame:
        """Display strings, ``–`` where nothing was recorded."""
        shown = pd.DataFrame(index=self.frame.index)
        names = ["dataset", "model", "method"] if self.several_datasets else ["model", "method"]
        for column in names:
            shown[column] = self.frame[column].astype(str)
        for column, label in HEADERS.items():
            shown[label] = [_number(v, column) for v in self.frame[column]]
        return shown.reset_index(drop=True)

    def to_csv(self, path: Path) -> None:
        from featkit.atomic import atomic_path

        with atomic_path(path) as tmp:
            self.frame.to_csv(tmp, index=False, float_format="%.6g")


def _number(value: Any, column: str) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return MISSING
    if not math.isfinite(number):
        return MISSING
    if column == "n_episodes":
        return str(int(number))
    if column == "extract_s_per_image":
        return f"{1000 * number:.2f}"  # a pass costs milliseconds per image
    if column == "peak_mb":
        return f"{number:,.0f}"
    return duration(number)


def duration(seconds: float) -> str:
    """``0.78 ms``, ``41 ms``, ``1.40 s``, ``1,250 s``: each cell in the unit that reads best."""
    if seconds < 0.01:
        return f"{1000 * seconds:.2f} ms"
    if seconds < 1:
        return f"{1000 * seconds:.0f} ms"
    return f"{seconds:.2f} s" if seconds < 100 else f"{seconds:,.0f} s"


def cost_table(
    results: pd.DataFrame,
    table: ComparisonTable,
    extraction: dict[tuple[str, str], dict[str, Any]],
) -> CostTable | None:
    """The cost of every row of ``table``; None when nothing at all was recorded."""
    per_episode = episode_costs(results)
    if per_episode.empty and not extraction:
        return None
    methods = table.cells.drop_duplicates(["dataset", "model", "feature", "protocol", "params"])
    label = {
        tuple(str(v) for v in key): method
        for *key, method in zip(
            methods["dataset"],
            methods["model"],
            methods["feature"],
            methods["protocol"],
            methods["params"],
            methods["method"],
            strict=True,
        )
    }
    per_episode["method"] = [
        label.get(tuple(str(r[c]) for c in CONFIG_COLUMNS[:5]), r["protocol"])
        for _, r in per_episode.iterrows()
    ]
    records = []
    for dataset, model, method in table.rows:
        rows = per_episode[
            (per_episode["dataset"].astype(str) == dataset)
            & (per_episode["model"].astype(str) == model)
            & (per_episode["method"] == method)
        ]
        store = extraction.get((dataset, model), {})
        records.append(
            {
                "dataset": dataset,
                "model": model,
                "method": method,
                "extract_s_per_image": store.get("seconds_per_image", np.nan),
                "n_episodes": len(rows) if len(rows) else np.nan,
                "seconds_per_episode": rows["seconds"].mean() if len(rows) else np.nan,
                "seconds_max": rows["seconds"].max() if len(rows) else np.nan,
                "peak_mb": rows["peak_mb"].max() if len(rows) else np.nan,
            }
        )
    frame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    frame["extract_s_per_image"] = pd.to_numeric(frame["extract_s_per_image"], errors="coerce")
    return CostTable(frame, table.several_datasets)
