"""``featkit finetune``: light tuning (LoRA, last blocks, head) on the probes' splits."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from featkit.cli._common import (
    WORKSPACE_OPTION,
    TrainPrecision,
    console,
    out,
    progress_bars,
    resolve_workspace,
    user_errors,
)

if TYPE_CHECKING:
    from featkit.tune.run import FinetuneRun

ORDER = 25
RANDOM_SUFFIX = "-random"  # featkit extract --random-init names its stores <model>-random


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
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Backbone: hub name, timm:<name>, hf:<id or folder> (default: the store's model).",
    ),
    weights: Path | None = typer.Option(
        None, "--weights", help="Local checkpoint (.pth/.safetensors) instead of hub weights."
    ),
    image_size: int | None = typer.Option(
        None, "--image-size", help="Input side in pixels (default: the store's, else the model's)."
    ),
    random_init: bool = typer.Option(
        False, "--random-init", help="Random (seeded) base weights, like extract --random-init."
    ),
    data: Path | None = typer.Option(
        None, "--data", help="With a store: the image folder or manifest it was extracted from."
    ),
    method: Method = typer.Option(Method.lora, "--method", help="What to train besides the head."),
    shots: str = typer.Option("1,5,10,all", "--shots", help="Images per class: k, 10% or all."),
    episodes: int = typer.Option(
        10, "--episodes", help="Draws per few-shot setting (the probe's first N); 'all' has one."
    ),
    seed: int = typer.Option(0, "--seed", help="Split, episode and training seed."),
    test_fraction: float = typer.Option(
        0.2, "--test-fraction", help="Test share per class when the data name no test split."
    ),
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
    precision: TrainPrecision = typer.Option(
        TrainPrecision.auto, "--precision", help="auto: bf16 where the CPU or GPU has it."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
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
    import torch

    from featkit.backbones import create_backbone
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
        if stored.endswith(RANDOM_SUFFIX) and model in (None, stored.removesuffix(RANDOM_SUFFIX)):
            random_init, name = True, stored.removesuffix(RANDOM_SUFFIX)
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
    if random_init:
        # extract --random-init seeds 0 too: the same random base as the store's.
        torch.manual_seed(0)
    backbone = create_backbone(
        name, weights=weights, image_size=image_size, pretrained=not random_init
    )
    label = name + RANDOM_SUFFIX if random_init else name
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
    _print_summary(run)


def _print_summary(run: FinetuneRun) -> None:
    import pandas as pd
    from rich.table import Table

    from featkit.evaluation.records import episode_records
    from featkit.report.table import format_cell
    from featkit.results.io import summarize_results

    table = Table(
        title=f"{run.model} · {run.protocol} · {run.dataset} "
        "(%, mean ± 95% CI over episodes and test images)"
    )
    for column in ("shots", "episodes", "accuracy", "balanced acc.", "macro-F1", "train s/ep"):
        table.add_column(column, justify="right")
    by_shots: dict[str, list] = {}
    for outcome in run.outcomes:
        by_shots.setdefault(outcome.shots, []).append(outcome)
    for shots, group in by_shots.items():
        # The rows the results files hold, summarised by the one summary of featkit.
        rows = []
        for o in group:
            base = {
                "dataset": run.dataset,
                "model": run.model,
                "feature": "cls",
                "protocol": run.protocol,
                "params": run.params,
                "shots": shots,
                "episode": o.episode,
                "run_id": "",
            }
            rows += episode_records(
                base, o.y_train, o.y_true, o.y_pred, (), test_paths=o.test_paths
            )[0]
        summary = summarize_results(pd.DataFrame(rows))
        cells = []
        for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
            s = summary[summary["metric"] == metric].iloc[0]
            mean, low, high = float(s["mean"]), float(s["ci95_low"]), float(s["ci95_high"])
            cells.append(format_cell(mean, (high - low) / 2, int(s["n_episodes"])))
        seconds = sum(o.seconds for o in group) / len(group)
        table.add_row(shots, str(len(group)), *cells, f"{seconds:.1f}")
    out.print(table)
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
