"""The report's pictures, drawn with matplotlib's object API onto an Agg canvas.

No pyplot: figures are built from :class:`matplotlib.figure.Figure` and saved through
the Agg canvas, so the library never touches matplotlib's global backend or state.
Every function writes one PNG; inputs are the plain frames of :mod:`featkit.report.build`
(metric values as fractions, drawn in percent).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from featkit.atomic import atomic_path
from featkit.errors import FeatkitError

DPI = 110
# At most this many points in a PCA scatter: more only hide each other and slow the file.
PCA_MAX_POINTS = 4000
# More classes than this get no per-cell numbers in the confusion matrix.
ANNOTATE_MAX_CLASSES = 20
# The recall-vs-size plot shows this many best methods; more lines are unreadable.
RECALL_MAX_METHODS = 6


def save_figure(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    # Through the atomic helper: a kill mid-write keeps the previous picture, never 0 bytes.
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")


def palette(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _class_order(values: Sequence[str]) -> list[str]:
    unique = sorted(set(values))
    if all(v.lstrip("-").isdigit() for v in unique):
        return sorted(unique, key=int)
    return unique


def plot_confusion(
    confusion: pd.DataFrame,
    path: Path,
    title: str = "",
    order: Sequence[str] | None = None,
) -> Figure:
    """Row-normalised confusion matrix (each row is a true class; cells are recall %).

    ``confusion`` holds true, pred, count rows of one configuration, summed here over
    its episodes. ``order`` lists classes top to bottom (the report passes them largest
    first, so the imbalance reads down the rows); classes it does not name follow.
    """
    present = _class_order([*confusion["true"], *confusion["pred"]])
    first = [c for c in (order or []) if c in set(present)]
    classes = first + [c for c in present if c not in set(first)]
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)))
    for true, pred, count in zip(
        confusion["true"], confusion["pred"], confusion["count"], strict=True
    ):
        counts[index[true], index[pred]] += count
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)

    size = min(max(4.5, 0.45 * len(classes) + 2.5), 14.0)
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.add_subplot()
    image = ax.imshow(100 * rates, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the true class")
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=45 if len(classes) > 6 else 0, ha="right")
    ax.set_yticks(ticks, [f"{c} (n={int(t)})" for c, t in zip(classes, totals[:, 0], strict=True)])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (test images over all episodes)")
    ax.set_title(title, fontsize=10)
    if len(classes) <= ANNOTATE_MAX_CLASSES:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if counts[i, j] == 0:
                    continue
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(
                    j,
                    i,
                    f"{100 * rates[i, j]:.0f}",
                    ha="center",
                    va="center",
                    color=color,
                    fontsize=8,
                )
    save_figure(fig, path)
    return fig


def plot_recall_vs_class_size(
    methods: Sequence[tuple[str, pd.DataFrame, float]], path: Path, title: str = ""
) -> None:
    """Per-class recall (mean over episodes) against the class's training count.

    ``methods`` holds (label, per_class rows of that configuration, its mean metric);
    the best :data:`RECALL_MAX_METHODS` are drawn. Small classes falling behind is the
    signature of imbalance.
    """
    ranked = sorted(methods, key=lambda m: -m[2])[:RECALL_MAX_METHODS]
    fig = Figure(figsize=(8.5, 5.0))
    ax = fig.add_subplot()
    sizes: list[float] = []
    for (label, rows, _), color in zip(ranked, palette(len(ranked)), strict=True):
        per_class = rows.groupby("class").agg(
            n_train=("n_train", "mean"), recall=("recall", "mean")
        )
        per_class = per_class.sort_values("n_train")
        sizes += list(per_class["n_train"])
        ax.plot(
            per_class["n_train"],
            100 * per_class["recall"],
            marker="o",
            ls="--",
            lw=1,
            color=color,
            label=label,
            alpha=0.85,
        )
    positive = [s for s in sizes if s > 0]
    if positive and max(positive) / min(positive) > 10:
        ax.set_xscale("log")
    if ranked:
        # Name the classes under their sizes: the reader wants to know which class lags.
        first = ranked[0][1].groupby("class")["n_train"].mean().sort_values()
        if 0 < len(first) <= 12 and first.nunique() == len(first):
            ax.set_xticks(list(first), [f"{n:g}\n{c}" for c, n in first.items()], fontsize=8)
            ax.minorticks_off()
    ax.set_ylim(-3, 103)
    ax.set_xlabel("training images in the class")
    ax.set_ylabel("recall of the class (%)")
    ax.set_title(title or "per-class recall vs class size")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    save_figure(fig, path)


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First two principal components: features [N, D] -> (coords [N, 2], variance ratio [2])."""
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    k = min(2, vt.shape[0])
    coords = np.zeros((x.shape[0], 2))
    coords[:, :k] = x @ vt[:k].T
    var = s**2
    ratio = np.zeros(2)
    ratio[:k] = var[:k] / var.sum() if var.sum() > 0 else 0.0
    return coords, ratio


