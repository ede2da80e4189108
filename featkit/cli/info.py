"""``featkit info``: what a store holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from featkit.cli._common import (
    out,
    user_errors,
)
from featkit.cli._options import (
    STORE_ARGUMENT,
)

ORDER = 11

SHOWN_FAILURES = 5


def _flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        rows = []
        for key in sorted(value):
            rows += _flatten(f"{prefix}.{key}" if prefix else str(key), value[key])
        return rows
    return [(prefix, json.dumps(value) if isinstance(value, list) else str(value))]


@user_errors
def info_command(
    store: Path = STORE_ARGUMENT,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Read the whole store: checksums of every dataset, finite features, labels.",
    ),
) -> None:
    """Describe a store: rows, failures with reasons, labels, splits, fingerprint, size.

    Examples:

        featkit info featkit_runs/flowers/dinov2_vits14.h5

        featkit info featkit_runs/flowers/dinov2_vits14.h5 --json

        featkit info featkit_runs/flowers/dinov2_vits14.h5 --verify
    """
    from rich.table import Table

    from featkit.cost import COST_ATTR, read_cost
    from featkit.diskspace import human_bytes
    from featkit.errors import StoreDamagedError
    from featkit.store.reader import open_store

    with open_store(store) as opened:
        summary = opened.summary()
        summary["cost"] = read_cost(opened.attr(COST_ATTR))
        if verify:
            damage = opened.verify()
            if damage:
                more = f" (and {len(damage) - 1} more)" if len(damage) > 1 else ""
                raise StoreDamagedError(
                    f"store {store}: damaged: {damage[0]}{more}; extract it again with "
                    "--overwrite (or import it again)"
                )
            checked = "checksums and finite features verified"
            if not opened.has_checksums():
                checked = "finite features verified; no checksums recorded (older featkit)"
            summary["verified"] = checked
    if as_json:
        out.print_json(json.dumps(summary))
        return
    table = Table(title=f"{summary['dataset']} / {summary['model']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("file", f"{summary['path']} ({human_bytes(summary['file_size'])})")
    table.add_row("rows", f"{summary['rows']}: {summary['ok']} ok, {summary['failed']} failed")
    grid = summary["grid"]
    kinds = ", ".join(summary["feature_kinds"])
    table.add_row(
        "features",
        f"{kinds}; dim {summary['dim']}" + (f"; grid {grid[0]}x{grid[1]}" if grid else ""),
    )
    labels = summary["label_counts"]
    table.add_row(
        f"labels ({len(labels)})",
        ", ".join(f"{k}: {v}" for k, v in labels.items()) or "(unlabelled)",
    )
    table.add_row(
        "splits",
        ", ".join(f"{k or '(none)'}: {v}" for k, v in summary["split_counts"].items()) or "-",
    )
    failures = summary["failures"]
    if failures:
        lines = [f"{p}: {r}" for p, r in failures[:SHOWN_FAILURES]]
        if len(failures) > SHOWN_FAILURES:
            lines.append(f"... and {len(failures) - SHOWN_FAILURES} more")
        table.add_row("failed", "\n".join(lines))
    if "verified" in summary:
        table.add_row("verified", summary["verified"])
    if summary["cost"]:
        table.add_row("extraction cost", cost_line(summary["cost"]))
    for key, value in _flatten("", summary["fingerprint"]):
        table.add_row(f"fingerprint.{key}", value)
    out.print(table)


def cost_line(cost: dict[str, Any]) -> str:
    """``246 images in 3.1 s (79.4 images/s) on cpu, fp32; peak 512 MB``."""
    rate = cost.get("images_per_second")
    speed = f" ({rate:.1f} images/s)" if rate else ""
    return (
        f"{cost.get('images')} images in {float(cost.get('seconds') or 0):.1f} s{speed} "
        f"on {cost.get('device')}, {cost.get('precision')}; peak {cost.get('peak_mb')} MB"
    )


def register(app: typer.Typer) -> None:
    app.command("info")(info_command)
