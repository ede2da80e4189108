"""`featkit report`: comparison tables, plots and report.html for a workspace."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from featkit.cli._common import (
    console,
    out,
    progress_bars,
    user_errors,
)
from featkit.cli._options import (
    WORKSPACE_OPTION,
    resolve_workspace,
)

if TYPE_CHECKING:
    from rich.table import Table

    from featkit.report.cost import CostTable

ORDER = 40


@user_errors
def report(
    workspace_arg: Path | None = typer.Argument(
        None,
        metavar="WORKSPACE",
        help="Workspace with results/ (default: --workspace, $FEATKIT_WORKSPACE, ./featkit_runs).",
        show_default=False,
    ),
    metric: str = typer.Option(
        "balanced_accuracy",
        "--metric",
        "-m",
        help="Metric of the table and plots: balanced_accuracy, accuracy, macro_f1, ...",
    ),
    shots: str | None = typer.Option(
        None,
        "--shots",
        help="Shot count for the confusion matrix of the best method (default: the largest).",
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", help="Folder for the report (default: WORKSPACE/report)."
    ),
    target: float | None = typer.Option(
        None,
        "--target",
        "-t",
        help="The metric you need, as a fraction (0.8) or percent (80): the report opens "
        "with the cheapest route that reaches it, or how far each model falls short.",
        show_default=False,
    ),
    workspace: Path | None = WORKSPACE_OPTION,
) -> None:
    """Gather every result of a workspace into tables, plots and report.html.

    Writes comparison.csv/.md/.tex (rows model x method, columns shots, cells
    the metric as mean ± 95% CI over episodes and test images in percent; a
    cell is bold only where McNemar's test on the shared test images says it
    beats the rest of its column, ≈ marks ties), plots
    of the metric versus shots, the confusion matrix of the best method,
    per-class recall versus class size and a PCA map of each store, and one
    self-contained report.html with everything embedded.

    Examples:

        featkit report

        featkit report featkit_runs --metric macro_f1 --shots 10

        featkit report -w runs/ --out /tmp/report

        featkit report --target 0.8      # which route reaches 80 % balanced accuracy?
    """
    from featkit.cli._tables import rich_table
    from featkit.report.build import write_report

    root = workspace_arg if workspace_arg is not None else resolve_workspace(workspace)
    fraction = target / 100 if target is not None and target > 1 else target
    with progress_bars() as progress:
        files = write_report(
            root,
            out_dir,
            metric=metric,
            shots=shots.strip() if shots else None,
            target=fraction,
            progress=progress,
        )
    # The answer first, then what the data holds, then the numbers behind both.
    if files.answer is not None:
        out.print(f"{files.answer.paragraph}\n", highlight=False)
    for summary in files.data:
        for line in summary.lines():
            out.print(line, highlight=False)
    out.print(rich_table(files.table))
    if files.cost is not None:
        out.print(_cost_table(files.cost))
    for path in [*files.tables, *files.plots, files.html]:
        console.print(f"wrote {path}", highlight=False)


def _cost_table(cost: CostTable) -> Table:
    from rich.table import Table
    from rich.text import Text

    from featkit.report.cost import COST_NOTE

    shown = Table(title="Cost per route (wall seconds, peak memory)", caption=COST_NOTE)
    frame = cost.display()
    for column in frame.columns:
        left = column in ("dataset", "model", "method")
        shown.add_column(str(column), justify="left" if left else "right")
    for record in frame.itertuples(index=False):
        shown.add_row(*(Text(str(v)) for v in record))
    return shown


def register(app: typer.Typer) -> None:
    app.command("report")(report)
