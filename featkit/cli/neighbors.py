"""``featkit neighbors``: nearest images, near-duplicate pairs, likely mislabelled images."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from featkit.cli._common import (
    out,
    user_errors,
)
from featkit.cli._options import (
    STORE_ARGUMENT,
    StoredFeature,
    device_option,
    stored_feature_option,
    weights_option,
)
from featkit.neighbors.questions import DUPLICATE_THRESHOLD

ORDER = 14

# Neighbours voting on each label, and near-duplicate candidates per image.
DEFAULT_K = {"query": 5, "duplicates": 10, "label_noise": 10}
DEFAULT_TOP = 20


class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


def _emit(rows: list[dict[str, Any]], columns: list[str], title: str, fmt: OutputFormat) -> None:
    if fmt is OutputFormat.json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if fmt is OutputFormat.csv:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        typer.echo(buffer.getvalue(), nl=False)
        return
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        numeric = column in ("rank", "similarity", "disagreement")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=True)
    for row in rows:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    out.print(table)


@user_errors
def neighbors_command(
    store: Path = STORE_ARGUMENT,
    query: str | None = typer.Option(
        None,
        "--query",
        help="A path as stored (see featkit info) or any image file, embedded with the "
        "store's backbone.",
    ),
    duplicates: bool = typer.Option(
        False, "--duplicates", help="List near-duplicate pairs (cosine ≥ --threshold)."
    ),
    label_noise: bool = typer.Option(
        False,
        "--label-noise",
        help="Rank labelled images by how much their k nearest neighbours disagree with the label.",
    ),
    k: int | None = typer.Option(
        None,
        "--k",
        help="Neighbours: shown for --query (5), candidates per image for --duplicates (10), "
        "voters for --label-noise (10).",
    ),
    min_cosine: float = typer.Option(
        DUPLICATE_THRESHOLD,
        "--threshold",
        help="--duplicates: cosine at or above which a pair is listed.",
    ),
    top: int | None = typer.Option(
        None, "--top", help="Rows shown: default every duplicate pair, 20 suspects; 0 = all."
    ),
    feature: StoredFeature = stored_feature_option("to compare"),
    weights: Path | None = weights_option("--query: the one the store was extracted with."),
    device: str = device_option("cpu", "Runs the --query image through the backbone."),
    fmt: OutputFormat = typer.Option(
        OutputFormat.table, "--format", help="table (rich), csv or json on stdout."
    ),
) -> None:
    """Find the nearest images of a query, near-duplicate pairs, or likely mislabelled images.

    Similarity is the cosine of the stored features. --label-noise scores each image by the
    share of its k nearest neighbours' vote (weights exp(sim/0.07), as the official DINO
    k-NN) that goes to another class: 1 means no neighbour agrees with its label.

    Examples:

        featkit neighbors runs/pets/dinov2_vits14.h5 --query photos/new_cat.jpg --k 8

        featkit neighbors runs/pets/dinov2_vits14.h5 --query cat/0042.jpg

        featkit neighbors runs/pets/dinov2_vits14.h5 --duplicates --threshold 0.97

        featkit neighbors runs/pets/dinov2_vits14.h5 --label-noise --top 50 --format csv
    """
    from featkit.errors import FeatkitError
    from featkit.neighbors.questions import duplicate_pairs, nearest_images
    from featkit.neighbors.questions import label_noise as rank_label_noise
    from featkit.store.reader import open_store

    modes = [name for name, on in (("--query", query is not None), ("--duplicates", duplicates),
                                   ("--label-noise", label_noise)) if on]  # fmt: skip
    if len(modes) != 1:
        raise FeatkitError(
            "neighbors: expected exactly one of --query, --duplicates, --label-noise, got "
            f"{' and '.join(modes) or 'none'}"
        )
    if k is not None and k < 1:
        raise FeatkitError(f"--k: expected a positive integer, got {k}")
    if top is not None and top < 0:
        raise FeatkitError(f"--top: expected 0 (all) or a positive integer, got {top}")
    with open_store(store) as opened:
        kind = feature.value
        if query is not None:
            found = nearest_images(opened, query, k or DEFAULT_K["query"], kind,
                                   weights=weights, device=device)  # fmt: skip
            rows = [asdict(n) for n in found]
            title = f"nearest to {query} ({opened.model}, {kind})"
        elif duplicates:
            pairs = duplicate_pairs(opened, kind, min_cosine, k or DEFAULT_K["duplicates"])
            rows = [asdict(p) for p in pairs]
            title = f"{len(rows)} pairs with cosine ≥ {min_cosine} ({opened.model}, {kind})"
            top = 0 if top is None else top
        else:
            suspects = rank_label_noise(opened, kind, k or DEFAULT_K["label_noise"])
            rows = [asdict(s) for s in suspects]
            title = f"likely mislabelled, most disagreement first ({opened.model}, {kind})"
            top = DEFAULT_TOP if top is None else top
    if top:
        rows = rows[:top]
    columns = {
        "--query": ["rank", "path", "label", "split", "similarity"],
        "--duplicates": ["path_a", "path_b", "label_a", "label_b", "similarity"],
        "--label-noise": ["rank", "path", "label", "suggested", "disagreement"],
    }[modes[0]]
    _emit([{c: row[c] for c in columns} for row in rows], columns, title, fmt)


def register(app: typer.Typer) -> None:
    app.command("neighbors")(neighbors_command)
