"""The DINO v1 self-distillation loop: student, EMA teacher, loss state, optimiser.

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
import json
import math
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from featkit.atomic import atomic_path
from featkit.backbones.checkpoints import save_safetensors
from featkit.dino.config import PretrainConfig, state_path
from featkit.dino.ema import ema_update
from featkit.dino.head import DINOHead
from featkit.dino.loss import DINOLoss, LossStats
from featkit.dino.schedules import cosine_schedule, momentum_schedule
from featkit.errors import FeatkitError

METADATA_KEY = "featkit_pretrain"  # safetensors metadata: how the file was made (JSON)


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
        # The wrapped model's layout (timm's for timm backbones) is what --weights reads.
        save_safetensors(
            getattr(self.teacher.backbone, "model", self.teacher.backbone),
            out,
            arch_kwargs,
            extra_metadata={"format": "pt", METADATA_KEY: json.dumps(meta, sort_keys=True)},
        )