def plot_embedding_pca(
    features: np.ndarray,
    labels: np.ndarray,
    label_names: Sequence[str],
    path: Path,
    title: str = "",
    seed: int = 0,
) -> None:
    """2-D PCA of embeddings coloured by class (a random subset when there are many)."""
    if features.ndim != 2 or len(features) < 2:
        raise FeatkitError(
            f"PCA plot {path.name}: expected at least 2 embeddings as a 2-D array, "
            f"got shape {features.shape}"
        )
    if len(features) > PCA_MAX_POINTS:
        keep = np.sort(np.random.default_rng(seed).choice(len(features), PCA_MAX_POINTS, False))
        features, labels = features[keep], labels[keep]
    coords, ratio = pca_2d(features)
    classes = sorted(set(labels.tolist()))
    fig = Figure(figsize=(7.5, 6.0))
    ax = fig.add_subplot()
    for c, color in zip(classes, palette(len(classes)), strict=True):
        mask = labels == c
        name = label_names[c] if 0 <= c < len(label_names) else str(c)
        ax.scatter(
            coords[mask, 0],
            coords[mask, 1],
            s=9,
            color=color,
            alpha=0.7,
            lw=0,
            label=f"{name} ({int(mask.sum())})",
        )
    ax.set_xlabel(f"PC1 ({100 * ratio[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * ratio[1]:.1f}% of variance)")
    ax.set_title(title or "PCA of embeddings")
    ax.grid(True, alpha=0.3)
    ax.legend(
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        fontsize=8,
        frameon=False,
        markerscale=2,
        ncols=1 if len(classes) <= 25 else 2,
    )
    save_figure(fig, path)


def _read_store(path: Path) -> tuple[np.ndarray, np.ndarray, list[str], str, str]:
    """CLS features, labels, class names, dataset and model of the usable rows of a store."""
    from featkit.store.reader import open_store

    with open_store(path) as store:
        return (
            np.asarray(store.features("cls")),
            np.asarray(store.labels()),
            list(store.label_names),
            str(store.dataset),
            str(store.model),
        )


def plot_store_pca(store: Path, path: Path) -> bool:
    """PCA picture of one store's labelled CLS embeddings; False when it has none to show."""
    features, labels, names, dataset, model = _read_store(store)
    keep = (labels >= 0) & np.isfinite(features).all(axis=1)
    if keep.sum() < 2:
        return False
    plot_embedding_pca(
        features[keep],
        labels[keep],
        names,
        path,
        title=f"{dataset} / {model}: PCA of CLS embeddings",
    )
    return True


# ---------------------------------------------------------------------------------------
# Attention pictures (featkit attention)


