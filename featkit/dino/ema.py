"""The teacher as an exponential moving average of the student."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``θ_t ← m θ_t + (1 - m) θ_s`` for every parameter; buffers are copied.

    Teacher and student must have the same architecture (parameters are paired by name,
    so a mismatch fails loudly instead of silently averaging the wrong tensors).
    """
    student_params = dict(student.named_parameters())
    for name, t in teacher.named_parameters():
        t.mul_(momentum).add_(student_params[name].detach().to(t.dtype), alpha=1.0 - momentum)
    student_buffers = dict(student.named_buffers())
    for name, b in teacher.named_buffers():
        b.copy_(student_buffers[name])
