"""DINO v1 self-distillation on a folder of unlabelled images.

Student and teacher share an architecture (backbone + :class:`DINOHead`); the student
learns by gradient descent to match the teacher across multi-crop views, the teacher is
an EMA of the student and gets no gradient. Recipe and defaults follow DINO's
``main_dino.py`` (AdamW, lr = base × batch/256 with warm-up and cosine decay, weight
decay 0.04 → 0.4, per-parameter gradient clipping at 3, prototypes frozen in the first
epoch), so published hyper-parameters carry over.

A run writes two files, both replaced atomically (a crash leaves the previous state):

- ``out`` (``.safetensors``): the teacher backbone in the layout of ``backbone.model``
  (timm's for timm backbones), with the architecture in the metadata; this is what
  ``featkit extract --model ARCH --weights out`` reads.
- ``out`` with suffix ``.train.pt``: student, teacher, optimiser, centre and history,
  written after every epoch; ``resume=True`` continues from it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from featkit.atomic import atomic_path
from featkit.dino.data import MultiCropImages, collate_views
from featkit.dino.ema import ema_update
from featkit.dino.head import DINOHead
from featkit.dino.loss import DINOLoss, LossStats
from featkit.dino.multicrop import MultiCrop, MultiCropConfig, default_local_size
from featkit.dino.schedules import cosine_schedule, momentum_schedule
from featkit.errors import FeatkitError
from featkit.progress import SILENT, Progress

if TYPE_CHECKING:
    from featkit.backbones import Backbone

logger = logging.getLogger("featkit")

STATE_SUFFIX = ".train.pt"
METADATA_KEY = "featkit_pretrain"  # safetensors metadata: how the file was made (JSON)
MODEL_KWARGS_KEY = (
    "featkit_model_kwargs"  # read back by featkit.backbones.checkpoints to rebuild the arch
)

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
    return Path(out).with_suffix(STATE_SUFFIX)


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to autocast to bf16: ``auto`` asks featkit.precision whether it is fast here."""
    from featkit.precision import detect_hardware, resolve_precision

    if precision not in ("auto", "bf16", "fp32"):
        raise FeatkitError(f"--precision {precision!r}: expected auto, bf16 or fp32")
    return resolve_precision(precision, detect_hardware(str(device))) == "bf16"


class _Encoder(nn.Module):
    """Backbone + head; runs each resolution of the multi-crop views as one batch."""

    def __init__(self, backbone: nn.Module, head: DINOHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, views: list[Tensor]) -> tuple[Tensor, Tensor]:
        """V tensors [B, 3, s_v, s_v] -> logits [V*B, K], CLS [V*B, D] (views in order)."""
        cls_parts = []
        start = 0
        while start < len(views):
            end = start
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            cls_parts.append(self.backbone(torch.cat(views[start:end])).cls)
            start = end
        cls = torch.cat(cls_parts)
        return self.head(cls), cls


def _param_groups(model: nn.Module) -> list[dict[str, Any]]:
    # DINO: no weight decay on biases and norm scales (all 1-D parameters).
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or param.ndim == 1 else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def _clip_per_parameter(model: nn.Module, clip: float) -> None:
    # DINO clips each parameter's gradient norm separately, not the global norm.
    for param in model.parameters():
        if param.grad is not None:
            norm = param.grad.norm(2)
            scale = clip / (norm + 1e-6)
            if scale < 1:
                param.grad.mul_(scale)


