"""``featkit export``: features out of a store, for other tools."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from featkit.cli._common import (
    out,
    user_errors,
)
from featkit.cli._options import (
    STORE_ARGUMENT,
    StoredFeature,
    stored_feature_option,
)

ORDER = 13


class ExportFormat(str, Enum):
    npy = "npy"
    parquet = "parquet"
    csv = "csv"


@user_errors
def export_command(
    store: Path = STORE_ARGUMENT,
    fmt: ExportFormat = typer.Option(
        ExportFormat.npy,
        "--format",
        help="npy: features.npy + metadata.csv (what featkit import reads); parquet: "
        "img_emb/*.npy + metadata/*.parquet (clip-retrieval layout, needs pyarrow); "
        "csv: one features.csv.",
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", help="Output folder (default: <store folder>/<model>-<format>/)."
    ),
    feature: StoredFeature = stored_feature_option("to export"),
) -> None:
    """Write a store's features with path, label and split for use outside featkit.

    Only images that decoded are exported (failed rows have no features); rows keep
    the store's order, sorted by path. Files are replaced atomically.

    Examples:

        featkit export featkit_runs/flowers/dinov2_vits14.h5

        featkit export featkit_runs/flowers/dinov2_vits14.h5 --format parquet --out emb/

        featkit export featkit_runs/flowers/dinov2_vits14.h5 --format csv --feature patch_mean

        featkit import emb/features.npy --labels emb/metadata.csv --name mine
    """
    from featkit.store.export import default_export_dir, export_store

    folder = out_dir if out_dir is not None else default_export_dir(store, fmt.value)
    result = export_store(store, folder, fmt.value, feature.value)
    skipped = f"; {result.skipped_failed} failed rows left out" if result.skipped_failed else ""
    out.print(
        f"exported {result.rows} rows of {feature.value} (dim {result.dim}){skipped} -> "
        + ", ".join(str(p) for p in result.files),
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
