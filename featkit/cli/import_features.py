"""``featkit import``: a store from features computed elsewhere."""

from __future__ import annotations

from pathlib import Path

import typer

from featkit.cli._common import (
    out,
    user_errors,
)
from featkit.cli._options import (
    WORKSPACE_OPTION,
    resolve_workspace,
)

ORDER = 12


@user_errors
def import_command(
    features: Path = typer.Argument(..., help="A .npy file holding an [N, D] float array."),
    labels: Path = typer.Option(
        ..., "--labels", help="CSV with a 'label' column and optional 'path', 'split' columns."
    ),
    name: str | None = typer.Option(
        None,
        "--name",
        help="Model name of the store, e.g. clip-vitb16 (default: the .npy file stem).",
    ),
    dataset: str | None = typer.Option(
        None, "--dataset", help="Data set name (default: the CSV's file name without suffix)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store."),
    workspace: Path | None = WORKSPACE_OPTION,
) -> None:
    """Make a store from your own features so every protocol can evaluate them.

    Row i of FEATURES.npy belongs to row i of the CSV; the store keeps them as "cls".

    Examples:

        featkit import clip_feats.npy --labels labels.csv --name clip-vitb16

        featkit import feats.npy --labels meta.csv --name mine --dataset flowers -w runs/
    """
    import numpy as np

    from featkit.errors import FeatkitError
    from featkit.store.reader import import_features

    if features.suffix.lower() != ".npy":
        raise FeatkitError(
            f"features {features}: expected a .npy file, got {features.suffix or 'no suffix'}"
        )
    if not features.is_file():
        raise FeatkitError(f"features {features}: expected a .npy file, found nothing")
    try:
        array = np.load(features, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise FeatkitError(f"features {features}: expected a numeric .npy array ({err})") from None
    path = import_features(
        np.asarray(array),
        labels,
        name if name is not None else features.stem,
        resolve_workspace(workspace),
        dataset=dataset,
        overwrite=overwrite,
    )
    out.print(f"imported {array.shape[0]} rows of dim {array.shape[1]} -> {path}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("import")(import_command)
