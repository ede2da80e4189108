"""Explicit last-block attention equals an unfused reference; masks, point, PCA colours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from featkit.errors import FeatkitError
from featkit.viz.attention import attention_masks, compute_attention
from featkit.viz.patches import map_point, pca_rgb, point_similarity
from tests.test_plots import assert_real_png

SIZE, PATCH = 64, 16  # a 4x4 patch grid


def tiny_timm(name: str, **kwargs: object) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(
        name, pretrained=False, img_size=SIZE, depth=2, num_classes=0, **kwargs
    )
    return model.eval()


def reference_timm(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """timm's own unfused path: the softmax output is what ``attn_drop`` receives."""
    attn = model.blocks[-1].attn
    seen: list[torch.Tensor] = []
    handle = attn.attn_drop.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    fused = attn.fused_attn
    attn.fused_attn = False
    try:
        with torch.no_grad():
            model.forward_features(images)
    finally:
        attn.fused_attn = fused
        handle.remove()
    return seen[0][:, :, 0]  # CLS row, [B, heads, N]


@pytest.mark.parametrize(
    ("name", "kwargs", "prefix"),
    [
        ("vit_tiny_patch16_224", {"reg_tokens": 4, "embed_dim": 48, "num_heads": 3}, 5),
        ("vit_tiny_patch16_224", {"embed_dim": 48, "num_heads": 3, "qk_norm": True}, 1),
        ("vit_small_patch16_dinov3", {"embed_dim": 64, "num_heads": 4}, 5),  # Eva + RoPE
    ],
)
def test_timm_attention_equals_unfused_reference(
    name: str, kwargs: dict[str, object], prefix: int
) -> None:
    model = tiny_timm(name, **kwargs)
    assert model.blocks[-1].attn.fused_attn  # the path that returns no weights
    images = torch.randn(2, 3, SIZE, SIZE)
    maps = compute_attention(model, images)
    expected = reference_timm(model, images)
    torch.testing.assert_close(maps.cls_attention, expected, atol=1e-5, rtol=1e-5)
    # Rows sum to one over all keys (CLS and registers included) before any thresholding.
    torch.testing.assert_close(maps.cls_attention.sum(-1), torch.ones(2, kwargs["num_heads"]))
    # Registers are left out: the map is exactly the 4x4 patch grid.
    assert maps.num_prefix_tokens == prefix
    assert maps.patch_attention().shape == (2, kwargs["num_heads"], 4, 4)
    assert maps.patch_tokens.shape == (2, 4, 4, kwargs["embed_dim"])
    torch.testing.assert_close(maps.patch_attention().flatten(2), maps.cls_attention[:, :, prefix:])
    # The patch tokens are the final-norm tokens after the prefix.
    with torch.no_grad():
        tokens = model.forward_features(images)
    torch.testing.assert_close(maps.patch_tokens, tokens[:, prefix:].reshape(2, 4, 4, -1))


@pytest.mark.parametrize("family", ["dinov2_reg", "dinov3"])
def test_hf_attention_equals_eager_attentions(family: str) -> None:
    import transformers as tf

    torch.manual_seed(0)
    common = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=SIZE,
        patch_size=PATCH,
    )
    if family == "dinov2_reg":
        config = tf.Dinov2WithRegistersConfig(num_register_tokens=4, **common)
        model = tf.Dinov2WithRegistersModel(config)
    else:
        config = tf.DINOv3ViTConfig(num_register_tokens=4, **common)
        model = tf.DINOv3ViTModel(config)
    model.eval()
    images = torch.randn(1, 3, SIZE, SIZE)
    maps = compute_attention(model, images)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(pixel_values=images, output_attentions=True)
    expected = out.attentions[-1][:, :, 0]
    torch.testing.assert_close(maps.cls_attention, expected, atol=1e-5, rtol=1e-5)
    assert maps.patch_attention().shape == (1, 2, 4, 4)


def test_unsupported_model_is_a_clear_error() -> None:
    with pytest.raises(FeatkitError, match=r"expected a timm VisionTransformer/Eva.*got Linear"):
        compute_attention(torch.nn.Linear(3, 3), torch.randn(1, 3, SIZE, SIZE))


