"""Shots curves as small multiples: one panel per model, methods as lines, one y axis.

One crowded legend of every model × method makes the reader match colours across the
page; panels that share the y axis answer "which model, which method, how many labels"
at a glance. Probes are lines over their shot counts with a 95 % band; a fine-tune is
a marker with its interval at the shot count it trained on, and the best fine-tune of
a panel is a star.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from featkit.evaluation.shots import shots_sort_key
from featkit.results.io import FINETUNE_PREFIX
from featkit.viz.plots import palette, save_figure

PANEL_COLUMNS = 3
TUNED_OFFSET = 0.12


def _shots_order(values: pd.Series) -> list[str]:
    return sorted({str(v) for v in values}, key=shots_sort_key)


def plot_shots_panels(summary: pd.DataFrame, metric: str, path: Path, title: str = "") -> Figure:
    """Draw ``summary`` (model, method, protocol, shots, mean, low, high as fractions)."""
    shots = _shots_order(summary["shots"])
    position = {s: i for i, s in enumerate(shots)}
    models = sorted(set(summary["model"]))
    methods = list(dict.fromkeys(summary["method"]))
    color = dict(zip(methods, palette(len(methods)), strict=True))
    columns = min(PANEL_COLUMNS, len(models))
    rows = math.ceil(len(models) / columns)
    fig = Figure(figsize=(4.2 * columns + 2.2, 3.4 * rows))
    axes = fig.subplots(rows, columns, sharey=True, squeeze=False)
    low = 100 * float(np.nanmin(summary["low"]))
    for index, model in enumerate(models):
        ax = axes[index // columns][index % columns]
        part = summary[summary["model"] == model]
        finetunes = part[part["protocol"].str.startswith(FINETUNE_PREFIX)]
        best = finetunes["mean"].idxmax() if not finetunes.empty else None
        tuned_methods = list(dict.fromkeys(finetunes["method"]))
        for method, curve in part.groupby("method", sort=False):
            curve = curve.sort_values("shots", key=lambda c: c.map(position))
            x = curve["shots"].map(position).to_numpy(dtype=float)
            y, lo, hi = (100 * curve[c].to_numpy(dtype=float) for c in ("mean", "low", "high"))
            kw = {"color": color[method], "label": method}
            tuned = str(curve["protocol"].iloc[0]).startswith(FINETUNE_PREFIX)
            if tuned:  # side by side, so fine-tunes at one shot count don't hide each other
                x = x + TUNED_OFFSET * (1 + tuned_methods.index(method))
            if tuned or len(x) == 1:
                ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="s", capsize=3, ms=5, **kw)
            else:
                ax.plot(x, y, marker="o", lw=1.6, ms=4, **kw)
                ax.fill_between(x, lo, hi, alpha=0.12, lw=0, color=color[method])
        if best is not None:
            star = part.loc[best]
            ax.plot(
                position[str(star["shots"])]
                + TUNED_OFFSET * (1 + tuned_methods.index(star["method"])),
                100 * star["mean"],
                marker="*",
                ms=15,
                color=color[star["method"]],
                markeredgecolor="black",
                ls="none",
                label=f"best fine-tune ({star['method']})",
            )
        ax.set_title(str(model), fontsize=10)
        ax.set_xticks(range(len(shots)), shots)
        ax.set_ylim(max(0.0, low - 5), 101)
        ax.grid(True, alpha=0.3)
        if index % columns == 0:
            ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
        ax.set_xlabel("labels per class")
    for index in range(len(models), rows * columns):
        axes[index // columns][index % columns].set_visible(False)
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(
        f"{title}: {metric.replace('_', ' ')} vs labels per class (mean, 95 % CI)".lstrip(": ")
    )
    fig.tight_layout()
    save_figure(fig, path)
    return fig
