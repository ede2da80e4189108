"""Gather a workspace's results into the comparison a reader expects.

Rows are model × method, columns are shot counts (0, 1, 5, 10, …, percentages,
``all``), cells are the chosen metric as ``mean ± half-width`` of the 95 % Student-t
interval over episodes, in percent. The best cell of each column is marked.

Means and intervals are recomputed here from the long rows of ``results.csv`` (the
numbers of record); ``summary.csv`` is only a fallback when the long file is absent.
Metric values in the CSVs are fractions in [0, 1]; the table shows percentages.

:func:`write_report` is the one call behind ``featkit report``: tables, plots and
``report.html`` under ``<workspace>/report/``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from featkit.atomic import atomic_path
from featkit.errors import FeatkitError
from featkit.evaluation.shots import shots_sort_key
from featkit.progress import SILENT, Progress
from featkit.report.answer import Answer, answer
from featkit.report.cost import CostTable, cell_costs, cost_table, extraction_costs
from featkit.report.datasummary import DataSummary, summarize_data
from featkit.report.table import (  # re-exported: the report's public names
    ComparisonTable,
    comparison_table,
)
from featkit.results.io import CONFIG_COLUMNS as GROUP_COLUMNS
from featkit.workspace import find_stores, report_dir, results_dir, safe_name

logger = logging.getLogger("featkit")

# ---------------------------------------------------------------------------------------
# Reading


@dataclass
class Results:
    """The CSVs of one workspace; a missing file is an empty frame."""

    results: pd.DataFrame  # long rows (or summary rows when only summary.csv exists)
    per_class: pd.DataFrame
    confusion: pd.DataFrame
    from_summary: bool = False  # True when ``results`` holds summary.csv rows


def gather_results(workspace: Path) -> Results:
    """Read ``results.csv`` (or ``summary.csv``), ``per_class.csv`` and ``confusion.csv``.

    Raises FeatkitError when the workspace has no results at all, naming what was
    looked for and where.
    """
    # One reader and validator for every consumer: featkit.results.io (which also rolls a
    # half-renamed generation forward before reading).
    from featkit.results import io as files

    workspace = Path(workspace)
    long = files.read_results(workspace)
    from_summary = False
    if long.empty:
        long = files.read_summary(workspace)
        from_summary = not long.empty
    if long.empty:
        where = results_dir(workspace) / files.RESULTS_FILE
        raise FeatkitError(
            f"workspace {workspace}: expected results in {where} (run `featkit probe` "
            "first), found none"
        )
    if not from_summary:
        long["episode"] = long["episode"].astype(str)
    per_class = files.read_per_class(workspace)
    confusion = files.read_confusion(workspace)
    return Results(long, per_class, confusion, from_summary)


# ---------------------------------------------------------------------------------------
# Summary and the comparison table


def summarize(results: Results, metric: str) -> pd.DataFrame:
    """One row per configuration: mean, std, n, half, low, high (fractions, not percent),
    plus ``test_se`` and ``effective_shots``; the interval includes the test-set variance.

    Computed by :func:`featkit.results.io.summarize_results` (the one summary) from the long
    rows; read from ``summary.csv`` when only that file exists.
    """
    from featkit.results.io import summarize_results

    frame = results.results
    available = sorted(set(frame["metric"]))
    if metric not in available:
        raise FeatkitError(
            f"metric {metric!r}: expected one of {', '.join(available)} (found in the results)"
        )
    # A missing number (e.g. AUROC where a class is absent) is not an episode of the mean.
    value = "mean" if results.from_summary else "value"
    rows = frame[(frame["metric"] == metric) & frame[value].notna()]
    if rows.empty:
        raise FeatkitError(f"metric {metric!r}: expected numbers for it, found only empty cells")
    summary = rows.copy() if results.from_summary else summarize_results(rows)
    out = summary[[*GROUP_COLUMNS, "mean", "std"]].copy()
    out["std"] = pd.to_numeric(out["std"], errors="coerce").fillna(0.0)
    out["n"] = pd.to_numeric(summary["n_episodes"], errors="coerce").fillna(1).astype(int)
    half = (summary["ci95_high"] - summary["ci95_low"]) / 2
    out["half"] = pd.to_numeric(half, errors="coerce").fillna(0.0)
    for column in ("test_se", "effective_shots"):
        found = summary[column] if column in summary.columns else pd.Series(np.nan, summary.index)
        out[column] = pd.to_numeric(found, errors="coerce")
    out["low"] = out["mean"] - out["half"]
    out["high"] = out["mean"] + out["half"]
    return out.reset_index(drop=True)


# ---------------------------------------------------------------------------------------
# The whole report


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote."""

    folder: Path
    tables: list[Path]
    plots: list[Path]
    html: Path
    table: ComparisonTable
    data: list[DataSummary]
    answer: Answer | None = None
    cost: CostTable | None = None  # seconds and memory per route (None: none recorded)


