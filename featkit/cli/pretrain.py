"""``featkit pretrain``: DINO self-distillation on your own unlabelled images."""

from __future__ import annotations

import json
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
    TrainPrecision,
    device_option,
    image_size_option,
    precision_option,
    resolve_workspace,
    weights_option,
)

ORDER = 30


class Centering(str, Enum):
    ema = "ema"
    sinkhorn = "sinkhorn"


def _check_state_file(path: Path) -> None:
    """Refuse a state file a weights-only load rejects before anything is built.

    Memory-mapped, so that checking a large state costs no copy of its tensors.
    """
    import torch

    from featkit.errors import FeatkitError

    if not path.is_file():
        return
    with safe_loads("--resume", path):
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, OSError, EOFError, ValueError) as err:
            first = (str(err).strip().splitlines() or ["unreadable"])[0][:120]
            raise FeatkitError(
                f"--resume {path}: expected a training state saved by featkit pretrain, "
                f"got a file torch cannot read ({first})"
            ) from None


@user_errors
def pretrain_command(
    data: Path = typer.Argument(
        ..., help="Image folder or CSV manifest; labels, if any, are ignored."
    ),
    arch: str | None = typer.Option(
        None,
        "--arch",
        help="Architecture: a backbone name (timm:<name>, featkit-tiny-dino, dinov2_vits14, ...). "
        "Random init unless --init or --weights.",
    ),
    init: str | None = typer.Option(
        None,
        "--init",
        help="Start from this pretrained DINO backbone (continued pretraining); "
        "its architecture is used.",
    ),
    weights: Path | None = weights_option("The start for --init or --arch."),
    epochs: int = typer.Option(..., "--epochs", help="Passes over the images."),
    image_size: int | None = image_size_option("The global crops' side (default: the model's)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per step."),
    out_dim: int = typer.Option(4096, "--out-dim", help="K prototypes of the DINO head."),
    hidden_dim: int = typer.Option(2048, "--hidden-dim", help="Width of the head's MLP."),
    bottleneck_dim: int = typer.Option(
        256, "--bottleneck-dim", help="Size of the normalised feature the prototypes score."
    ),
    local_crops: int = typer.Option(6, "--local-crops", help="Small crops per image."),
    global_scale: str = typer.Option(
        "0.4,1.0", "--global-scale", help="Area fraction range of the global crops (min,max)."
    ),
    local_scale: str = typer.Option(
        "0.05,0.4", "--local-scale", help="Area fraction range of the local crops (min,max)."
    ),
    koleo: float = typer.Option(0.0, "--koleo", help="Weight of DINOv2's KoLeo term (0: off)."),
    centering: Centering = typer.Option(
        Centering.ema, "--centering", help="ema: DINO's running centre; sinkhorn: DINOv2's."
    ),
    lr: float = typer.Option(5e-4, "--lr", help="Peak learning rate at batch 256 (scaled)."),
    warmup_epochs: int = typer.Option(10, "--warmup-epochs", help="Linear lr warm-up."),
    teacher_temp: float = typer.Option(
        0.07, "--teacher-temp", help="Final teacher temperature (warm-up starts at 0.04)."
    ),
    teacher_temp_warmup: int = typer.Option(
        30, "--teacher-temp-warmup", help="Epochs of the teacher temperature warm-up."
    ),
    momentum_teacher: float = typer.Option(
        0.996,
        "--momentum-teacher",
        help="Initial EMA momentum (cosine to 1); lower it for runs of few steps.",
    ),
    flip: bool = typer.Option(
        True, "--flip/--no-flip", help="Random horizontal flips (off when mirroring matters)."
    ),
    model_kwargs: str | None = typer.Option(
        None,
        "--model-kwargs",
        help='Architecture overrides as JSON for timm, e.g. \'{"depth": 4, "embed_dim": 128}\'.',
    ),
    precision: TrainPrecision = precision_option(TrainPrecision.auto),
    seed: int = typer.Option(0, "--seed", help="Seed of init, order and crops."),
    workers: int = typer.Option(0, "--workers", help="Data loading processes (0: inline)."),
    device: str = device_option(),
    out_path: Path | None = typer.Option(
        None,
        "--out",
        help="Backbone .safetensors "
        "(default: <workspace>/pretrain/<dataset>/<arch>-dino.safetensors).",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
    workspace: Path | None = WORKSPACE_OPTION,
) -> None:
    """Pretrain a backbone with DINO on unlabelled images (no labels are used).

    Student and teacher share the architecture; the teacher is an EMA of the
    student; the student matches the centred, sharpened teacher across 2 global
    and N local crops. The teacher backbone is saved after every epoch in timm
    layout, so `featkit extract DATA --model ARCH --weights OUT` reads it.
    Interrupt at any time and rerun with --resume.

    Examples:

        featkit pretrain data/cells --arch timm:vit_small_patch16_224 --epochs 100

        featkit pretrain data/cells --init dino_vits16 --epochs 20 --lr 1e-4

        featkit pretrain data/cells --arch featkit-tiny-dino --epochs 50 --centering sinkhorn

        featkit pretrain data/cells --arch timm:vit_small_patch16_224 --epochs 100 --resume
    """
    from featkit.data.images import discover
    from featkit.dino import PretrainConfig, pretrain, state_path
    from featkit.errors import FeatkitError
    from featkit.workspace import safe_name

    if arch is None and init is None:
        raise FeatkitError("pretrain: expected --arch NAME or --init MODEL, got neither")
    if arch is not None and init is not None and arch != init:
        raise FeatkitError(
            f"pretrain: --init {init} fixes the architecture; expected no --arch or the "
            f"same name, got --arch {arch}"
        )
    kwargs = _parse_kwargs(model_kwargs)
    if resume and out_path is not None:
        _check_state_file(state_path(out_path))
    name = init or arch or ""
    if out_path is None:
        dataset = discover(data)
        out_path = (
            resolve_workspace(workspace)
            / "pretrain"
            / safe_name(dataset.name)
            / f"{safe_name(name)}-dino.safetensors"
        )
    config = PretrainConfig(
        arch=arch or name,
        init=init,
        weights=str(weights) if weights is not None else None,
        epochs=epochs,
        image_size=image_size,
        batch_size=batch_size,
        out_dim=out_dim,
        hidden_dim=hidden_dim,
        bottleneck_dim=bottleneck_dim,
        local_crops=local_crops,
        global_scale=_parse_range("--global-scale", global_scale),
        local_scale=_parse_range("--local-scale", local_scale),
        koleo=koleo,
        centering=centering.value,
        lr=lr,
        warmup_epochs=warmup_epochs,
        teacher_temp=teacher_temp,
        warmup_teacher_temp_epochs=teacher_temp_warmup,
        momentum_teacher=momentum_teacher,
        flip=flip,
        precision=precision.value,
        seed=seed,
        num_workers=workers,
        device=None if device == "auto" else device,  # None: the trainer picks
        model_kwargs=kwargs,
    )
    console.print(f"DINO pretraining of [bold]{name}[/] on {data} -> {out_path}", highlight=False)
    # A refused pickle is the state file when resuming, else the starting weights.
    loaded = ("--resume", state_path(out_path)) if resume else ("--weights", weights or init)
    with progress_bars() as bars, safe_loads(*loaded):
        result = pretrain(data, config, out_path, resume=resume, progress=bars)
    last = result.history[-1] if result.history else {}
    out.print(
        f"done: {result.epochs_done} epochs; last epoch loss {last.get('loss', float('nan')):.4f}, "
        f"teacher entropy {last.get('teacher_entropy', float('nan')):.3f}, "
        f"KL {last.get('kl', float('nan')):.4f}",
        highlight=False,
    )
    out.print(f"weights: {result.weights}", highlight=False, soft_wrap=True)
    out.print(
        f"next: featkit extract {data} --model {name} --weights {result.weights}",
        highlight=False,
        soft_wrap=True,
    )


def _parse_range(option: str, raw: str) -> tuple[float, float]:
    from featkit.errors import FeatkitError

    try:
        low, high = (float(v) for v in raw.split(","))
    except ValueError as err:
        raise FeatkitError(f"{option}: expected two numbers like 0.4,1.0, got {raw!r}") from err
    if not 0.0 < low <= high <= 1.0:
        raise FeatkitError(f"{option}: expected 0 < min <= max <= 1, got {raw!r}")
    return (low, high)


def _parse_kwargs(raw: str | None) -> dict[str, object]:
    from featkit.errors import FeatkitError

    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        raise FeatkitError(f"--model-kwargs: expected a JSON object, got {raw!r}") from err
    if not isinstance(value, dict):
        raise FeatkitError(f"--model-kwargs: expected a JSON object, got {raw!r}")
    return value


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain_command)
