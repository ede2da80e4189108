"""The comparison table: rows model × method, columns shots, cells mean ± 95 % interval.

Cells are in percent; the interval includes the test-set variance (see
:func:`featkit.results.io.summarize_results`). A cell is marked best only when a paired test
says it beats every other cell of its column (:data:`BEST_RULE`); cells the test cannot
separate from the top one are shown as ties.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from featkit.errors import FeatkitError
from featkit.evaluation.shots import shots_sort_key
from featkit.metrics import mcnemar, paired_bootstrap_balanced
from featkit.results.io import CONFIG_COLUMNS as GROUP_COLUMNS

# Shown where a method was not run at a shot count (k-means only runs at 0 shots).
MISSING = "–"
TIE_MARK = " ≈"  # appended to cells tied with the top one of their column
ALPHA = 0.05
INTERVAL_NOTE = (
    "Cells: mean ± half-width of the 95 % interval over episodes and test images "
    "(stratified bootstrap of the test set, combined with the spread over episodes); "
    "(eff. k): some class had only k training images."
)
BEST_RULE = (
    "Bold: better than every other cell of its column by a paired test on the same test "
    "images (p < 0.05; each image's outcome averaged over the shared episodes): McNemar's "
    "test for accuracy, a paired stratified bootstrap of the difference for balanced "
    "accuracy; for other metrics, or cells without per-image results, only "
    "non-overlapping 95 % intervals separate two cells. ≈: not separable from the top "
    "cell of its column (a tie). A column with one cell marks nothing."
)

# Fine-tunes come after every probe, cheapest first.
_FINETUNE_ORDER = ("finetune-linear", "finetune-last-block", "finetune-lora")


def _method_labels(summary: pd.DataFrame) -> pd.Series:
    """protocol, plus params when that protocol ran with several settings, plus feature when
    several features exist: the shortest label that still tells the rows apart."""
    several_features = summary["feature"].nunique() > 1
    params_per_protocol = summary.groupby("protocol")["params"].nunique()
    labels = []
    for protocol, params, feature in zip(
        summary["protocol"], summary["params"], summary["feature"], strict=True
    ):
        label = protocol
        if str(params).startswith("select="):  # a grid chosen on validation is one method
            label += " (selected)"
        elif params_per_protocol[protocol] > 1:
            label += f" ({params})" if params else " (default)"
        if several_features:
            label += f" [{feature}]"
        labels.append(label)
    return pd.Series(labels, index=summary.index)


def _method_order() -> list[str]:
    """Probes in their classes' ``display_order``, then fine-tunes; a protocol whose
    rows exist but whose plugin is not installed here sorts after all of them."""
    from featkit.protocols import ordered_protocols

    return [*ordered_protocols(), *_FINETUNE_ORDER]


def format_cell(mean: float, half: float, n: int, digits: int = 1) -> str:
    """``72.3 ± 1.2`` in percent; the mean alone when nothing measured a spread
    (one episode and no test-set standard error)."""
    if n <= 1 and not half > 0:
        return f"{100 * mean:.{digits}f}"
    return f"{100 * mean:.{digits}f} ± {100 * half:.{digits}f}"


@dataclass
class ComparisonTable:
    """The comparison: ``cells`` holds one row per (row, shots) with numbers in percent."""

    metric: str
    cells: pd.DataFrame  # dataset, model, method, feature, protocol, params, shots, mean, ...
    columns: list[str]  # shot labels in reading order
    rows: list[tuple[str, str, str]]  # (dataset, model, method) in reading order
    several_datasets: bool = field(default=False)

    def wide(self, bold: tuple[str, str] = ("", "")) -> pd.DataFrame:
        """Display strings: one row per (dataset,) model, method; best cells wrapped in ``bold``."""
        lookup: dict[tuple[str, ...], tuple[str, bool]] = {
            (str(r.dataset), str(r.model), str(r.method), str(r.shots)): (str(r.text), bool(r.best))
            for r in self.cells.itertuples()
        }
        records = []
        for dataset, model, method in self.rows:
            record: dict[str, str] = {}
            if self.several_datasets:
                record["dataset"] = dataset
            record["model"] = model
            record["method"] = method
            for shots in self.columns:
                text, best = lookup.get((dataset, model, method, shots), (MISSING, False))
                record[shots] = f"{bold[0]}{text}{bold[1]}" if best else text
            records.append(record)
        return pd.DataFrame.from_records(records)

    def best_cells(self) -> set[tuple[str, str, str, str]]:
        """(dataset, model, method, shots) of every marked cell."""
        return {
            (str(r.dataset), str(r.model), str(r.method), str(r.shots))
            for r in self.cells.itertuples()
            if bool(r.best)
        }

    def to_csv(self, path: Path) -> None:
        """Long CSV, one row per cell, with ``best``/``tied`` flags; numbers in percent.

        Written through :func:`featkit.atomic.atomic_path`: a crash keeps the old file.
        """
        from featkit.atomic import atomic_path

        columns = [
            "dataset",
            "model",
            "method",
            "feature",
            "protocol",
            "params",
            "shots",
            "metric",
            "mean",
            "std",
            "ci95_half_width",
            "ci95_low",
            "ci95_high",
            "n_episodes",
            "cell",
            "best",
            "tied",
            "test_se",
            "effective_shots",
        ]
        frame = self.cells.rename(
            columns={
                "half": "ci95_half_width",
                "low": "ci95_low",
                "high": "ci95_high",
                "n": "n_episodes",
                "text": "cell",
            }
        )
        columns += [c for c in ("seconds", "peak_mb") if c in frame.columns]  # see report_cost
        frame = frame.assign(metric=self.metric)[columns]
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False, float_format="%.4f")

    def to_markdown(self) -> str:
        wide = self.wide(bold=("**", "**"))
        header = [*wide.columns[: len(wide.columns) - len(self.columns)], *self.columns]
        lines = [
            "| " + " | ".join(header) + " |",
            "|"
            + "|".join(":---" if c in ("dataset", "model", "method") else "---:" for c in header)
            + "|",
        ]
        for record in wide.itertuples(index=False):
            lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in record) + " |")
        return "\n".join([*lines, "", f"{INTERVAL_NOTE} {BEST_RULE}"]) + "\n"

    def to_latex(self) -> str:
        wide = self.wide(bold=("\\textbf{", "}"))
        n_text = len(wide.columns) - len(self.columns)
        spec = "l" * n_text + "r" * len(self.columns)
        header = [_latex_escape(str(c)) for c in wide.columns]
        lines = [
            f"% {_latex_escape(self.metric)} in percent, mean $\\pm$ 95\\% CI half-width; "
            "bold = better than the rest of its column by a paired test, "
            f"{TIE_MARK.strip()} = tied with the top cell",
            f"\\begin{{tabular}}{{{spec}}}",
            "\\toprule",
            " & ".join(header) + " \\\\",
            "\\midrule",
        ]
        for record in wide.itertuples(index=False):
            cells = []
            for i, value in enumerate(record):
                text = str(value)
                if i < n_text:
                    cells.append(_latex_escape(text))
                else:
                    # Escape the number, keep our own \textbf and turn ± into math.
                    bold = text.startswith("\\textbf{")
                    inner = text[len("\\textbf{") : -1] if bold else text
                    inner = _latex_escape(inner).replace("±", "$\\pm$").replace(MISSING, "--")
                    inner = inner.replace("≈", "$\\approx$")
                    cells.append(f"\\textbf{{{inner}}}" if bold else inner)
            lines.append(" & ".join(cells) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": "\\textbackslash{}",
    "&": "\\&",
    "%": "\\%",
    "$": "\\$",
    "#": "\\#",
    "_": "\\_",
    "{": "\\{",
    "}": "\\}",
    "~": "\\textasciitilde{}",
    "^": "\\textasciicircum{}",
}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


@dataclass(frozen=True)
class _Outcomes:
    """Per-image correctness of one configuration: episode → class blocks of bools."""

    data_id: str
    by_episode: dict[int, list[NDArray[np.bool_]]]


def _outcomes(results: pd.DataFrame | None) -> dict[tuple[str, ...], _Outcomes]:
    """Correctness bits of every configuration whose rows carry them (see evaluation.records)."""
    from featkit.evaluation.records import decode_correct

    if results is None or results.empty:
        return {}
    needed = {"correct", "n_test", "episode", "data_id"}
    if not needed <= set(results.columns):
        return {}
    rows = results[results["correct"].astype(str) != ""]
    rows = rows.drop_duplicates([*GROUP_COLUMNS, "episode"])
    found: dict[tuple[str, ...], _Outcomes] = {}
    broken: set[tuple[str, ...]] = set()
    for row in rows.itertuples(index=False):
        key = tuple(str(getattr(row, c)) for c in GROUP_COLUMNS)
        try:
            n = int(float(str(row.n_test)))
            episode = int(float(str(row.episode)))
        except (TypeError, ValueError):
            broken.add(key)
            continue
        bits = decode_correct(str(row.correct), n)
        entry = found.setdefault(key, _Outcomes(str(row.data_id), {}))
        if bits is None or entry.data_id != str(row.data_id):
            broken.add(key)
            continue
        entry.by_episode[episode] = bits
    return {k: v for k, v in found.items() if k not in broken}


def _informative(cell: pd.Series) -> bool:
    se = cell.get("test_se", np.nan)
    return int(cell["n"]) > 1 or (bool(np.isfinite(se)) and se > 0)


def _per_image(outcomes: _Outcomes, shared: list[int], folds: bool) -> list[NDArray]:
    """Class blocks of per-image scores: episodes of one test set averaged per image; the
    folds of --splits (the only source of several "all" episodes: disjoint test sets) joined
    class by class."""
    episodes = [outcomes.by_episode[e] for e in shared]
    n_classes = len(episodes[0])
    if folds:
        return [np.concatenate([ep[c] for ep in episodes]) for c in range(n_classes)]
    return [np.mean([ep[c] for ep in episodes], axis=0) for c in range(n_classes)]


def _separated(
    top: pd.Series,
    other: pd.Series,
    outcomes: dict[tuple[str, ...], _Outcomes],
    metric: str,
) -> bool:
    """Whether ``top`` is better than ``other`` by the rule of :data:`BEST_RULE`."""
    a = outcomes.get(tuple(str(top[c]) for c in GROUP_COLUMNS))
    b = outcomes.get(tuple(str(other[c]) for c in GROUP_COLUMNS))
    paired = metric in ("accuracy", "balanced_accuracy")
    if paired and a is not None and b is not None and a.data_id == b.data_id:
        shared = sorted(set(a.by_episode) & set(b.by_episode))
        layouts = {tuple(x.size for x in o.by_episode[e]) for o in (a, b) for e in shared}
        folds = str(top["shots"]) == "all"
        if shared and (folds or len(layouts) == 1):
            blocks_a, blocks_b = _per_image(a, shared, folds), _per_image(b, shared, folds)
            if metric == "accuracy":
                test = mcnemar(np.concatenate(blocks_a), np.concatenate(blocks_b))
                return test.p_value < ALPHA and test.a_only > test.b_only
            difference, p = paired_bootstrap_balanced(blocks_a, blocks_b)
            return p < ALPHA and difference > 0
    # No paired data: only intervals that were measured and do not overlap separate.
    return _informative(top) and _informative(other) and other["high"] < top["low"]


def _mark_best(
    cells: pd.DataFrame, outcomes: dict[tuple[str, ...], _Outcomes], metric: str
) -> tuple[pd.Series, pd.Series]:
    """``best`` (beats every other cell of its column) and ``tied`` (top group of several)."""
    best = pd.Series(False, index=cells.index)
    tied = pd.Series(False, index=cells.index)
    for _, group in cells.groupby(["dataset", "shots"], sort=False):
        if len(group) == 1:  # nothing to be better than
            continue
        order = group.sort_values("mean", ascending=False, kind="stable")
        top = order.iloc[0]
        group_top = [order.index[0]]
        group_top += [
            i
            for i, cell in order.iloc[1:].iterrows()
            if not _separated(top, cell, outcomes, metric)
        ]
        if len(group_top) == 1:
            best[group_top[0]] = True
        else:
            tied[group_top] = True
    return best, tied


def effective_note(shots: str, effective: float) -> str:
    """`` (eff. 3)`` where some class had fewer training images than the column asks."""
    if str(shots).isdigit() and np.isfinite(effective) and 0 < effective < int(shots):
        return f" (eff. {int(effective)})"
    return ""


def comparison_table(
    summary: pd.DataFrame, metric: str, results: pd.DataFrame | None = None
) -> ComparisonTable:
    """Build the table from :func:`featkit.report.build.summarize` output (fractions); cells come
    out in percent. ``results`` (the long rows) supplies the per-image outcomes of the
    paired test that marks the best cells; without them only intervals separate cells."""
    if summary.empty:
        raise FeatkitError(f"metric {metric!r}: expected result rows for it, found none")
    cells = summary.copy()
    for column in ("test_se", "effective_shots"):
        if column not in cells.columns:
            cells[column] = np.nan
    cells["method"] = _method_labels(cells)
    best, tied = _mark_best(cells, _outcomes(results), metric)
    cells["best"], cells["tied"] = best, tied
    cells["text"] = [
        format_cell(m, h, n) + effective_note(s, e) + (TIE_MARK if t else "")
        for m, h, n, s, e, t in zip(
            cells["mean"],
            cells["half"],
            cells["n"],
            cells["shots"],
            cells["effective_shots"],
            cells["tied"],
            strict=True,
        )
    ]
    for column in ("mean", "std", "half", "low", "high", "test_se"):
        cells[column] = 100 * cells[column]

    columns = sorted(set(cells["shots"]), key=shots_sort_key)
    ranks = {name: i for i, name in enumerate(_method_order())}
    order = (
        cells.assign(_rank=cells["protocol"].map(lambda p: ranks.get(p, len(ranks))))
        .sort_values(["dataset", "model", "_rank", "method"], kind="stable")
        .drop_duplicates(["dataset", "model", "method"])
    )
    rows = list(zip(order["dataset"], order["model"], order["method"], strict=True))
    return ComparisonTable(
        metric=metric,
        cells=cells,
        columns=columns,
        rows=rows,
        several_datasets=cells["dataset"].nunique() > 1,
    )