def _atomic_torch_save(obj: object, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _atomic_safetensors(tensors: dict[str, Tensor], metadata: dict[str, str], path: Path) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def backbone_state_dict(backbone: nn.Module) -> dict[str, Tensor]:
    """The wrapped model's weights (timm layout for timm backbones), contiguous on CPU."""
    model = getattr(backbone, "model", backbone)
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def _build_backbone(config: PretrainConfig) -> Backbone:
    from featkit.backbones import create_backbone

    name = config.init or config.arch
    pretrained = config.init is not None or config.weights is not None
    # Local crops are smaller than global ones: timm interpolates the position
    # embeddings per input size with dynamic_img_size.
    kwargs = {**config.model_kwargs, "dynamic_img_size": True}
    return create_backbone(
        name,
        weights=config.weights,
        image_size=config.image_size,
        pretrained=pretrained,
        model_kwargs=kwargs,
    )


def _image_paths(data: Path, split: str | None) -> list[Path]:
    from featkit.data.images import discover

    dataset = discover(data)
    records = [r for r in dataset.records if split is None or r.split == split]
    if split is not None and not records:
        found = sorted({r.split or "none" for r in dataset.records})
        raise FeatkitError(
            f"{data}: no images in split {split!r}; the data has splits {', '.join(found)}"
        )
    return [dataset.root / r.path for r in records]


class DINOTrainer:
    """One DINO run: owns student, teacher, loss state and optimiser.

    Build it with :meth:`from_config` (or directly, with a ready backbone, in tests).
    """

    def __init__(
        self,
        backbone: nn.Module,
        embed_dim: int,
        config: PretrainConfig,
        steps_per_epoch: int,
        device: torch.device | None = None,
    ) -> None:
        self.config = config
        self.device = device or torch.device("cpu")
        c = config
        head = DINOHead(
            embed_dim, c.out_dim, c.hidden_dim, c.bottleneck_dim, c.head_layers, c.norm_last_layer
        )
        self.student = _Encoder(backbone, head).to(self.device)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.loss = DINOLoss(
            c.out_dim,
            c.epochs,
            warmup_teacher_temp=c.warmup_teacher_temp,
            teacher_temp=c.teacher_temp,
            warmup_teacher_temp_epochs=c.warmup_teacher_temp_epochs,
            student_temp=c.student_temp,
            center_momentum=c.center_momentum,
            centering=c.centering,
            koleo_weight=c.koleo,
        ).to(self.device)
        self.optimizer = torch.optim.AdamW(_param_groups(self.student))
        self.steps_per_epoch = steps_per_epoch
        total = c.epochs * steps_per_epoch
        self.lr = cosine_schedule(
            c.lr * c.batch_size / 256.0, c.min_lr, total, c.warmup_epochs * steps_per_epoch
        )
        self.wd = cosine_schedule(c.weight_decay, c.weight_decay_end, total)
        self.momentum = momentum_schedule(total, c.momentum_teacher, 1.0)
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.use_bf16 = use_bf16(c.precision, self.device)

    def train_step(self, views: list[Tensor], step: int) -> LossStats:
        """One optimisation step on a batch of V views ([B, 3, s, s] each, 2 globals first)."""
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = float(self.lr[step])
        self.optimizer.param_groups[0]["weight_decay"] = float(self.wd[step])
        views = [v.to(self.device, non_blocking=True) for v in views]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            with torch.no_grad():
                teacher_logits, _ = self.teacher(views[:2])
            student_logits, student_cls = self.student(views)
        n_images = views[0].shape[0]
        loss, stats = self.loss(
            student_logits.float(),
            teacher_logits.float(),
            self.epoch,
            student_cls=student_cls[: 2 * n_images].float(),
        )
        if not math.isfinite(stats.loss):
            raise FloatingPointError(f"DINO loss is {stats.loss} at step {step}; lower the lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if c.clip_grad > 0:
            _clip_per_parameter(self.student, c.clip_grad)
        if self.epoch < c.freeze_last_layer:
            for p in self.student.head.last_layer_parameters():
                p.grad = None
        self.optimizer.step()
        ema_update(self.teacher, self.student, float(self.momentum[step]))
        return stats

    def train_epoch(self, batches: Iterator[list[Tensor] | None], task: Any) -> dict[str, float]:
        self.student.train()
        self.teacher.train()
        totals: dict[str, float] = {}
        n = 0
        for i, views in enumerate(batches):
            if i >= self.steps_per_epoch:
                break
            if views is None:
                continue
            stats = self.train_step(views, self.epoch * self.steps_per_epoch + i)
            for key, value in asdict(stats).items():
                totals[key] = totals.get(key, 0.0) + value
            n += 1
            task.advance(
                1,
                epoch=self.epoch + 1,
                loss=stats.loss,
                H_teacher=stats.teacher_entropy,
                KL=stats.kl,
            )
        self.epoch += 1
        means = {k: v / max(n, 1) for k, v in totals.items()}
        means["epoch"] = float(self.epoch)
        self.history.append(means)
        return means

    # ----------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loss": self.loss.state_dict(),
            "epoch": self.epoch,
            "config": json.dumps(asdict(self.config), sort_keys=True),
            "history": json.dumps(self.history),
            "rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loss.load_state_dict(state["loss"])
        self.epoch = int(state["epoch"])
        self.history = json.loads(state["history"])
        torch.set_rng_state(state["rng"])

    def save(self, out: Path) -> None:
        """Write the training state, then the teacher backbone (both atomically)."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        _atomic_torch_save(self.state_dict(), state_path(out))
        arch_kwargs = {**self.config.model_kwargs, "img_size": self.config.image_size}
        meta = {
            "arch": self.config.init or self.config.arch,
            "epochs": self.epoch,
            "method": "dino",
            "config": asdict(self.config),
        }
        metadata = {
            "format": "pt",
            MODEL_KWARGS_KEY: json.dumps(arch_kwargs, sort_keys=True),
            METADATA_KEY: json.dumps(meta, sort_keys=True),
        }
        _atomic_safetensors(
            backbone_state_dict(self.teacher.backbone),
            metadata,
            out,
        )


def _check_resumable(saved: dict[str, Any], config: PretrainConfig, path: Path) -> None:
    current = json.loads(json.dumps(asdict(config)))
    for key in _RESUME_FIXED:
        if saved.get(key) != current.get(key):
            raise FeatkitError(
                f"{path}: cannot resume, {key} was {saved.get(key)!r} and is now "
                f"{current.get(key)!r}; use the same settings or another --out"
            )


def pretrain(
    data: Path,
    config: PretrainConfig,
    out: Path,
    *,
    resume: bool = False,
    progress: Progress = SILENT,
) -> PretrainResult:
    """Run DINO on the images of ``data`` (folder or manifest; labels unused) → ``out``.

    With ``resume=True`` an existing ``out.train.pt`` is continued (a finished run
    returns at once); without it an existing state is an error rather than overwritten.
    """
    out = Path(out)
    if out.suffix != ".safetensors":
        raise FeatkitError(f"--out {out}: expected a .safetensors file name")
    if config.epochs < 1:
        raise FeatkitError(f"--epochs {config.epochs}: expected at least 1")
    if config.centering not in ("ema", "sinkhorn"):
        raise FeatkitError(f"--centering {config.centering!r}: expected 'ema' or 'sinkhorn'")
    saved_path = state_path(out)
    if saved_path.exists() and not resume:
        raise FeatkitError(
            f"{saved_path} exists; pass --resume to continue that run or choose another --out"
        )
    paths = _image_paths(Path(data), config.split)
    if len(paths) < 2:
        raise FeatkitError(f"{data}: DINO needs at least 2 images, found {len(paths)}")

    torch.manual_seed(config.seed)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone = _build_backbone(config)
    if not any(p.requires_grad for p in backbone.parameters()):
        raise FeatkitError(
            f"--arch {config.init or config.arch}: expected a network with weights to train "
            "(a ViT), got one without any"
        )
    global_size = config.image_size or backbone.preprocessing.crop
    config = dataclasses.replace(config, image_size=global_size)
    pre = backbone.preprocessing
    crops = MultiCropConfig(
        global_size=global_size,
        local_size=config.local_size or default_local_size(global_size, backbone.patch_size),
        n_local=config.local_crops,
        global_scale=config.global_scale,
        local_scale=config.local_scale,
        flip=config.flip,
        mean=pre.mean,
        std=pre.std,
    )
    batch_size = min(config.batch_size, len(paths))
    steps_per_epoch = len(paths) // batch_size
    trainer = DINOTrainer(backbone, backbone.embed_dim, config, steps_per_epoch, device)

    if resume and saved_path.exists():
        state = torch.load(saved_path, map_location=device, weights_only=True)
        _check_resumable(json.loads(state["config"]), config, saved_path)
        trainer.load_state_dict(state)

    images = MultiCropImages(paths, MultiCrop(crops))
    task = progress.task("pretrain (DINO)", config.epochs * steps_per_epoch)
    task.advance(trainer.epoch * steps_per_epoch)
    try:
        while trainer.epoch < config.epochs:
            # Seeded per epoch so that a resumed run draws the same order and crops.
            torch.manual_seed(config.seed * 100_003 + trainer.epoch)
            generator = torch.Generator().manual_seed(config.seed * 100_003 + trainer.epoch)
            loader = torch.utils.data.DataLoader(
                images,
                batch_size=batch_size,
                shuffle=True,
                drop_last=True,
                num_workers=config.num_workers,
                collate_fn=collate_views,
                generator=generator,
                persistent_workers=False,
            )
            trainer.train_epoch(iter(loader), task)
            trainer.save(out)
    finally:
        task.close()
    _warn_if_collapsed(trainer.history, config.out_dim)
    return PretrainResult(out, saved_path, trainer.epoch, trainer.history)


def _warn_if_collapsed(history: list[dict[str, float]], out_dim: int) -> None:
    if not history:
        return
    h = history[-1].get("teacher_entropy", float("nan"))
    log_k = float(np.log(out_dim))
    if h < 0.02 * log_k or h > 0.98 * log_k:
        kind = "one prototype" if h < 0.02 * log_k else "uniform"
        logger.warning(
            "teacher entropy %.3g of max %.3g: training looks collapsed (%s); "
            "try a lower --lr, more epochs or --centering sinkhorn",
            h,
            log_k,
            kind,
        )
