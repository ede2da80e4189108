"""The settings of a DINO run, what a run returns, and which settings a resumed run
must keep."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from featkit.errors import FeatkitError

STATE_SUFFIX = ".train.pt"

# Settings that must not change when a run is resumed (they shape the saved tensors
# or the meaning of the schedules already followed).
_RESUME_FIXED = (
    "arch",
    "init",
    "image_size",
    "out_dim",
    "hidden_dim",
    "bottleneck_dim",
    "batch_size",
    "local_crops",
    "local_size",
    "centering",
    "model_kwargs",
)


@dataclass
class PretrainConfig:
    """Settings of a DINO run; defaults are DINO v1's unless a comment says otherwise."""

    arch: str  # backbone name of the architecture (random init unless init/weights given)
    epochs: int = 100
    init: str | None = None  # start from this pretrained backbone's weights (hub or `weights`)
    weights: str | None = None  # local weight file to start from
    image_size: int | None = None  # global crop size; None: the backbone's default input size
    batch_size: int = 64
    out_dim: int = 4096  # K prototypes (DINO: 65536 for ImageNet; small sets need fewer)
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    head_layers: int = 3
    norm_last_layer: bool = True
    local_crops: int = 6
    local_size: int | None = None  # None: 96/224 of the global size, in whole patches
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    flip: bool = True
    koleo: float = 0.0  # weight of DINOv2's KoLeo term (0: off; DINOv2 used 0.1)
    centering: str = "ema"  # "ema" (DINO v1) | "sinkhorn" (DINOv2)
    lr: float = 5e-4  # at batch size 256, scaled linearly
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.996
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: int = 30
    student_temp: float = 0.1
    center_momentum: float = 0.9
    clip_grad: float = 3.0  # per-parameter gradient norm clip (0: off)
    freeze_last_layer: int = 1  # epochs during which the prototypes get no update
    split: str | None = None  # only images of this split ("train") when the data names splits
    precision: str = "auto"  # "auto" (bf16 where the hardware has it) | "bf16" | "fp32"
    seed: int = 0
    num_workers: int = 0
    device: str | None = None  # None: cuda when available, else cpu
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm architecture kwargs


@dataclass
class PretrainResult:
    weights: Path  # the teacher backbone (.safetensors)
    state: Path  # the resumable training state
    epochs_done: int
    history: list[dict[str, float]]  # per-epoch means of LossStats fields


def state_path(out: Path) -> Path:
    """The resumable training state written next to the weights ``out``."""
    return Path(out).with_suffix(STATE_SUFFIX)


def check_resumable(saved: dict[str, Any], config: PretrainConfig, path: Path) -> None:
    current = json.loads(json.dumps(asdict(config)))
    for key in _RESUME_FIXED:
        if saved.get(key) != current.get(key):
            raise FeatkitError(
                f"{path}: cannot resume, {key} was {saved.get(key)!r} and is now "
                f"{current.get(key)!r}; use the same settings or another --out"
            )