def _upsample(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest upsampling of a patch grid [h, w, ...] to the image size (H, W)."""
    rows = np.minimum((np.arange(size[0]) * grid.shape[0]) // size[0], grid.shape[0] - 1)
    cols = np.minimum((np.arange(size[1]) * grid.shape[1]) // size[1], grid.shape[1] - 1)
    return np.asarray(grid[rows][:, cols])


_MASK_SHADE = np.array([30.0, 60.0, 150.0])  # blue wash over what a mask leaves out


def _masked(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with everything outside ``mask`` washed blue, so the kept region stands out.

    A tint rather than darkening: dark backgrounds (digits, night shots) must still show
    which patches were dropped.
    """
    keep = _upsample(mask.astype(np.float64), image.shape[:2])[..., None]
    pixels = image.astype(np.float64)
    washed = 0.35 * pixels + 0.65 * _MASK_SHADE
    return (keep * pixels + (1 - keep) * washed).clip(0, 255).astype(np.uint8)


def _outline(ax: Any, mask: np.ndarray, size: tuple[int, int]) -> None:
    """Yellow outline of the kept patches, drawn on the image's pixel grid."""
    if mask.all() or not mask.any():
        return
    up = _upsample(mask.astype(np.float64), size)
    ax.contour(up, levels=[0.5], colors="yellow", linewidths=1.0)


def _off(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def plot_attention(
    image: np.ndarray,
    attention: np.ndarray,
    masks: np.ndarray,
    path: Path,
    title: str = "",
    threshold: float = 0.6,
) -> None:
    """Image, mean attention, its mask; then each head's map and each head's mask.

    image: [H, W, 3] uint8 (what the model saw); attention: [heads, h, w]; masks: bool
    [heads, h, w]. Maps are drawn per patch (nearest), each with its own colour scale.
    """
    heads = attention.shape[0]
    ncols = max(3, min(heads, 6))
    head_rows = -(-heads // ncols)
    nrows = 1 + 2 * head_rows
    fig = Figure(figsize=(2.3 * ncols, 2.45 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    extent = (0, image.shape[1], image.shape[0], 0)
    size = (image.shape[0], image.shape[1])
    mean = attention.mean(axis=0)
    import torch  # deferred with the attention maths: report plots need no torch

    from featkit.viz.attention import attention_masks

    mean_mask = attention_masks(torch.from_numpy(mean), threshold).numpy()
    top = axes[0]
    for ax in top[:3]:
        ax.set_axis_on()
        _off(ax)
    top[0].imshow(image)
    top[0].set_title("input", fontsize=9)
    top[1].imshow(mean, cmap="inferno", extent=extent, interpolation="nearest")
    top[1].set_title("mean over heads", fontsize=9)
    top[2].imshow(_masked(image, mean_mask))
    _outline(top[2], mean_mask, size)
    top[2].set_title(f"mean: {threshold:.0%} of mass", fontsize=9)
    for i in range(heads):
        row, col = 1 + 2 * (i // ncols), i % ncols
        ax = axes[row, col]
        ax.set_axis_on()
        _off(ax)
        ax.imshow(attention[i], cmap="inferno", extent=extent, interpolation="nearest")
        ax.set_title(f"head {i}", fontsize=9)
        ax = axes[row + 1, col]
        ax.set_axis_on()
        _off(ax)
        ax.imshow(_masked(image, masks[i]))
        _outline(ax, masks[i], size)
        ax.set_title(f"mask {i}: {int(masks[i].sum())} patches", fontsize=8)
    fig.suptitle(title or "last-block CLS attention", fontsize=11)
    save_figure(fig, path)


def plot_point_similarity(
    image: np.ndarray,
    similarity: np.ndarray,
    point: tuple[float, float],
    path: Path,
    title: str = "",
) -> None:
    """The image with the chosen point, and the cosine-similarity map of its patch."""
    fig = Figure(figsize=(9.0, 4.4))
    left, right = fig.subplots(1, 2)
    extent = (0, image.shape[1], image.shape[0], 0)
    for ax in (left, right):
        _off(ax)
    left.imshow(image)
    left.plot([point[0]], [point[1]], marker="x", color="red", ms=12, mew=3)
    left.set_title("input and the chosen point", fontsize=9)
    shown = right.imshow(
        similarity, cmap="RdBu_r", vmin=-1, vmax=1, extent=extent, interpolation="nearest"
    )
    right.plot([point[0]], [point[1]], marker="x", color="black", ms=12, mew=3)
    right.set_title("cosine similarity of patch features", fontsize=9)
    fig.colorbar(shown, ax=right, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def plot_pca_rgb(image: np.ndarray, rgb: np.ndarray, path: Path, title: str = "") -> None:
    """The image beside its patch features' first three principal components as colours."""
    fig = Figure(figsize=(8.4, 4.4))
    left, right = fig.subplots(1, 2)
    for ax in (left, right):
        _off(ax)
    left.imshow(image)
    left.set_title("input", fontsize=9)
    extent = (0, image.shape[1], image.shape[0], 0)
    right.imshow(rgb, extent=extent, interpolation="nearest")
    right.set_title("PC1-3 of patch features → RGB", fontsize=9)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
