"""The DINO objective: a student matches a centred, sharpened teacher across views.

Pure functions carry the maths (shapes in the docstrings) so that tests can check each
against a hand computation; :class:`DINOLoss` only adds the state a run needs (the
running centre and the teacher-temperature schedule).

- Centering (DINO v1): subtract a running mean of the teacher logits (momentum 0.9)
  before the softmax. Centering pushes towards uniform, sharpening (low teacher
  temperature) pushes towards one-hot; together they avoid both collapses.
- Sinkhorn-Knopp (DINOv2 option): instead of a centre, make the teacher's assignment of
  the batch to the K prototypes doubly stochastic (every prototype used equally).
- KoLeo (DINOv2 option): a nearest-neighbour entropy estimator on the student's
  L2-normalised CLS features that spreads them over the sphere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featkit.dino.schedules import teacher_temperature_schedule


def centered_teacher_probs(teacher_logits: Tensor, center: Tensor, temperature: float) -> Tensor:
    """softmax((t - c) / T) row-wise.

    Args:
        teacher_logits: [B, K]; center: [1, K] or [K].
    Returns:
        [B, K] probabilities.
    """
    return F.softmax((teacher_logits - center) / temperature, dim=-1)


def updated_center(center: Tensor, teacher_logits: Tensor, momentum: float = 0.9) -> Tensor:
    """The new running centre ``m * c + (1 - m) * mean_b(t_b)``.

    Args:
        center: [1, K]; teacher_logits: [B, K] (all teacher views of the batch, stacked).
    Returns:
        [1, K].
    """
    batch_mean = teacher_logits.mean(dim=0, keepdim=True)
    return center * momentum + batch_mean * (1.0 - momentum)


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: Tensor, temperature: float, n_iters: int = 3) -> Tensor:
    """Teacher probabilities by Sinkhorn-Knopp (DINOv2's alternative to centering).

    Starts from ``exp(t / T)`` and alternately normalises so that every prototype gets
    mass 1/K and every sample mass 1/B; rows are finally rescaled to sum to one.

    Args:
        teacher_logits: [B, K].
    Returns:
        [B, K]; each row sums to 1 and, after enough iterations, each column to B/K.
    """
    logits = teacher_logits.float() / temperature
    # A global shift changes nothing (the first normalisation divides it out) and keeps
    # exp() finite; a per-row shift would change the result of a finite iteration.
    q = torch.exp(logits - logits.max()).t()  # [K, B]
    k, b = q.shape
    q = q / q.sum()
    for _ in range(n_iters):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


def multicrop_cross_entropy(
    student_logits: Sequence[Tensor], teacher_probs: Sequence[Tensor], student_temp: float
) -> Tensor:
    """DINO's loss: mean over (teacher view i, student view v != i) of
    ``mean_b [ -sum_k q_ik log softmax(s_v / T_s)_k ]``.

    The teacher sees only the global views (the first ``len(teacher_probs)`` student
    views are the same global crops), so a view is never matched with itself.

    Args:
        student_logits: V tensors [B, K], global views first.
        teacher_probs: G tensors [B, K], G <= V.
    Returns:
        scalar.
    """
    log_p = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student_logits]
    total = student_logits[0].new_zeros((), dtype=torch.float32)
    n_terms = 0
    for i, q in enumerate(teacher_probs):
        for v, lp in enumerate(log_p):
            if v == i:
                continue
            total = total + torch.sum(-q * lp, dim=-1).mean()
            n_terms += 1
    return total / n_terms


def koleo_loss(features: Tensor, eps: float = 1e-8) -> Tensor:
    """Kozachenko-Leonenko regulariser: ``-mean_i log ||x_i - x_nn(i)||`` on L2-normalised rows.

    Args:
        features: [B, D], B >= 2.
    Returns:
        scalar.
    """
    x = F.normalize(features.float(), p=2, dim=-1, eps=eps)
    with torch.no_grad():
        sims = x @ x.t()
        sims.fill_diagonal_(-2.0)  # below any cosine: a row never picks itself
        nearest = sims.argmax(dim=1)
    distances = torch.linalg.vector_norm(x - x[nearest], dim=-1)
    return -torch.log(distances + eps).mean()


def entropy(probs: Tensor) -> Tensor:
    """Mean row entropy ``-sum_k q_k log q_k`` in nats. [B, K] -> scalar."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=-1).mean()


@dataclass
class LossStats:
    """What a progress bar shows: collapse is visible in teacher entropy and KL.

    Uniform collapse: entropy → log K and KL → 0. One-hot collapse: entropy → 0.
    """

    loss: float
    dino: float
    koleo: float
    teacher_entropy: float
    kl: float
    teacher_temp: float


class DINOLoss(nn.Module):
    """The DINO loss with its running centre (a buffer, so it is saved and resumed).

    Args:
        out_dim: K, the number of prototypes.
        epochs: length of the teacher-temperature schedule.
        centering: ``"ema"`` (DINO v1) or ``"sinkhorn"`` (DINOv2).
        koleo_weight: weight of the KoLeo term on the student's global CLS features (0: off).
    """

    def __init__(
        self,
        out_dim: int,
        epochs: int,
        *,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.07,
        warmup_teacher_temp_epochs: int = 30,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        centering: str = "ema",
        koleo_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if centering not in ("ema", "sinkhorn"):
            raise ValueError(f"centering must be 'ema' or 'sinkhorn', got {centering!r}")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.centering = centering
        self.koleo_weight = koleo_weight
        self.teacher_temps = teacher_temperature_schedule(
            epochs, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs
        )
        self.center: Tensor
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_probs(self, teacher_logits: Tensor, epoch: int) -> Tensor:
        """[G*B, K] teacher logits -> [G*B, K] target probabilities (no gradient)."""
        temp = float(self.teacher_temps[min(epoch, len(self.teacher_temps) - 1)])
        logits = teacher_logits.detach().float()
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(logits, temp)
        return centered_teacher_probs(logits, self.center, temp)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        epoch: int,
        *,
        n_global: int = 2,
        student_cls: Tensor | None = None,
    ) -> tuple[Tensor, LossStats]:
        """Loss for one batch, then the centre update.

        Args:
            student_logits: [V*B, K], views stacked in order, the ``n_global`` globals first.
            teacher_logits: [n_global*B, K], the teacher on the global views.
            student_cls: [n_global*B, D] student backbone CLS of the global views (KoLeo).
        """
        probs = self.teacher_probs(teacher_logits, epoch)
        n_views = student_logits.shape[0] // (teacher_logits.shape[0] // n_global)
        students = student_logits.chunk(n_views)
        teachers = probs.chunk(n_global)
        dino = multicrop_cross_entropy(students, teachers, self.student_temp)
        koleo = dino.new_zeros(())
        if self.koleo_weight > 0 and student_cls is not None:
            koleo = sum((koleo_loss(c) for c in student_cls.chunk(n_global)), koleo)
        loss = dino + self.koleo_weight * koleo
        with torch.no_grad():
            h = entropy(probs)
            # KL(q || p) = CE(q, p) - H(q), averaged over the same view pairs as the loss.
            kl = dino.detach() - h
            if self.centering == "ema":
                teacher = teacher_logits.detach().float()
                self.center.copy_(updated_center(self.center, teacher, self.center_momentum))
        temp = float(self.teacher_temps[min(epoch, len(self.teacher_temps) - 1)])
        stats = LossStats(
            loss=float(loss.detach()),
            dino=float(dino.detach()),
            koleo=float(koleo.detach()),
            teacher_entropy=float(h),
            kl=float(kl),
            teacher_temp=temp,
        )
        return loss, stats
