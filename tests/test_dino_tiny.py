"""The bundled `featkit-tiny-dino`: small, loadable both ways, and not its random twin."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open

from featkit.backbones import create_backbone, list_backbones
from featkit.backbones.tiny_dino import ARCH, ARCH_KWARGS, weights_file


def test_bundled_weights_are_small_and_describe_their_architecture() -> None:
    path = weights_file()
    assert path.is_file() and path.stat().st_size <= 5 * 1024 * 1024
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert json.loads(meta["featkit_model_kwargs"]) == {**ARCH_KWARGS, "img_size": 32}
    made = json.loads(meta["featkit_pretrain"])
    assert made["method"] == "dino" and made["config"]["split"] is None


def test_tiny_dino_loads_by_name_and_as_timm_with_weights() -> None:
    assert "featkit-tiny-dino" in list_backbones()
    tiny = create_backbone("featkit-tiny-dino")
    assert tiny.name == "featkit-tiny-dino" and tiny.weights_sha256 is not None
    assert (tiny.embed_dim, tiny.patch_size, tiny.preprocessing.crop) == (128, 8, 32)
    same = create_backbone(ARCH, weights=weights_file())
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = tiny(images)
        torch.testing.assert_close(out.cls, same(images).cls)
    assert out.patches.shape == (2, 4, 4, 128)


def test_random_init_twin_differs() -> None:
    torch.manual_seed(0)
    random = create_backbone("featkit-tiny-dino", pretrained=False)
    assert random.weights_sha256 is None
    tiny = create_backbone("featkit-tiny-dino")
    w = "blocks.0.attn.qkv.weight"
    assert not torch.equal(random.model.state_dict()[w], tiny.model.state_dict()[w])
