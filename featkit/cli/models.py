"""``featkit models``: every model name featkit knows, with what it is."""

from __future__ import annotations

import json

import typer

from featkit.cli._common import out, user_errors

ORDER = 13


@user_errors
def models_command(
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
    no_cache_check: bool = typer.Option(
        False, "--no-cache-check", help="Skip looking for downloaded weights (faster)."
    ),
) -> None:
    """List the official DINO hub names: family, patch size, width, depth, registers, and
    whether their weights are already downloaded; then the official names featkit does
    not build, with the reason. Any timm:<name> or hf:<id or folder> works too.

    Examples:

        featkit models

        featkit models --json
    """
    from rich.table import Table

    from featkit.backbones import list_backbones
    from featkit.backbones.hub import HUB_MODELS, describe_models

    rows = describe_models(check_cache=not no_cache_check)
    others = [n for n in list_backbones() if n not in HUB_MODELS]
    if as_json:
        out.print_json(json.dumps({"models": rows, "other_names": others}))
        return
    table = Table(title="featkit models (featkit extract --model NAME)")
    for column in ("name", "family", "patch", "dim", "depth", "registers", "weights"):
        table.add_column(column, overflow="fold")
    for row in rows:
        if not row["supported"]:
            continue
        cached = "cached" if row["weights_cached"] else "-" if not no_cache_check else "?"
        table.add_row(
            row["name"],
            row["family"],
            str(row["patch_size"]),
            str(row["embed_dim"]),
            str(row["depth"]),
            str(row["registers"]),
            cached,
        )
    out.print(table)
    unsupported: dict[str, list[str]] = {}
    for row in rows:
        if not row["supported"]:
            unsupported.setdefault(row["note"], []).append(row["name"])
    for note, names in unsupported.items():
        out.print(f"{', '.join(names)}: {note}", highlight=False)
    out.print(
        f"also: {', '.join(others)}; timm:<timm name>; hf:<hub id or folder>", highlight=False
    )


def register(app: typer.Typer) -> None:
    app.command("models")(models_command)
