"""The extraction's thread plan is a pure function of the device and the usable cores."""

from __future__ import annotations

import os

import pytest
import torch

from featkit.backbones import create_backbone
from featkit.extraction.forward import Runner, torch_threads
from featkit.extraction.plan import ThreadPlan, available_cores, thread_plan


@pytest.mark.parametrize(
    ("cores", "decode", "forward"), [(1, 1, 1), (2, 1, 2), (4, 1, 3), (16, 2, 14), (64, 8, 56)]
)
def test_on_a_cpu_the_forward_keeps_the_cores(cores: int, decode: int, forward: int) -> None:
    plan = thread_plan("cpu", cores)
    assert (plan.decode_workers, plan.torch_threads) == (decode, forward)
    assert not plan.pin_memory and not plan.non_blocking  # no page-locking without a GPU


@pytest.mark.parametrize(("cores", "decode"), [(1, 1), (2, 1), (8, 7), (64, 16)])
def test_with_cuda_the_host_decodes_into_pinned_memory(cores: int, decode: int) -> None:
    plan = thread_plan("cuda:1", cores)
    assert plan == ThreadPlan(decode, 1, pin_memory=True, non_blocking=True)


def test_workers_override_only_the_decode_threads() -> None:
    assert thread_plan("cpu", 16, workers=0) == ThreadPlan(0, 14, False, False)
    assert thread_plan("cuda", 8, workers=3).decode_workers == 3


def test_cores_come_from_the_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5, 7}, raising=False)
    assert available_cores() == 3
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert available_cores() == 1


def test_torch_threads_only_lower_and_restore() -> None:
    before = torch.get_num_threads()
    with torch_threads(before + 4):
        assert torch.get_num_threads() == before
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_a_cpu_batch_is_neither_pinned_nor_copied_asynchronously() -> None:
    backbone = create_backbone("pixels", image_size=4)
    runner = Runner(backbone, "cpu", "fp32", "mean", threads=thread_plan("cpu", 2))
    images = [torch.rand(3, 4, 4) for _ in range(3)]
    batch = runner.to_device(images)
    assert batch.device.type == "cpu" and not batch.is_pinned()
    torch.testing.assert_close(batch, torch.stack(images))
