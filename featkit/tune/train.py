"""The training loop: AdamW, linear warm-up then cosine decay, bf16 autocast where fast.

The loop knows nothing about images or methods: it draws index batches, asks
``make_batch`` for the inputs, and steps the parameters that require gradients.
Everything random (batch order, augmentation, LoRA dropout, head initialisation when
the caller builds the model inside :func:`seeded`) follows one seed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from featkit.errors import FeatkitError
from featkit.precision import autocast
from featkit.progress import SILENT, Progress
from featkit.tune.losses import LossFn

MakeBatch = Callable[[Tensor, torch.Generator], Tensor]  # indices [B] -> model inputs


@dataclass(frozen=True)
class Schedule:
    steps: int  # optimiser steps in total
    batch_size: int
    lr: float  # peak learning rate, reached after the warm-up
    weight_decay: float = 0.05  # AdamW decoupled decay (DINO's fine-tuning default)
    warmup_steps: int = 0

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        progress = (step - self.warmup_steps) / span
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def default_steps(
    n_train: int,
    batch_size: int,
    *,
    min_epochs: int = 10,
    min_steps: int = 50,
    max_epochs: int = 50,
) -> int:
    """Steps scaled to the data: at least ``min_epochs`` passes and ``min_steps`` steps,
    but never more than ``max_epochs`` passes (1-shot sets are tiny; 50 steps on 10
    images is already 50 epochs)."""
    per_epoch = math.ceil(n_train / max(1, min(batch_size, n_train)))
    return max(min_epochs * per_epoch, min(max_epochs * per_epoch, min_steps))


def make_schedule(
    n_train: int,
    *,
    lr: float,
    batch_size: int = 32,
    epochs: int | None = None,
    steps: int | None = None,
    weight_decay: float = 0.05,
    warmup_fraction: float = 0.1,
) -> Schedule:
    """``steps`` wins over ``epochs``; with neither, :func:`default_steps`."""
    if n_train < 1:
        raise FeatkitError("fine-tuning: expected at least one training image, got none")
    if batch_size < 1:
        raise FeatkitError(f"--batch-size: expected >= 1, got {batch_size}")
    batch = min(batch_size, n_train)
    if steps is not None:
        if steps < 1:
            raise FeatkitError(f"--steps: expected >= 1, got {steps}")
        total = steps
    elif epochs is not None:
        if epochs < 1:
            raise FeatkitError(f"--epochs: expected >= 1, got {epochs}")
        total = epochs * math.ceil(n_train / batch)
    else:
        total = default_steps(n_train, batch)
    warmup = min(total - 1, max(1, round(warmup_fraction * total))) if total > 1 else 0
    return Schedule(total, batch, lr, weight_decay, warmup)


@contextmanager
def seeded(seed: int, device: str = "cpu") -> Iterator[torch.Generator]:
    """Seed torch's global RNG for the block (dropout and parameter init draw from it)
    and restore it afterwards, so a library call leaves no global state behind."""
    devices = [torch.device(device)] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        yield generator


@dataclass
class TrainLog:
    losses: list[float] = field(default_factory=list)  # one per step
    seconds: float = 0.0
    steps: int = 0


def train(
    model: nn.Module,
    make_batch: MakeBatch,
    labels: Tensor,
    loss_fn: LossFn,
    schedule: Schedule,
    generator: torch.Generator,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    progress: Progress = SILENT,
    description: str = "fine-tuning",
) -> TrainLog:
    """Train ``model``'s trainable parameters on ``labels.numel()`` examples."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("nothing to train: every parameter is frozen")
    optimizer = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=schedule.weight_decay)
    n = labels.numel()
    log = TrainLog()
    start = time.perf_counter()
    order = _batches(n, schedule.batch_size, generator)
    task = progress.task(description, schedule.steps)
    model.train()
    for step in range(schedule.steps):
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(step)
        idx = next(order)
        inputs = make_batch(idx, generator).to(device)
        with autocast(precision, device):
            logits = model(inputs)
        loss = loss_fn(logits.float(), labels[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log.losses.append(float(loss.detach()))
        task.advance(1, loss=log.losses[-1])
    task.close()
    model.eval()
    log.seconds = time.perf_counter() - start
    log.steps = schedule.steps
    return log


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless shuffled epochs cut into full batches (the images left over go to the next
    epochs' draws): a short last batch gives a noisy step and, with the head's batch
    statistics, a noisy normalisation."""
    while True:
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i : i + batch_size]


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    inputs: Tensor,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    batch_size: int = 64,
) -> Tensor:
    """``model(inputs)`` in eval mode, in batches, as float32 on the CPU."""
    model.eval()
    out = []
    for i in range(0, inputs.shape[0], batch_size):
        with autocast(precision, device):
            out.append(model(inputs[i : i + batch_size].to(device)).float().cpu())
    return torch.cat(out)
