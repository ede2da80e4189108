"""One self-contained ``report.html``: the comparison table and every plot, readable offline.

Images are embedded as base64 ``data:`` URIs and the style sheet is inline, so the file
can be mailed or opened from anywhere without its folder.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from featkit.atomic import atomic_path
from featkit.report.cost import COST_NOTE, CostTable
from featkit.report.table import BEST_RULE, INTERVAL_NOTE

if TYPE_CHECKING:
    from featkit.report.table import ComparisonTable

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1.5em;
       max-width: 1280px; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; overflow-wrap: anywhere; } h2 { font-size: 1.2em; margin-top: 2em; }
p, ul, div.answer { max-width: 72em; }
div.wide { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 4px 10px; border-bottom: 1px solid #ddd; }
th { background: #f3f3f3; white-space: nowrap; }
td { min-width: 4em; } td.name { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.best { font-weight: bold; background: #eaf4ea; }
figure { margin: 1.5em 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
div.answer { background: #f6f8fb; border-left: 4px solid #4a78b5; padding: 0.2em 1em; }
"""


def text_cell(value: object, column: str = "method") -> str:
    """A label cell, escaped; a method label may wrap (break chances after ``;`` in long
    params), a model or dataset name stays on one line."""
    if column != "method":
        return f'<td class="name">{html.escape(str(value))}</td>'
    return f"<td>{html.escape(str(value)).replace(';', ';<wbr>')}</td>"


def scrolling(table: str) -> str:
    """A table that scrolls inside the page when wider than it, instead of running off."""
    return f'<div class="wide">{table}</div>'


def number_cell(value: object, best: bool = False) -> str:
    """A right-aligned number cell; ``best`` marks the best of its column."""
    cls = "num best" if best else "num"
    return f'<td class="{cls}">{html.escape(str(value))}</td>'


def html_table(columns: Sequence[object], rows: Sequence[Sequence[str]]) -> str:
    """A table from its headers and the already rendered cells of each row."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def table_html(table: ComparisonTable) -> str:
    """The comparison as an HTML table; best cells get class ``best``."""
    wide = table.wide()
    best = {
        (r.dataset, r.model, r.method, r.shots) for r in table.cells.itertuples() if bool(r.best)
    }
    text_columns = [c for c in wide.columns if c not in table.columns]
    rows = [
        [
            text_cell(value, str(column))
            if column in text_columns
            else number_cell(value, (*row, column) in best)
            for column, value in zip(wide.columns, record, strict=True)
        ]
        for row, record in zip(table.rows, wide.itertuples(index=False), strict=True)
    ]
    return html_table(list(wide.columns), rows)


def cost_html(cost: CostTable) -> str:
    """The cost of every route as an HTML table (names as text, numbers right-aligned)."""
    shown = cost.display()
    text = {"dataset", "model", "method"}
    rows = [
        [
            text_cell(v, c) if c in text else number_cell(v)
            for c, v in zip(shown.columns, record, strict=True)
        ]
        for record in shown.itertuples(index=False)
    ]
    return html_table(list(shown.columns), rows)


def image_html(path: Path, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    alt = html.escape(caption)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
        f"<figcaption>{alt}</figcaption></figure>"
    )


def write_html(
    path: Path,
    table: ComparisonTable,
    figures: Sequence[tuple[str, Path]],
    title: str = "featkit report",
    answer: str = "",
    data: Sequence[Sequence[str]] = (),
    cost: CostTable | None = None,
) -> None:
    """Write the report page: the answer (when a target was given), the data summary,
    the table (metric in percent, mean ± 95% CI), the cost of each route, then the
    figures."""
    metric = html.escape(table.metric.replace("_", " "))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if answer:
        paragraphs = "".join(f"<p>{html.escape(p)}</p>" for p in answer.split("\n\n"))
        parts.append(f'<h2>Answer</h2><div class="answer">{paragraphs}</div>')
    if data:
        items = "".join(f"<li>{html.escape(line)}</li>" for lines in data for line in lines)
        parts.append(f"<h2>Data</h2><ul>{items}</ul>")
    parts += [
        f"<h2>Comparison: {metric}</h2>",
        f"<p>{metric} in percent. Columns are labelled images per class (0 = no labels "
        "used, <code>all</code> = the full training split).</p>",
        scrolling(table_html(table)),
        f"<p>{html.escape(INTERVAL_NOTE)}</p><p>{html.escape(BEST_RULE)}</p>",
    ]
    if cost is not None:
        parts += ["<h2>Cost</h2>", scrolling(cost_html(cost)), f"<p>{html.escape(COST_NOTE)}</p>"]
    parts += [
        "<h2>Plots</h2>",
        *(image_html(p, caption) for caption, p in figures),
        "</body></html>",
    ]
    with atomic_path(Path(path)) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
