"""``featkit finetune``: light tuning (LoRA, last blocks, head) on the probes' splits."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from featkit.cli._common import (
    console,
    out,
    progress_bars,
    user_errors,
)
from featkit.cli._options import (
    TEST_FRACTION_OPTION,
    WORKSPACE_OPTION,
    TrainPrecision,
    device_option,
    episodes_option,
    image_size_option,
    model_option,
    precision_option,
    random_init_option,
    resolve_workspace,
    seed_option,
    shots_option,
    weights_option,
)

if TYPE_CHECKING:
    from featkit.tune.run import FinetuneRun

ORDER = 25


class Method(str, Enum):
    lora = "lora"
    last_block = "last-block"
    linear = "linear"


class Loss(str, Enum):
    ce = "ce"
    class_balanced = "class-balanced"
    logit_adjusted = "logit-adjusted"


@user_errors
def finetune_command(
    source: Path = typer.Argument(
        ..., help="A store (.h5) made by featkit extract, an image folder or a CSV manifest."
    ),
    model: str | None = model_option(None, "Default: the store's model."),
    weights: Path | None = weights_option(),
    image_size: int | None = image_size_option("Default: the store's, else the model's."),
    random_init: bool = random_init_option("The same base as extract --random-init."),
    data: Path | None = typer.Option(
        None, "--data", help="With a store: the image folder or manifest it was extracted from."
    ),
    method: Method = typer.Option(Method.lora, "--method", help="What to train besides the head."),
    shots: str = shots_option(),
    episodes: int = episodes_option("The probe's first N draws."),
    seed: int = seed_option("Also seeds training."),
    test_fraction: float = TEST_FRACTION_OPTION,
    loss: Loss = typer.Option(Loss.ce, "--loss", help="Training loss for imbalanced classes."),
    lora_r: int = typer.Option(8, "--lora-r", help="LoRA rank."),
    lora_alpha: float | None = typer.Option(
        None, "--lora-alpha", help="LoRA scale numerator (default: the rank)."
    ),
    lora_dropout: float = typer.Option(0.1, "--lora-dropout", help="Dropout on LoRA inputs."),
    blocks: int = typer.Option(1, "--blocks", help="last-block: final blocks to unfreeze."),
    epochs: int | None = typer.Option(
        None, "--epochs", help="Passes over the training images (default: scaled to the data)."
    ),
    steps: int | None = typer.Option(None, "--steps", help="Optimiser steps (wins over --epochs)."),
    lr: float | None = typer.Option(
        None, "--lr", help="Peak learning rate (default: linear 1e-2, lora 1e-3, last-block 2e-4)."
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per step."),
    flip: bool = typer.Option(
        False,
        "--flip/--no-flip",
        help="Random horizontal flips (off by default: they change digits, text, chiral classes).",
    ),
    precision: TrainPrecision = precision_option(TrainPrecision.auto),
    device: str = device_option(),
    cpu_threads: int | None = typer.Option(
        None, "--cpu-threads", help="CPU threads (default: 1 for small steps, else all)."
    ),
    save_adapters: bool = typer.Option(
        True, "--save-adapters/--no-save-adapters", help="Keep each episode's adapter."
    ),
    workspace: Path | None = WORKSPACE_OPTION,
) -> None:
    """Fine-tune lightly on the same splits and episodes as featkit probe; write its rows.

    Each (shots, episode) draw tunes a fresh copy of the model and scores it on the
    shared test split. Rows go to the workspace's results CSVs with protocol
    finetune-lora, finetune-last-block or finetune-linear, next to the probes'; each
    episode's adapter is saved under <workspace>/finetune/ (featkit extract --adapter
    extracts tuned features with it).

    Examples:

        featkit finetune featkit_runs/flowers/dinov2_vits14.h5 --data data/flowers

        featkit finetune data/flowers --model dinov2_vits14 --method last-block --shots 5,all

        featkit finetune data/flowers --model dinov2_vits14 --weights ckpt.pth --loss logit-adjusted

        featkit finetune data/digits --model timm:vit_small_patch16_224.dino --image-size 64 \\
            --method linear --episodes 10
    """
    from featkit.backbones.naming import (
        base_model,
        build_backbone,
        is_random_init,
        random_init_name,
    )
    from featkit.errors import FeatkitError
    from featkit.evaluation.splits import Sweep, parse_shots
    from featkit.tune.methods import LoraOptions
    from featkit.tune.run import FinetuneSettings, labelled_images, require_labels, run_finetune

    if random_init and weights is not None:
        raise FeatkitError("--random-init: expected no --weights with it, got both")
    rows = labelled_images(source, data)
    require_labels(rows)
    name = model
    if rows.store_model is not None:
        stored = rows.store_model
        if is_random_init(stored) and model in (None, base_model(stored)):
            random_init, name = True, base_model(stored)
        elif model is not None and model != stored:
            raise FeatkitError(
                f"--model {model}: expected the store's model {stored!r} "
                f"(or no --model), got {model!r}"
            )
        else:
            name = stored
        if image_size is None and rows.fingerprint and rows.fingerprint.get("image_size"):
            image_size = int(rows.fingerprint["image_size"])
    if name is None:
        raise FeatkitError(f"{source}: expected --model NAME with a data folder, got none")
    settings = FinetuneSettings(
        method=method.value,
        loss=loss.value,
        lora=LoraOptions(r=lora_r, alpha=lora_alpha, dropout=lora_dropout),
        blocks=blocks,
        epochs=epochs,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        hflip=flip,
        precision=precision.value,
        device=device,
        cpu_threads=cpu_threads,
    )
    # The same seeded random base as extract --random-init's store.
    backbone = build_backbone(
        name, weights=weights, image_size=image_size, pretrained=not random_init
    )
    label = random_init_name(name) if random_init else name
    console.print(
        f"fine-tuning [bold]{label}[/] ({settings.protocol}, {settings.params()}) on "
        f"[bold]{rows.dataset}[/]: {len(rows.paths)} images, {episodes} episode(s) per "
        "few-shot setting ('all' has one)",
        highlight=False,
        soft_wrap=True,
    )
    ws = resolve_workspace(workspace)
    with progress_bars() as bars:
        run = run_finetune(
            rows,
            backbone,
            settings,
            Sweep(parse_shots(shots), episodes, seed, test_fraction),
            workspace=ws,
            save_adapters=save_adapters,
            model_name=label,
            progress=bars,
        )
    _print_summary(run, ws)


def _print_summary(run: FinetuneRun, workspace: Path) -> None:
    from featkit.cli._tables import comparison_table
    from featkit.results.io import read_results, summarize_results

    # The rows this run wrote, read back as the report reads them: the same cells.
    rows = read_results(workspace)
    shots = {o.shots for o in run.outcomes}
    mine = rows[
        (rows["dataset"] == run.dataset)
        & (rows["model"] == run.model)
        & (rows["protocol"] == run.protocol)
        & (rows["params"] == run.params)
        & rows["shots"].isin(shots)
    ]
    out.print(comparison_table(summarize_results(mine), results=mine))
    by_shots: dict[str, list[float]] = {}
    for outcome in run.outcomes:
        by_shots.setdefault(outcome.shots, []).append(outcome.seconds)
    seconds = ", ".join(f"{k} {sum(v) / len(v):.1f}" for k, v in by_shots.items())
    out.print(f"training seconds per episode by shots: {seconds}", highlight=False)
    first = run.outcomes[0]
    out.print(
        f"trainable parameters: {first.trainable:,} of {first.total:,} "
        f"({100 * first.trainable / first.total:.2f}%); total time {run.seconds:.1f} s; "
        f"results in {run.results_dir}",
        highlight=False,
        soft_wrap=True,
    )
    if run.failed:
        out.print(f"skipped {len(run.failed)} undecodable image(s), e.g. {run.failed[0][0]}")


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune_command)
