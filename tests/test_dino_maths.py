"""DINO's maths against hand computations on small tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from featkit.dino.ema import ema_update
from featkit.dino.head import DINOHead
from featkit.dino.loss import (
    DINOLoss,
    centered_teacher_probs,
    entropy,
    koleo_loss,
    multicrop_cross_entropy,
    sinkhorn_knopp,
    updated_center,
)
from featkit.dino.schedules import cosine_schedule, momentum_schedule, teacher_temperature_schedule

# ------------------------------------------------------------------ schedules


def test_cosine_schedule_by_hand() -> None:
    # n = 4 cosine steps from 1 to 0: (1 + cos(pi * i / 4)) / 2.
    expected = [1.0, (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2]
    np.testing.assert_allclose(cosine_schedule(1.0, 0.0, 4), expected)


def test_cosine_schedule_with_warmup() -> None:
    # 2 warm-up steps 0 -> 1 (exclusive), then 2 cosine steps 1 -> 0.
    np.testing.assert_allclose(cosine_schedule(1.0, 0.0, 4, warmup_steps=2), [0, 0.5, 1, 0.5])
    np.testing.assert_allclose(
        cosine_schedule(2.0, 1.0, 3, warmup_steps=1, warmup_start=0.5), [0.5, 2.0, 1.5]
    )


def test_momentum_rises_from_0996_to_1() -> None:
    m = momentum_schedule(3, 0.996, 1.0)
    # 1 - 0.004 * (1 + cos(pi * i / 3)) / 2 for i = 0, 1, 2.
    np.testing.assert_allclose(m, [0.996, 1 - 0.004 * 0.75, 1 - 0.004 * 0.25])
    long = momentum_schedule(1000)
    assert long[0] == pytest.approx(0.996) and long[-1] == pytest.approx(1.0, abs=1e-7)
    assert np.all(np.diff(long) >= 0)


def test_teacher_temperature_warmup() -> None:
    np.testing.assert_allclose(
        teacher_temperature_schedule(5, 0.04, 0.07, 3), [0.04, 0.055, 0.07, 0.07, 0.07]
    )
    # A warm-up longer than the run is clipped so that the run ends at the final value.
    short = teacher_temperature_schedule(2, 0.04, 0.07, 30)
    np.testing.assert_allclose(short, [0.04, 0.07])


# ------------------------------------------------------------------ centering and loss


def test_center_update_by_hand() -> None:
    center = torch.tensor([[1.0, 2.0]])
    teacher = torch.tensor([[3.0, 4.0], [5.0, 8.0]])  # batch mean [4, 6]
    new = updated_center(center, teacher, momentum=0.9)
    torch.testing.assert_close(new, torch.tensor([[0.9 * 1 + 0.1 * 4, 0.9 * 2 + 0.1 * 6]]))


def test_centered_teacher_probs_by_hand() -> None:
    probs = centered_teacher_probs(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]]), 0.5)
    e = math.e  # (1 - 0.5) / 0.5 = 1 vs 0
    torch.testing.assert_close(probs, torch.tensor([[e / (e + 1), 1 / (e + 1)]]))


def _softmax(xs: list[float]) -> list[float]:
    exps = [math.exp(x) for x in xs]
    return [x / sum(exps) for x in exps]


def test_multicrop_cross_entropy_by_hand() -> None:
    # 2 teacher (global) views, 3 student views (2 global + 1 local), batch 1, K = 2.
    teacher = [[0.7, 0.3], [0.2, 0.8]]
    student = [[1.0, 0.0], [0.0, 0.5], [0.3, 0.3]]
    t_s = 0.5
    terms = []
    for i, q in enumerate(teacher):
        for v, s in enumerate(student):
            if v != i:  # pairs (0,1), (0,2), (1,0), (1,2)
                p = _softmax([x / t_s for x in s])
                terms.append(-sum(qk * math.log(pk) for qk, pk in zip(q, p, strict=True)))
    expected = sum(terms) / 4
    got = multicrop_cross_entropy(
        [torch.tensor([s]) for s in student], [torch.tensor([q]) for q in teacher], t_s
    )
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_dino_loss_uses_old_center_then_updates_it() -> None:
    torch.manual_seed(0)
    k, b = 4, 3
    loss_fn = DINOLoss(k, epochs=2, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=2)
    loss_fn.center.fill_(0.25)
    teacher = torch.randn(2 * b, k)
    student = torch.randn(4 * b, k)  # 2 global + 2 local views
    loss, stats = loss_fn(student, teacher, epoch=0)
    q = torch.softmax((teacher - 0.25) / 0.04, dim=-1)  # epoch 0: teacher temperature 0.04
    log_p = torch.log_softmax(student / 0.1, dim=-1)
    pairs = [(i, v) for i in range(2) for v in range(4) if i != v]
    ce = [(-q[i * b : (i + 1) * b] * log_p[v * b : (v + 1) * b]).sum(-1).mean() for i, v in pairs]
    assert float(loss) == pytest.approx(float(sum(ce) / len(ce)), rel=1e-5)
    kl = [
        (q[i * b : (i + 1) * b] * (q[i * b : (i + 1) * b].log() - log_p[v * b : (v + 1) * b]))
        .sum(-1)
        .mean()
        for i, v in pairs
    ]
    assert stats.kl == pytest.approx(float(sum(kl) / len(kl)), rel=1e-4, abs=1e-5)
    assert stats.teacher_entropy == pytest.approx(float(entropy(q)), rel=1e-5)
    assert stats.teacher_temp == pytest.approx(0.04)
    expected_center = 0.9 * 0.25 + 0.1 * teacher.mean(0, keepdim=True)
    torch.testing.assert_close(loss_fn.center, expected_center)


def test_dino_loss_temperature_follows_epoch() -> None:
    loss_fn = DINOLoss(3, epochs=3, warmup_teacher_temp_epochs=3)
    temps = [loss_fn(torch.zeros(4, 3), torch.zeros(2, 3), e)[1].teacher_temp for e in range(3)]
    assert temps == pytest.approx([0.04, 0.055, 0.07])


def test_sinkhorn_symmetric_case_by_hand() -> None:
    # exp(logits / T) = [[a, b], [b, a]] is already doubly stochastic up to scale, so
    # Sinkhorn returns its row normalisation.
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    q = sinkhorn_knopp(logits, temperature=0.5)
    a, b = math.exp(2.0), 1.0
    torch.testing.assert_close(q, torch.tensor([[a, b], [b, a]]) / (a + b))


def test_sinkhorn_balances_prototypes() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 3) * 3
    q = sinkhorn_knopp(logits, temperature=1.0, n_iters=200)
    torch.testing.assert_close(q.sum(1), torch.ones(6), atol=1e-4, rtol=0)
    torch.testing.assert_close(q.sum(0), torch.full((3,), 2.0), atol=1e-4, rtol=0)
    # A global shift of the logits changes nothing (and huge logits do not overflow).
    torch.testing.assert_close(sinkhorn_knopp(logits + 1000, 1.0, n_iters=200), q)


def test_koleo_by_hand() -> None:
    # (1,0), (0,1), (-1,0): every nearest neighbour is at distance sqrt(2).
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])  # norms do not matter
    assert float(koleo_loss(x)) == pytest.approx(-math.log(math.sqrt(2)), rel=1e-5)
    # Two close points: the loss grows as they approach each other.
    close = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0]])
    assert float(koleo_loss(close)) > float(koleo_loss(x))


def test_entropy_bounds() -> None:
    assert float(entropy(torch.full((2, 8), 1 / 8))) == pytest.approx(math.log(8))
    assert float(entropy(torch.eye(3))) == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------ EMA and head


def test_ema_update_by_hand() -> None:
    teacher, student = nn.Linear(2, 1), nn.Linear(2, 1)
    teacher.register_buffer("seen", torch.zeros(1))
    student.register_buffer("seen", torch.ones(1))
    with torch.no_grad():
        teacher.weight.fill_(1.0)
        teacher.bias.fill_(0.0)
        student.weight.fill_(3.0)
        student.bias.fill_(-1.0)
    ema_update(teacher, student, momentum=0.9)
    torch.testing.assert_close(teacher.weight, torch.full((1, 2), 0.9 * 1 + 0.1 * 3))
    torch.testing.assert_close(teacher.bias, torch.tensor([-0.1]))
    torch.testing.assert_close(teacher.seen, torch.ones(1))  # buffers are copied
    torch.testing.assert_close(student.weight, torch.full((1, 2), 3.0))  # student untouched


def test_head_logits_are_cosines_to_prototypes() -> None:
    torch.manual_seed(0)
    head = DINOHead(in_dim=8, out_dim=5, hidden_dim=16, bottleneck_dim=4)
    x = torch.randn(3, 8)
    logits = head(x)
    z = head.mlp(x)
    z = z / z.norm(dim=1, keepdim=True)
    w = head.prototypes / head.prototypes.norm(dim=1, keepdim=True)
    torch.testing.assert_close(logits, z @ w.t())
    assert logits.abs().max() <= 1 + 1e-6
    assert not head.prototype_norm.requires_grad  # DINO's norm_last_layer=True
    assert DINOHead(8, 5, 16, 4, norm_last_layer=False).prototype_norm.requires_grad
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 16), (16, 16), (16, 4)]
