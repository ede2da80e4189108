"""The one console comparison table, printed by probe, finetune, report and demo.

It draws :class:`featkit.report.table.ComparisonTable`, the table the report writes to
comparison.csv/.md/.tex: rows model × method, columns shots, every cell the mean ± half
the 95 % interval over episodes and test images, best cells in bold green and ties
marked ≈ by the report's paired test. So a command's console table and the report of
the same workspace show the same cells.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from rich.table import Table

    from featkit.report.table import ComparisonTable

DEFAULT_METRIC = "balanced_accuracy"


def comparison_table(
    summary: pd.DataFrame, metric: str = DEFAULT_METRIC, results: pd.DataFrame | None = None
) -> Table:
    """The console table of ``summary`` (rows of :func:`featkit.results.io.summarize_results`,
    as summary.csv holds them) for ``metric``; ``results`` (the long rows behind it)
    lets the paired test mark the best cells, as the report does."""
    import pandas as pd

    from featkit.report.build import Results, summarize
    from featkit.report.table import comparison_table as build_table

    empty = pd.DataFrame()
    cells = summarize(Results(summary, empty, empty, from_summary=True), metric)
    return rich_table(build_table(cells, metric, results))


def _shot_header(shots: str) -> str:
    return shots if shots in ("0", "all") else f"{shots}-shot"


def rich_table(table: ComparisonTable) -> Table:
    """A built :class:`ComparisonTable` (e.g. ``write_report(...).table``) for the console."""
    from rich.table import Table
    from rich.text import Text

    from featkit.report.table import BEST_RULE, INTERVAL_NOTE

    shown = Table(
        title=f"{table.metric.replace('_', ' ')} (%, mean ± 95% CI over episodes and test images)",
        caption=f"{INTERVAL_NOTE} {BEST_RULE}",
    )
    wide = table.wide()
    labels = {"dataset", "model", "method"}
    for column in wide.columns:
        left = column in labels
        header = str(column) if left else _shot_header(str(column))
        shown.add_column(header, justify="left" if left else "right", no_wrap=left)
    best = table.best_cells()
    rows = zip(table.rows, wide.itertuples(index=False), strict=True)
    for (dataset, model, method), record in rows:
        # Text, not markup strings: labels such as "knn [cls]" must not be read as markup.
        cells = [
            Text(str(value), style="bold green" if (dataset, model, method, column) in best else "")
            for column, value in zip(wide.columns, record, strict=True)
        ]
        shown.add_row(*cells)
    return shown