def ranked_configurations(summary: pd.DataFrame, dataset: str, shots: str) -> pd.DataFrame:
    """The configurations of ``dataset`` at ``shots``, best mean metric first."""
    rows = summary[(summary["dataset"] == dataset) & (summary["shots"] == shots)]
    return rows.sort_values("mean", ascending=False, kind="stable")


def _choose_shots(summary: pd.DataFrame, shots: str | None) -> str:
    available = sorted(set(summary["shots"]), key=shots_sort_key)
    if shots is None:
        # The most labels evaluated: the confusion a user would live with.
        supervised = [s for s in available if s != "0"]
        return (supervised or available)[-1]
    if shots not in available:
        raise FeatkitError(
            f"--shots {shots}: expected one of the evaluated shot counts "
            f"{', '.join(available)}, got {shots}"
        )
    return shots


def write_report(
    workspace: Path,
    out: Path | None = None,
    *,
    metric: str = "balanced_accuracy",
    shots: str | None = None,
    target: float | None = None,
    progress: Progress = SILENT,
) -> ReportFiles:
    """Write comparison.csv/.md/.tex, the plots and report.html for a workspace.

    ``shots`` picks the shot count of the confusion matrix (default: the largest
    evaluated). Per-class recall against class size uses ``all`` when it was evaluated
    (where imbalance shows), else the same shot count. ``target`` (a fraction of the
    metric) adds the plain-words answer: the cheapest route that reaches it, or how far
    each model falls short (``answer.md`` and the top of the page).
    """
    from featkit.report import html as report_html
    from featkit.viz import plots
    from featkit.viz.shots_panels import plot_shots_panels

    workspace = Path(workspace)
    folder = Path(out) if out is not None else report_dir(workspace)
    results = gather_results(workspace)
    summary = summarize(results, metric)
    table = comparison_table(summary, metric, None if results.from_summary else results.results)
    chosen = _choose_shots(summary, shots)
    stores = _stores(workspace, results.results)
    cost = None
    if not results.from_summary:
        table.cells[["seconds", "peak_mb"]] = cell_costs(results.results, table.cells)
        cost = cost_table(results.results, table, extraction_costs(stores))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp"):  # left by a report killed mid-write
        with contextlib.suppress(OSError):
            stale.unlink()
    task = progress.task("report", total=3 + len(stores))

    tables = [folder / "comparison.csv", folder / "comparison.md", folder / "comparison.tex"]
    table.to_csv(tables[0])
    texts = [(tables[1], table.to_markdown()), (tables[2], table.to_latex())]
    if cost is not None:
        tables.append(folder / "cost.csv")
        cost.to_csv(tables[-1])
    data = _data_summaries(stores, results.results)
    if data:
        tables.append(folder / "data_summary.csv")
        frames = [d.per_class.assign(dataset=d.dataset) for d in data]
        with atomic_path(tables[-1]) as tmp:
            pd.concat(frames).to_csv(tmp, index=False)
    answered = None
    if target is not None:
        labelled_summary = summary.assign(method=table.cells.loc[summary.index, "method"])
        answered = answer(labelled_summary, target, metric)
        tables.append(folder / "answer.md")
        texts.append((tables[-1], answered.paragraph + "\n"))
    for path, text in texts:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    task.advance()

    datasets = sorted(set(summary["dataset"]))
    figures: list[tuple[str, Path]] = []  # (caption, path)

    def name(stem: str, dataset: str) -> Path:
        suffix = f"_{safe_name(dataset)}" if len(datasets) > 1 else ""
        return folder / f"{stem}{suffix}.png"

    for dataset in datasets:
        part = summary[summary["dataset"] == dataset]
        labelled = part.assign(method=table.cells.loc[part.index, "method"])
        path = name(f"shots_{safe_name(metric)}", dataset)
        plot_shots_panels(labelled, metric, path, title=dataset)
        figures.append((f"{metric} versus labels per class, one panel per model ({dataset})", path))
    task.advance()

    for dataset in datasets:
        # The best configuration that recorded confusion counts (clustering may not).
        found = None
        for _, config in ranked_configurations(summary, dataset, chosen).iterrows():
            conf = _select(results.confusion, config) if not results.confusion.empty else None
            if conf is not None and not conf.empty:
                found = config, conf
                break
        if found is None:
            continue
        best, conf = found
        path = name("confusion", dataset)
        method = str(table.cells.loc[[best.name], "method"].iloc[0])
        label = f"{best['model']} · {method}"
        # Ranked by mean on test: say so unless the paired test marked it best.
        proven = bool(table.cells.loc[[best.name], "best"].iloc[0])
        rank = "the best method" if proven else "the highest-mean method (not proven best)"
        sizes = next((d.per_class for d in data if d.dataset == dataset), None)
        order = list(sizes["class"]) if sizes is not None else None  # largest class first
        plots.plot_confusion(conf, path, title=f"{dataset}: {label}, shots={chosen}", order=order)
        figures.append((f"{dataset}: confusion of {rank} at shots={chosen}, {label}", path))

    if not results.per_class.empty:
        for dataset in datasets:
            part = summary[summary["dataset"] == dataset]
            recall_shots = "all" if "all" in set(part["shots"]) else chosen
            at = part[part["shots"] == recall_shots]
            if at.empty:
                continue
            labels = table.cells.loc[at.index, "method"]
            per_class = results.per_class
            chosen_rows = []
            for (_, config), method in zip(at.iterrows(), labels, strict=True):
                sel = _select(per_class, config)
                if not sel.empty:
                    chosen_rows.append((f"{config['model']} · {method}", sel, config["mean"]))
            if not chosen_rows:
                continue
            path = name("recall_vs_class_size", dataset)
            plots.plot_recall_vs_class_size(
                chosen_rows, path, title=f"{dataset}: per-class recall, shots={recall_shots}"
            )
            figures.append((f"per-class recall against class size ({dataset})", path))
    task.advance()

    for store in stores:
        path = folder / f"pca_{safe_name(store.parent.name)}_{safe_name(store.stem)}.png"
        try:
            drawn = plots.plot_store_pca(store, path)
        except FeatkitError as error:  # one unreadable store must not sink the report
            logger.warning("skipping the PCA picture of %s: %s", store, error)
            drawn = False
        if drawn:
            figures.append((f"PCA of {store.parent.name}/{store.stem} embeddings", path))
        task.advance()
    task.close()

    html = folder / "report.html"
    report_html.write_html(
        html,
        table,
        figures,
        title=f"featkit report: {workspace}",
        answer=answered.paragraph if answered is not None else "",
        data=[d.lines() for d in data],
        cost=cost,
    )
    figures_written = [p for _, p in figures]
    return ReportFiles(folder, tables, figures_written, html, table, data, answered, cost)


