"""Every hub name computes what the official code computes, at every input size.

The truth is tests/official_reference.py: the official forward re-implemented from the
papers and the facebookresearch repositories, on weights in the *released* key layout,
with white-noise position embeddings (the worst case for resampling).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from featkit.backbones import HUB_MODELS, create_backbone
from featkit.backbones.official import POS_EMBED_RULES, resample_pos_embed
from tests import official_reference as ref

HEADS = 2
TINY = {"depth": 2, "embed_dim": 48, "num_heads": HEADS}
# timm's ViT-g ratio gives an odd SwiGLU width at this size; any even width is the same maths.
TINY_EXTRA = {"dinov2_vitg14": {"mlp_ratio": 4.0}}
# (name, sizes): the stored grid (no resampling), a smaller square and a non-square input.
CASES = [
    ("dino_vits16", [(224, 224), (112, 112), (64, 96)]),
    ("dino_vits8", [(56, 40)]),
    ("dinov2_vits14", [(224, 224), (112, 112), (224, 336)]),
    ("dinov2_vits14_reg", [(224, 224), (112, 154)]),
    ("dinov2_vitg14", [(112, 84)]),
    ("dinov3_vits16", [(224, 224), (64, 112)]),
    ("dinov3_vits16plus", [(96, 64)]),
]
TARGET = 0.9999  # CLS and patch-mean cosine in fp32


def _official_file(name: str, tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    spec = HUB_MODELS[name]
    kwargs = {**TINY, **TINY_EXTRA.get(name, {})}
    shape_source = create_backbone(name, pretrained=False, model_kwargs=kwargs, device="meta")
    shapes = {k: torch.empty(v.shape) for k, v in shape_source.model.state_dict().items()}
    state = ref.random_official_state(spec.family, shapes, HEADS)
    path = tmp_path / f"{name}.pth"
    torch.save({"teacher": state} if spec.family == "dino" else state, path)
    return path, state


# The released DINOv2 grid (518 px: 1369 patches) is slow for the plain reference maths.
SLOW_CASES = [("dinov2_vits14", [(518, 518)]), ("dinov3_vitb16", [(512, 512)])]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "sizes"), SLOW_CASES, ids=[c[0] for c in SLOW_CASES])
def test_hub_name_matches_the_official_forward_at_the_release_size(
    name: str, sizes: list[tuple[int, int]], tmp_path: Path
) -> None:
    test_hub_name_matches_the_official_forward(name, sizes, tmp_path)


@pytest.mark.parametrize(("name", "sizes"), CASES, ids=[c[0] for c in CASES])
def test_hub_name_matches_the_official_forward(
    name: str, sizes: list[tuple[int, int]], tmp_path: Path
) -> None:
    spec = HUB_MODELS[name]
    path, state = _official_file(name, tmp_path)
    kwargs = {**TINY, **TINY_EXTRA.get(name, {})}
    backbone = create_backbone(name, weights=path, model_kwargs=kwargs)
    gen = torch.Generator().manual_seed(0)
    for height, width in sizes:
        batch = 1 if height * width > 224 * 336 else 2  # the reference is plain, slow maths
        x = torch.randn(batch, 3, height, width, generator=gen)
        with torch.no_grad():
            out = backbone(x)
            cls, mean = ref.cls_and_patch_mean(state, spec.family, x, HEADS, spec.registers)
        assert out.patches.shape[1:3] == (height // spec.patch_size, width // spec.patch_size)
        cos_cls = F.cosine_similarity(out.cls, cls).min().item()
        cos_mean = F.cosine_similarity(out.patches.mean((1, 2)), mean).min().item()
        assert cos_cls >= TARGET and cos_mean >= TARGET, (name, height, width)


@pytest.mark.parametrize(
    ("family", "grid"), [("dino", (8, 8)), ("dinov2", (16, 24)), ("dinov2_reg", (8, 11))]
)
def test_resampling_rule_equals_the_official_interpolation(
    family: str, grid: tuple[int, int]
) -> None:
    stored = torch.randn(1, 37 * 37, 16, generator=torch.Generator().manual_seed(1))
    ours = resample_pos_embed(stored, grid, POS_EMBED_RULES[family])[0]
    rule = "antialias" if family == "dinov2_reg" else "offset"
    torch.testing.assert_close(ours, ref.resample(stored[0], grid, rule), atol=3e-5, rtol=0)
    assert resample_pos_embed(stored, (37, 37), POS_EMBED_RULES[family]) is stored


def test_the_rules_differ_enough_for_the_parity_test_to_see() -> None:
    # White noise resampled 37 -> 8 by the two official rules: a featkit that used the
    # wrong one (timm's load-time resampling is the antialiased one) fails the cosines.
    stored = torch.randn(37 * 37, 16, generator=torch.Generator().manual_seed(2))
    offset = ref.resample(stored, (8, 8), "offset").flatten()
    antialias = ref.resample(stored, (8, 8), "antialias").flatten()
    assert F.cosine_similarity(offset, antialias, dim=0) < 0.9
    # Scale (n + 0.1) / M is not size n: the sampling positions move.
    by_size = ref.cubic_matrix(37, 8, 37 / 8)
    by_offset = ref.cubic_matrix(37, 8, 37 / 8.1)
    assert (by_size - by_offset).abs().max() > 0.05


def test_masked_k_bias_and_storage_tokens_follow_the_release(tmp_path: Path) -> None:
    path, state = _official_file("dinov3_vits16", tmp_path)
    backbone = create_backbone("dinov3_vits16", weights=path, model_kwargs=TINY)
    assert backbone.num_registers == 4
    x = torch.randn(1, 3, 32, 48)
    # Changing the masked k third of the bias changes nothing, in featkit or the reference.
    k_part = slice(TINY["embed_dim"], 2 * TINY["embed_dim"])
    state["blocks.0.attn.qkv.bias"][k_part] += 5.0
    torch.save(state, tmp_path / "k.pth")
    shifted = create_backbone("dinov3_vits16", weights=tmp_path / "k.pth", model_kwargs=TINY)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x).cls, shifted(x).cls)
    # The q/v biases matter: zeroing them changes the features (they are not dropped).
    state["blocks.0.attn.qkv.bias"].zero_()
    torch.save(state, tmp_path / "zero.pth")
    zero = create_backbone("dinov3_vits16", weights=tmp_path / "zero.pth", model_kwargs=TINY)
    with torch.no_grad():
        assert not torch.allclose(backbone(x).cls, zero(x).cls, atol=1e-3)


def test_a_file_with_another_grid_keeps_it_and_follows_the_rule(tmp_path: Path) -> None:
    # e.g. a featkit pretrain output or a timm file resampled to 56 px: a 4x4 grid.
    src = create_backbone(
        "timm:vit_small_patch14_dinov2", pretrained=False, image_size=56, model_kwargs=TINY
    )
    gen = torch.Generator().manual_seed(3)
    state = {
        k: torch.randn(v.shape, generator=gen) * 0.3 for k, v in src.model.state_dict().items()
    }
    torch.save(state, tmp_path / "grid4.pth")
    backbone = create_backbone("dinov2_vits14", weights=tmp_path / "grid4.pth", model_kwargs=TINY)
    assert backbone.model.pos_embed.shape[1] == 1 + 16  # not resampled at load
    x = torch.randn(2, 3, 28, 70, generator=gen)
    with torch.no_grad():
        out = backbone(x)
        cls, mean = ref.cls_and_patch_mean(state, "dinov2", x, HEADS, 0)
    assert F.cosine_similarity(out.cls, cls).min() >= TARGET
    assert F.cosine_similarity(out.patches.mean((1, 2)), mean).min() >= TARGET