def test_masks_hand_example_and_mass() -> None:
    attention = torch.tensor([[0.05, 0.30], [0.10, 0.05]])  # patch mass 0.5 (rest on CLS)
    # Renormalised: 0.1, 0.6, 0.2, 0.1 -> 60% needs only the 0.6 patch; 70% needs two.
    assert attention_masks(attention, 0.6).tolist() == [[False, True], [False, False]]
    assert attention_masks(attention, 0.7).tolist() == [[False, True], [True, False]]
    assert attention_masks(attention, 1.0).all()

    rng = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 5, 7, 7, generator=rng) ** 4
    for threshold in (0.3, 0.6, 0.9):
        masks = attention_masks(maps, threshold)
        mass = maps / maps.sum(dim=(-2, -1), keepdim=True)
        kept = (mass * masks).sum(dim=(-2, -1))
        assert (kept >= threshold - 1e-9).all()
        # Minimal: dropping the weakest kept patch falls below the threshold.
        weakest = torch.where(masks, mass, torch.inf).flatten(-2).min(-1).values
        assert (kept - weakest < threshold).all()
    with pytest.raises(FeatkitError, match="--threshold: expected a fraction"):
        attention_masks(maps, 1.5)


def test_point_similarity_and_mapping() -> None:
    from sklearn.metrics.pairwise import cosine_similarity

    tokens = torch.randn(4, 4, 8)
    sim = point_similarity(tokens, (40.0, 10.0), PATCH)  # column 2, row 0
    expected = cosine_similarity(tokens.reshape(16, 8).numpy(), tokens[0, 2][None].numpy())
    np.testing.assert_allclose(sim.reshape(16).numpy(), expected[:, 0], atol=1e-6)
    assert sim[0, 2] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(FeatkitError, match="--point 64,3: expected a point inside"):
        point_similarity(tokens, (64.0, 3.0), PATCH)
    # 200x100 image, shorter side -> 73, crop 64: scale 0.73, offsets (146-64)/2 = 41 and
    # (73-64)/2 = 4.5, so (100, 20) -> (73 - 41, 14.6 - 4.5).
    assert map_point((100.0, 20.0), (200, 100), 73, 64) == pytest.approx((32.0, 10.1))
    with pytest.raises(FeatkitError, match="--point 250,5: expected pixel coordinates inside"):
        map_point((250.0, 5.0), (200, 100), 73, 64)
    with pytest.raises(FeatkitError, match="cuts away"):
        map_point((5.0, 50.0), (200, 100), 73, 64)


def test_pca_rgb_range_and_first_component() -> None:
    torch.manual_seed(0)
    tokens = torch.randn(5, 6, 16)
    tokens[..., 0] += torch.linspace(-20, 20, 30).reshape(5, 6)  # a dominant direction
    rgb = pca_rgb(tokens)
    assert rgb.shape == (5, 6, 3)
    np.testing.assert_allclose(rgb.reshape(-1, 3).min(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(rgb.reshape(-1, 3).max(0), 1.0, atol=1e-12)
    # The red channel follows the dominant direction (up to sign).
    corr = np.corrcoef(rgb[..., 0].ravel(), np.linspace(-20, 20, 30))[0, 1]
    assert abs(corr) > 0.99


def test_attention_pictures_are_real_pngs(tmp_path: Path) -> None:
    from PIL import Image

    from featkit.viz import plots

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    attention = torch.rand(6, 4, 4, generator=torch.Generator().manual_seed(1))
    masks = attention_masks(attention, 0.6)
    path = tmp_path / "a.png"
    plots.plot_attention(image, attention.numpy(), masks.numpy(), path, title="t")
    assert_real_png(path, min_size=(600, 600))
    with Image.open(path) as png:
        assert png.width > png.height  # 6 heads in one row, 3 rows: wider than tall
    plots.plot_point_similarity(image, rng.uniform(-1, 1, (4, 4)), (10, 20), tmp_path / "p.png")
    assert_real_png(tmp_path / "p.png")
    plots.plot_pca_rgb(image, rng.uniform(0, 1, (4, 4, 3)), tmp_path / "c.png")
    assert_real_png(tmp_path / "c.png")
