"""The DINO loop on real digits with a tiny ViT: learning, checkpoints, resumption."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from featkit.backbones import create_backbone
from featkit.dino import PretrainConfig, pretrain, state_path
from featkit.dino.multicrop import MultiCrop, MultiCropConfig
from featkit.dino.trainer import DINOTrainer
from featkit.errors import FeatkitError
from tests.helpers import digits_folder

ARCH = "timm:vit_tiny_patch16_224"
TINY = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


class _InterruptAfter:
    """A progress bar that raises KeyboardInterrupt (Ctrl-C) after ``steps`` steps."""

    def __init__(self, steps: int) -> None:
        self.left = steps

    def task(self, description: str, total: int | None) -> _InterruptAfter:
        return self

    def advance(self, n: int = 1, **fields: object) -> None:
        self.left -= n
        if self.left < 0:
            raise KeyboardInterrupt

    def close(self) -> None:
        pass


def tiny_config(**overrides: object) -> PretrainConfig:
    base = PretrainConfig(
        arch=ARCH,
        epochs=2,
        image_size=16,
        batch_size=10,
        out_dim=64,
        hidden_dim=32,
        bottleneck_dim=16,
        local_crops=2,
        local_size=8,
        lr=4e-3,
        warmup_epochs=0,
        precision="fp32",
        model_kwargs=dict(TINY),
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_folder(tmp_path_factory.mktemp("dino"), per_class=3, size=16)


def test_multicrop_views_shapes() -> None:
    from PIL import Image

    crops = MultiCrop(MultiCropConfig(global_size=16, local_size=8, n_local=3))
    views = crops(Image.new("RGB", (20, 24), (200, 10, 10)))
    assert [tuple(v.shape) for v in views] == [(3, 16, 16)] * 2 + [(3, 8, 8)] * 3


def test_training_steps_lower_the_loss_without_collapse(digits: Path) -> None:
    torch.manual_seed(0)
    config = tiny_config(epochs=1, teacher_temp=0.04, momentum_teacher=0.9, freeze_last_layer=0)
    backbone = create_backbone(
        ARCH, image_size=16, pretrained=False, model_kwargs={**TINY, "dynamic_img_size": True}
    )
    trainer = DINOTrainer(backbone, 32, config, steps_per_epoch=30)
    from PIL import Image

    from featkit.data.images import discover, load_image

    dataset = discover(digits)
    crops = MultiCrop(
        MultiCropConfig(16, 8, n_local=2, flip=False, mean=(0.5,) * 3, std=(0.5,) * 3)
    )
    images = [load_image(dataset.root / r.path) for r in dataset.records[::3]]
    assert all(isinstance(i, Image.Image) for i in images)
    batch = [torch.stack(v) for v in zip(*(crops(i) for i in images), strict=True)]
    history = [trainer.train_step(batch, step) for step in range(8)]
    # The student learns to match the teacher: the loss falls ...
    first = sum(s.loss for s in history[:2]) / 2
    last = sum(s.loss for s in history[-2:]) / 2
    assert last < first - 0.3, [s.loss for s in history]
    # ... without collapsing to one prototype (entropy 0) or to uniform (log K, KL 0).
    log_k = math.log(64)
    for stats in history:
        assert 0.1 * log_k < stats.teacher_entropy < 0.9 * log_k
        assert stats.kl > 0.01


def test_pretrain_checkpoint_loads_through_create_backbone(digits: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny.safetensors"
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    result = pretrain(digits, tiny_config(epochs=1), out)
    # The run seeds itself on a forked generator: the caller's random state is untouched.
    assert torch.equal(torch.random.get_rng_state(), before)
    assert result.epochs_done == 1 and len(result.history) == 1
    assert result.weights == out and state_path(out).is_file()
    with safe_open(str(out), framework="pt") as fh:
        meta = fh.metadata()
        saved = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    assert json.loads(meta["featkit_model_kwargs"]) == {**TINY, "img_size": 16}
    assert not any(k.startswith(("head.", "prototypes")) for k in saved)
    # No model_kwargs: the architecture comes back from the file's metadata.
    backbone = create_backbone(ARCH, weights=out)
    assert backbone.embed_dim == 32 and backbone.patch_size == 8
    for name, tensor in backbone.model.state_dict().items():
        torch.testing.assert_close(tensor, saved[name])
    # The file holds the teacher (DINO evaluates the teacher), not the student.
    state = torch.load(state_path(out), weights_only=True)
    teacher = {k.removeprefix("backbone.model."): v for k, v in state["teacher"].items()}
    student = {k.removeprefix("backbone.model."): v for k, v in state["student"].items()}
    torch.testing.assert_close(
        saved["blocks.0.attn.qkv.weight"], teacher["blocks.0.attn.qkv.weight"]
    )
    assert not torch.equal(saved["blocks.0.attn.qkv.weight"], student["blocks.0.attn.qkv.weight"])
    images = torch.randn(2, 3, 16, 16)
    assert backbone(images).cls.shape == (2, 32)


def test_resume_continues_exactly(digits: Path, tmp_path: Path) -> None:
    straight = tmp_path / "straight.safetensors"
    pretrain(digits, tiny_config(epochs=2), straight)
    split = tmp_path / "split.safetensors"
    with pytest.raises(KeyboardInterrupt):  # killed during the second epoch
        pretrain(digits, tiny_config(epochs=2), split, progress=_InterruptAfter(steps=3))
    state = torch.load(state_path(split), weights_only=True)
    assert state["epoch"] == 1
    resumed = pretrain(digits, tiny_config(epochs=2), split, resume=True)
    assert resumed.epochs_done == 2 and len(resumed.history) == 2
    with safe_open(str(straight), framework="pt") as a, safe_open(str(split), framework="pt") as b:
        for key in a.keys():  # noqa: SIM118
            torch.testing.assert_close(a.get_tensor(key), b.get_tensor(key))
    # A finished run resumed again does nothing.
    assert pretrain(digits, tiny_config(epochs=2), split, resume=True).epochs_done == 2


def test_existing_run_is_not_overwritten_and_settings_must_match(
    digits: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run.safetensors"
    pretrain(digits, tiny_config(epochs=1), out)
    with pytest.raises(FeatkitError, match="--resume"):
        pretrain(digits, tiny_config(epochs=1), out)
    with pytest.raises(FeatkitError, match="out_dim was 64 and is now 32"):
        pretrain(digits, tiny_config(epochs=2, out_dim=32), out, resume=True)
    with pytest.raises(FeatkitError, match=r"\.safetensors"):
        pretrain(digits, tiny_config(), tmp_path / "run.pth")


def test_crash_while_saving_keeps_previous_checkpoint(
    digits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run.safetensors"
    pretrain(digits, tiny_config(epochs=1), out)
    before = out.read_bytes()

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        pretrain(digits, tiny_config(epochs=2), out, resume=True)
    assert out.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_sinkhorn_and_koleo_run(digits: Path, tmp_path: Path) -> None:
    result = pretrain(
        digits, tiny_config(epochs=1, centering="sinkhorn", koleo=0.1), tmp_path / "s.safetensors"
    )
    stats = result.history[-1]
    assert math.isfinite(stats["loss"]) and stats["koleo"] != 0.0
    # Sinkhorn keeps no centre: the buffer stays zero.
    state = torch.load(state_path(tmp_path / "s.safetensors"), weights_only=True)
    assert torch.count_nonzero(state["loss"]["center"]) == 0


def test_bad_settings_are_user_errors(digits: Path, tmp_path: Path) -> None:
    with pytest.raises(FeatkitError, match="--epochs 0"):
        pretrain(digits, tiny_config(epochs=0), tmp_path / "x.safetensors")
    with pytest.raises(FeatkitError, match="centering"):
        pretrain(digits, tiny_config(centering="mean"), tmp_path / "x.safetensors")
    with pytest.raises(FeatkitError, match="--arch pixels: expected a network with weights"):
        pretrain(digits, tiny_config(arch="pixels"), tmp_path / "x.safetensors")
    with pytest.raises(FeatkitError, match="split 'train'"):
        pretrain(digits, tiny_config(split="train"), tmp_path / "x.safetensors")