def _data_summaries(stores: list[Path], results: pd.DataFrame) -> list[DataSummary]:
    """Images per class in the probes' train/test split, one summary per dataset.

    The split is drawn again from the store with the seed the results record, so the
    counts are those the numbers were measured on.
    """
    from featkit.store.reader import open_store

    seed = 0
    if "seed" in results.columns and len(results):
        with contextlib.suppress(ValueError):
            seed = int(results["seed"].iloc[0])
    summaries: dict[str, DataSummary] = {}
    for path in stores:
        try:
            with open_store(path) as store:
                if store.dataset in summaries or not (store.labels() >= 0).any():
                    continue
                summaries[store.dataset] = summarize_data(
                    store.dataset,
                    store.paths(),
                    store.labels(),
                    store.label_names,
                    store.splits(),
                    failed=len(store.failures()),
                    seed=seed,
                )
        except FeatkitError as error:  # one unreadable store must not sink the report
            logger.warning("no data summary from %s: %s", path, error)
    return [summaries[name] for name in sorted(summaries)]


def _stores(workspace: Path, results: pd.DataFrame) -> list[Path]:
    """The workspace's stores plus any store the results name that still exists
    (``featkit probe other/place.h5`` writes results here for a store elsewhere)."""
    found = {p.resolve(): p for p in find_stores(workspace)}
    if "store" in results.columns:
        for text in sorted(set(results["store"]) - {""}):
            path = Path(text)
            if path.suffix == ".h5" and path.is_file():
                found.setdefault(path.resolve(), path)
    return sorted(found.values(), key=lambda p: (p.parent.name, p.name))


def _select(frame: pd.DataFrame, config: pd.Series) -> pd.DataFrame:
    """Rows of ``frame`` that belong to the configuration ``config`` (same group columns)."""
    mask = np.ones(len(frame), dtype=bool)
    for column in GROUP_COLUMNS:
        mask &= (frame[column] == config[column]).to_numpy()
    return frame[mask]
