"""`featkit demo`: the whole story on bundled real data, no network needed."""

from __future__ import annotations

from pathlib import Path

import typer

from featkit.cli._common import (
    console,
    out,
    progress_bars,
    user_errors,
)
from featkit.cli._options import (
    WORKSPACE_OPTION,
    episodes_option,
    image_size_option,
    model_option,
    resolve_workspace,
    shots_option,
    weights_option,
)

ORDER = 1


@user_errors
def demo(
    model: str = model_option(
        "featkit-tiny-dino", "Compared against its random-init twin and raw pixels."
    ),
    weights: Path | None = weights_option(),
    image_size: int | None = image_size_option(),
    episodes: int = episodes_option(),
    shots: str = shots_option(),
    finetune_shots: str = typer.Option(
        "10", "--finetune-shots", help="Shot counts for the LoRA fine-tune ('' to skip)."
    ),
    max_per_class: int | None = typer.Option(
        None, "--max-per-class", help="Cap on the largest class (a quicker, smaller demo)."
    ),
    target: float = typer.Option(
        0.9,
        "--target",
        "-t",
        help="Balanced accuracy to ask about (fraction or percent): the demo ends with the "
        "cheapest route that reaches it, or how far each model falls short.",
    ),
    workspace: Path | None = WORKSPACE_OPTION,
) -> None:
    """Run the whole featkit story on an imbalanced set of real handwritten digits.

    Builds the data (sklearn's digits, about 10:1 between the largest and smallest
    class), extracts it with the bundled featkit-tiny-dino, the same architecture
    with random weights and raw pixels, probes zero-shot, 1/5/10-shot and on the
    full training split, fine-tunes with LoRA on the same splits, writes the report
    and prints the comparison table.

    Examples:

        featkit demo

        featkit demo --workspace /tmp/demo --episodes 3

        featkit demo --model dinov2_vits14          # real DINOv2 weights (needs a network)
    """
    from featkit.cli._tables import rich_table
    from featkit.demo import DemoSettings, run_demo

    settings = DemoSettings(
        model=model,
        weights=weights,
        image_size=image_size,
        episodes=episodes,
        shots=shots,
        finetune_shots=finetune_shots,
        max_per_class=max_per_class,
        target=target / 100 if target > 1 else target,
    )
    root = resolve_workspace(workspace)
    with progress_bars() as progress:
        result = run_demo(root, settings, progress)
    out.print(rich_table(result.report.table))
    steps = ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items())
    console.print(f"time: {steps}", highlight=False)
    console.print(f"data:    {result.data}", highlight=False)
    for store in result.stores:
        console.print(f"store:   {store}", highlight=False)
    console.print(f"report:  {result.report.html}", highlight=False)
    console.print(f"tables:  {result.report.folder}/comparison.md (.csv, .tex)", highlight=False)
    if result.report.answer is not None:
        out.print(f"\n{result.report.answer.paragraph}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(demo)
