"""The random twin and derived store names: one decision, made in featkit.backbones.naming."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import featkit.backbones as backbones_package
from featkit.backbones.naming import (
    adapter_store_name,
    base_model,
    build_backbone,
    is_random_init,
    mark_adapter,
    random_init_name,
)
from featkit.cli import app
from featkit.errors import FeatkitError
from tests.helpers import digits_folder

MODEL = "featkit-tiny-dino"


def _weights(backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in backbone.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_twin_ignores_and_keeps_the_global_random_state() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = _weights(build_backbone(MODEL, pretrained=False))
    assert torch.equal(torch.get_rng_state(), before)  # the caller's stream is untouched
    torch.manual_seed(456)
    second = _weights(build_backbone(MODEL, pretrained=False))
    assert _same(first, second)


def test_store_names() -> None:
    assert random_init_name("dinov2_vits14") == "dinov2_vits14-random"
    assert is_random_init("dinov2_vits14-random") and not is_random_init("dinov2_vits14")
    assert base_model(random_init_name("timm:vit_small")) == "timm:vit_small"
    tuned = {"adapter_method": "lora", "adapter_sha256": "0123456789abcdef"}
    assert adapter_store_name("dinov2_vits14", tuned) == "dinov2_vits14-lora-01234567"


def test_mark_adapter_folds_the_adapter_hash_into_the_weights_hash() -> None:
    backbone = build_backbone(MODEL, pretrained=False)
    backbone.weights_sha256 = None
    mark_adapter(backbone, {"adapter_sha256": "ab" * 32})
    assert backbone.weights_sha256 == "random+adapter:" + "ab" * 32


@pytest.mark.slow  # three backbones built: about 5 s on 2 cores
def test_extract_finetune_and_attention_build_the_same_twin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each command's --random-init backbone, caught as it is built, bit for bit."""
    built: list[dict[str, torch.Tensor]] = []
    real = backbones_package.create_backbone

    def caught(*args: Any, **kwargs: Any) -> Any:
        built.append(_weights(real(*args, **kwargs)))
        raise FeatkitError("caught the backbone")  # stop before any real work

    monkeypatch.setattr(backbones_package, "create_backbone", caught)
    data = digits_folder(tmp_path, per_class=2, size=16)
    image = next(data.rglob("*.png"))
    Image.open(image).convert("RGB").save(tmp_path / "one.png")
    ws = ["-w", str(tmp_path / "ws")]
    commands = [
        ["extract", str(data), "--model", MODEL, "--random-init", *ws],
        ["finetune", str(data), "--model", MODEL, "--random-init", *ws],
        ["attention", str(tmp_path / "one.png"), "--model", MODEL, "--random-init", *ws],
    ]
    torch.manual_seed(7)
    before = torch.get_rng_state()
    for args in commands:
        result = CliRunner().invoke(app, args)
        assert "caught the backbone" in result.output, (args, result.output)
    assert torch.equal(torch.get_rng_state(), before)
    assert len(built) == 3
    assert _same(built[0], built[1]) and _same(built[0], built[2])
