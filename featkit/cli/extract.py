"""``featkit extract``: the one expensive pass, images -> embedding store."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from featkit.cli._common import (
    console,
    out,
    progress_bars,
    safe_loads,
    user_errors,
)
from featkit.cli._options import (
    WORKSPACE_OPTION,
    ExtractPrecision,
    device_option,
    image_size_option,
    model_option,
    precision_option,
    random_init_option,
    resolve_workspace,
    weights_option,
)

ORDER = 10

# How many failed images the summary names before it only counts them.
SHOWN_FAILURES = 5


class PatchMode(str, Enum):
    full = "full"
    mean = "mean"
    none = "none"


@user_errors
def extract_command(
    data: Path = typer.Argument(..., help="Image folder (class sub-folders) or CSV manifest."),
    model: str = model_option(),
    weights: Path | None = weights_option(),
    image_size: int | None = image_size_option(),
    patches: PatchMode = typer.Option(
        PatchMode.mean,
        "--patches",
        help="full: also store the float16 patch grid; mean: CLS + patch mean; none: CLS only.",
    ),
    layers: int = typer.Option(
        1,
        "--layers",
        help="Also store the CLS tokens of the last N blocks (the official linear-evaluation "
        "features: probe --feature cls4, cls4+avgpool); 1: the last CLS only.",
    ),
    precision: ExtractPrecision = precision_option(ExtractPrecision.auto),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per forward pass."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="Decode threads beside the forward pass (0: inline; default: from the usable "
        "cores, 1 per 8 on a CPU and at least 1, all but one with CUDA).",
    ),
    shard_size: int = typer.Option(
        512, "--shard-size", help="Rows per shard file: the unit of crash recovery."
    ),
    device: str = device_option(),
    out_path: Path | None = typer.Option(
        None, "--out", help="Store file (default: <workspace>/<dataset>/<model>.h5)."
    ),
    name: str | None = typer.Option(
        None,
        "--name",
        help="Model name in the store and its file name (two checkpoints of one model).",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a store made with other settings."
    ),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Decode images that failed last time again."
    ),
    allow_outside_root: bool = typer.Option(
        False,
        "--allow-outside-root",
        help="Let a CSV manifest name files outside its folder (../ or absolute paths).",
    ),
    transform: str = typer.Option(
        "processor",
        "--transform",
        help="hf: models only: follow the model's processor config (processor) or the "
        "DINO family's evaluation recipe, shorter-side resize + centre crop (family).",
    ),
    random_init: bool = random_init_option("Stored as <model>-random."),
    adapter: Path | None = typer.Option(
        None,
        "--adapter",
        help="An adapter folder written by featkit finetune (…/episode-N): extract tuned "
        "features into a new store, <model>-<method>-<hash>.",
    ),
    workspace: Path | None = WORKSPACE_OPTION,
) -> None:
    """Extract CLS and patch-mean embeddings of every image into one HDF5 store.

    Safe to interrupt: the same command again resumes where it stopped.

    After adding images, it extracts only the new ones.

    Examples:

        featkit extract data/flowers --model dinov2_vits14

        featkit extract data/flowers --model dinov2_vitb14 --weights ckpt/dinov2_vitb14.pth

        featkit extract labels.csv --model timm:vit_small_patch16_224.dino --patches full

        featkit extract data/flowers --model dinov2_vits14 --layers 4

        featkit extract data/flowers --model dinov2_vits14 --random-init

        featkit extract data/flowers --model dinov2_vits14 --adapter runs/lora/10-shot/episode-0

        torchrun --standalone --nproc-per-node 4 -m featkit extract data/ --model dinov2_vitb14
    """
    import os

    # Idle OpenMP threads sleep rather than spin between forward passes, so the decode
    # threads get the cores in the gaps (a/b 0.77 -> 0.83 here, docs/performance.md).
    # Set before torch starts its OpenMP runtime; an explicit user setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from featkit.backbones.naming import (
        adapter_store_name,
        build_backbone,
        mark_adapter,
        random_init_name,
    )
    from featkit.data.images import discover
    from featkit.diskspace import human_bytes
    from featkit.errors import FeatkitError
    from featkit.extraction.distributed import context_from_env, process_group, rank_device
    from featkit.extraction.run import ExtractSettings, extract
    from featkit.progress import SILENT
    from featkit.tune import adapter_fingerprint, load_tuned_backbone
    from featkit.workspace import store_path

    if layers < 1:
        raise FeatkitError(f"--layers: expected a positive number of blocks, got {layers}")
    if random_init and weights is not None:
        raise FeatkitError("--random-init: expected no --weights with it, got both")
    # Under torchrun every copy of this command is one rank of the job; rank 0 talks.
    ctx = context_from_env(os.environ)
    device = rank_device(ctx, device, torch.cuda.is_available())
    dataset = discover(data, allow_outside_root=allow_outside_root)
    tuned = adapter_fingerprint(adapter) if adapter is not None else None
    if tuned is not None:
        store_model = name or adapter_store_name(model, tuned)
    else:
        store_model = name or (random_init_name(model) if random_init else model)
    target = out_path or store_path(resolve_workspace(workspace), dataset.name, store_model)
    with safe_loads("--model", model):
        backbone = build_backbone(
            model,
            weights=weights,
            image_size=image_size,
            pretrained=not random_init,
            transform=transform,
        )
    if layers > max(1, backbone.depth()):
        raise FeatkitError(
            f"--layers: expected 1 to {max(1, backbone.depth())} for {model} "
            f"({backbone.depth()} transformer blocks), got {layers}"
        )
    if adapter is not None and tuned is not None:
        backbone = load_tuned_backbone(backbone, adapter)
        mark_adapter(backbone, tuned)
    settings = ExtractSettings(
        patches=patches.value,
        precision=precision.value,
        batch_size=batch_size,
        workers=workers,  # None: from the cores and device (thread_plan)
        shard_size=shard_size,
        device=device,
        model_name=store_model,
        overwrite=overwrite,
        retry_failed=retry_failed,
        layers=layers,
    )
    processes = f" ({ctx.world} processes)" if ctx.is_distributed else ""
    if ctx.is_main:
        console.print(
            f"extracting [bold]{len(dataset)}[/] images of [bold]{dataset.name}[/] with "
            f"[bold]{store_model}[/]{processes} -> {target}",
            highlight=False,
            soft_wrap=True,
        )
    with process_group(ctx, device) as coordinator:
        if ctx.is_main:
            with progress_bars() as bars:
                report = extract(dataset, backbone, target, settings, bars, coordinator)
        else:
            report = extract(dataset, backbone, target, settings, SILENT, coordinator)
    if not ctx.is_main:
        return
    if report.up_to_date:
        out.print(
            f"{target}: up to date ({report.rows} rows, {len(report.failed)} failed), "
            "nothing to extract",
            highlight=False,
            soft_wrap=True,
        )
    else:
        out.print(
            f"done: {report.rows} rows in {target} ({human_bytes(report.file_size)}); "
            f"extracted {report.extracted}{' on rank 0' if processes else ''} at "
            f"{report.images_per_second:.1f} img/s ({report.precision} on {report.device})"
            f"{processes}, reused {report.reused}, {len(report.failed)} failed; "
            f"{report.seconds:.1f} s",
            highlight=False,
            soft_wrap=True,
        )
    for path, reason in report.failed[:SHOWN_FAILURES]:
        out.print(f"  failed: {path}: {reason}", highlight=False, soft_wrap=True)
    if len(report.failed) > SHOWN_FAILURES:
        out.print(f"  ... and {len(report.failed) - SHOWN_FAILURES} more (featkit info {target})")


def register(app: typer.Typer) -> None:
    app.command("extract")(extract_command)
