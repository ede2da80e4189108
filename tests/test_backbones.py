"""featkit.backbones: names, dimensions, CLS/grid extraction, preprocessing, errors."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import featkit.backbones as backbones_package
from featkit.backbones import (
    HUB_MODELS,
    Backbone,
    BackboneOutput,
    Preprocessing,
    create_backbone,
    list_backbones,
    register_backbone,
    register_scheme,
    registry,
)
from featkit.errors import FeatkitError

# Independent truth: the official model cards / papers (arch, width, patch, registers, depth).
HUB_TRUTH = {
    "dino_vits16": ("vit_small_patch16_224", "dino", 384, 16, 0, 12),
    "dino_vits8": ("vit_small_patch8_224", "dino", 384, 8, 0, 12),
    "dino_vitb16": ("vit_base_patch16_224", "dino", 768, 16, 0, 12),
    "dino_vitb8": ("vit_base_patch8_224", "dino", 768, 8, 0, 12),
    "dinov2_vits14": ("vit_small_patch14_dinov2", "lvd142m", 384, 14, 0, 12),
    "dinov2_vitb14": ("vit_base_patch14_dinov2", "lvd142m", 768, 14, 0, 12),
    "dinov2_vitl14": ("vit_large_patch14_dinov2", "lvd142m", 1024, 14, 0, 24),
    "dinov2_vitg14": ("vit_giant_patch14_dinov2", "lvd142m", 1536, 14, 0, 40),
    "dinov2_vits14_reg": ("vit_small_patch14_reg4_dinov2", "lvd142m", 384, 14, 4, 12),
    "dinov2_vitb14_reg": ("vit_base_patch14_reg4_dinov2", "lvd142m", 768, 14, 4, 12),
    "dinov2_vitl14_reg": ("vit_large_patch14_reg4_dinov2", "lvd142m", 1024, 14, 4, 24),
    "dinov2_vitg14_reg": ("vit_giant_patch14_reg4_dinov2", "lvd142m", 1536, 14, 4, 40),
    "dinov3_vits16": ("vit_small_patch16_dinov3", "lvd1689m", 384, 16, 4, 12),
    "dinov3_vits16plus": ("vit_small_plus_patch16_dinov3", "lvd1689m", 384, 16, 4, 12),
    "dinov3_vitb16": ("vit_base_patch16_dinov3", "lvd1689m", 768, 16, 4, 12),
    "dinov3_vitl16": ("vit_large_patch16_dinov3", "lvd1689m", 1024, 16, 4, 24),
    "dinov3_vith16plus": ("vit_huge_plus_patch16_dinov3", "lvd1689m", 1280, 16, 4, 32),
    "dinov3_vit7b16": ("vit_7b_patch16_dinov3", "lvd1689m", 4096, 16, 4, 40),
}
TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}


def test_every_hub_name_is_registered() -> None:
    assert set(HUB_TRUTH) <= set(list_backbones())
    assert list_backbones("dinov2_*_reg") == sorted(n for n in HUB_TRUTH if n.endswith("_reg"))
    assert list_backbones("nothing*") == []


@pytest.mark.parametrize("name", sorted(HUB_TRUTH))
def test_hub_name_resolves_to_architecture(name: str) -> None:
    arch, tag, dim, patch, regs, depth = HUB_TRUTH[name]
    b = create_backbone(name, pretrained=False, device="meta")  # no memory, even for 7B
    assert b.model.pretrained_cfg["architecture"] == arch
    assert b.model.pretrained_cfg["tag"] == tag
    assert (b.embed_dim, b.patch_size, b.num_registers, len(b.blocks)) == (dim, patch, regs, depth)
    assert b.final_norm is b.model.norm
    assert b.lora_targets == ("qkv",)
    assert b.weights_sha256 is None
    spec = HUB_MODELS[name]  # what `featkit models` shows without building
    assert (spec.patch_size, spec.embed_dim, spec.depth, spec.registers) == (
        patch,
        dim,
        depth,
        regs,
    )
    family = "dinov3" if name.startswith("dinov3") else "dino" if tag == "dino" else "dinov2"
    assert b.pos_embed_rule.startswith("rope" if family == "dinov3" else "official-")
    # DINO eval recipe at 224: resize 256, bicubic, ImageNet statistics.
    assert b.preprocessing == Preprocessing(
        256, 224, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    )


def _tokens(b: Backbone, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = b.model.forward_features(x)
    return out


def test_cls_and_grid_exclude_registers_row_major() -> None:
    torch.manual_seed(0)
    b = create_backbone(
        "timm:vit_small_patch14_reg4_dinov2",
        pretrained=False,
        image_size=28,
        model_kwargs={**TINY, "dynamic_img_size": True},
    )
    assert b.num_registers == 4 and b.patch_size == 14
    x = torch.randn(2, 3, 28, 42)  # 2 x 3 grid: rows and columns cannot be confused
    tokens = _tokens(b, x)
    assert tokens.shape[1] == 1 + 4 + 6
    with torch.no_grad():
        out = b(x)
    assert isinstance(out, BackboneOutput)
    assert out.cls.shape == (2, 32) and out.patches.shape == (2, 2, 3, 32)
    torch.testing.assert_close(out.cls, tokens[:, 0])
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(out.patches[:, i, j], tokens[:, 5 + i * 3 + j])


def test_dinov3_takes_cls_not_the_average_pool() -> None:
    torch.manual_seed(0)
    b = create_backbone("dinov3_vits16", pretrained=False, image_size=32, model_kwargs=TINY)
    assert type(b.model).__name__ == "Eva" and b.num_registers == 4
    x = torch.randn(2, 3, 32, 32)
    tokens = _tokens(b, x)
    with torch.no_grad():
        out = b(x)
    assert tokens.shape[1] == 1 + 4 + 4
    torch.testing.assert_close(out.cls, tokens[:, 0])
    torch.testing.assert_close(out.patches.reshape(2, 4, 32), tokens[:, 5:])
    # Unlike timm's default avg pooling, which would mix patches and registers in.
    assert not torch.allclose(out.cls, tokens[:, 1:].mean(1), atol=1e-3)
    # CLS is after the final norm: per-token LayerNorm statistics with its affine at init.
    norm = b.final_norm
    assert isinstance(norm, torch.nn.LayerNorm)
    torch.testing.assert_close(out.cls.mean(-1), torch.full((2,), float(norm.bias.detach().mean())))


def test_random_init_differs_by_seed_and_has_no_sha() -> None:
    torch.manual_seed(0)
    a = create_backbone(
        "timm:vit_tiny_patch16_224", pretrained=False, image_size=32, model_kwargs=TINY
    )
    torch.manual_seed(1)
    b = create_backbone(
        "timm:vit_tiny_patch16_224", pretrained=False, image_size=32, model_kwargs=TINY
    )
    assert a.weights_sha256 is None and not a.training
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(a(x).cls, b(x).cls)
    assert len(a.blocks) == 2 and a.final_norm is a.model.norm
    # timm name: preprocessing from its pretrained cfg (this one uses 0.5 statistics).
    assert a.preprocessing.mean == (0.5, 0.5, 0.5) and a.preprocessing.crop == 32


def test_preprocessing_transform_matches_hand_computation() -> None:
    p = create_backbone(
        "dinov2_vits14", pretrained=False, image_size=112, device="meta"
    ).preprocessing
    assert (p.resize, p.crop) == (128, 112)  # round(112 / 0.875)
    img = Image.new("RGB", (500, 375), (255, 128, 0))
    x = p.transform()(img)
    assert x.dtype == torch.float32 and x.shape == (3, 112, 112)
    expected = (np.array([255, 128, 0]) / 255 - np.array(p.mean)) / np.array(p.std)
    np.testing.assert_allclose(x.mean((1, 2)).numpy(), expected, atol=1e-5)


def test_preprocessing_resizes_shorter_side_then_crops_centre() -> None:
    p = Preprocessing.dino(28, mean=(0, 0, 0), std=(1, 1, 1), interpolation="nearest")
    assert p.resize == 32
    img = np.zeros((64, 128, 3), np.uint8)  # wide image: left half black, right half white
    img[:, 64:] = 255
    x = p.transform()(Image.fromarray(img))
    # 64x128 → 32x64, the 28-wide centre crop spans columns 18..45: black, then white.
    assert x.shape == (3, 28, 28)
    assert float(x[0, :, :14].max()) == 0.0 and float(x[0, :, 14:].min()) == 1.0
    with pytest.raises(FeatkitError, match="interpolation 'cubic'"):
        Preprocessing.dino(28, interpolation="cubic").transform()


def test_image_size_must_be_a_multiple_of_the_patch() -> None:
    with pytest.raises(FeatkitError) as err:
        create_backbone("dinov2_vits14", pretrained=False, image_size=100)
    assert str(err.value) == (
        "image size 100 is not a multiple of the patch size 14 of dinov2_vits14; use 98 or 112"
    )
    with pytest.raises(FeatkitError, match=r"patch size 16 .* use 32 or 48"):
        create_backbone("timm:vit_tiny_patch16_224", pretrained=False, image_size=40, device="meta")
    with pytest.raises(FeatkitError, match="positive integer"):
        create_backbone("dinov2_vits14", pretrained=False, image_size=0)


def test_unknown_names_suggest_close_matches() -> None:
    with pytest.raises(FeatkitError, match="did you mean dinov2_vits14"):
        create_backbone("dinov2_vit14", pretrained=False)
    with pytest.raises(FeatkitError, match="did you mean vit_small_patch16_224"):
        create_backbone("timm:vit_smal_patch16_224", pretrained=False)
    with pytest.raises(FeatkitError, match=r"cannot build .*Invalid pretrained tag \(foo\)"):
        create_backbone("timm:vit_small_patch16_224.foo", pretrained=False, device="meta")
    with pytest.raises(FeatkitError, match="unexpected keyword argument 'bogus'"):
        create_backbone("dino_vits16", pretrained=False, model_kwargs={"bogus": 1}, device="meta")
    with pytest.raises(FeatkitError, match="without a CLS token"):
        create_backbone("timm:resnet18", pretrained=False, device="meta")


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path


def test_offline_without_weights_is_a_one_line_error(empty_hub_cache) -> None:  # type: ignore[no-untyped-def]
    # conftest sets HF_HUB_OFFLINE=1; the cache is empty.
    with pytest.raises(FeatkitError) as err:
        create_backbone("dino_vits16")
    msg = str(err.value)
    assert "\n" not in msg and "dino_vits16" in msg and "--weights FILE" in msg
    with pytest.raises(FeatkitError, match="--weights FILE"):
        create_backbone("timm:vit_small_patch16_224.dino", local_files_only=True)


def test_no_network_is_the_same_error(empty_hub_cache, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import huggingface_hub

    def refuse(*args: object, **kwargs: object) -> str:
        raise ConnectionError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    with pytest.raises(FeatkitError, match="no weights for dinov3_vitb16 are available offline"):
        create_backbone("dinov3_vitb16")


def test_register_backbone_adds_a_factory() -> None:
    seen: dict[str, object] = {}

    @register_backbone("test-constant")
    def _factory(name: str, **options: object) -> Backbone:
        seen.update(options, name=name)
        return create_backbone(
            "timm:vit_tiny_patch16_224", pretrained=False, image_size=32, model_kwargs=TINY
        )

    try:
        assert "test-constant" in list_backbones("test-*")
        b = create_backbone("test-constant", image_size=32, pretrained=False)
        assert isinstance(b, Backbone) and not b.training
        assert seen["name"] == "test-constant" and seen["image_size"] == 32
        assert seen["pretrained"] is False and seen["weights"] is None
    finally:
        from featkit import backbones

        backbones._REGISTRY.pop("test-constant", None)
    with pytest.raises(ValueError, match="may not start"):
        register_backbone("timm:x")


def test_hub_weights_go_through_the_local_loading_path(empty_hub_cache, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    torch.manual_seed(0)
    src = create_backbone("dino_vits16", pretrained=False, image_size=32, model_kwargs=TINY)
    weights = empty_hub_cache / "model.bin"
    torch.save(src.model.state_dict(), weights)
    asked: list[tuple[str, str]] = []

    def cached(repo: str, filename: str, **kwargs: object) -> str:
        asked.append((repo, filename))
        if filename == "model.safetensors":  # only the .bin is cached: fall back to it
            raise LocalEntryNotFoundError("not cached")
        return str(weights)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", cached)
    b = create_backbone("dino_vits16", image_size=32, model_kwargs=TINY)
    assert asked == [
        ("timm/vit_small_patch16_224.dino", "model.safetensors"),
        ("timm/vit_small_patch16_224.dino", "pytorch_model.bin"),
    ]
    assert b.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(b(x).cls, src(x).cls)


def test_fingerprint_names_the_rule_the_resize_and_the_precision() -> None:
    from featkit.store.fingerprint import BINDING_KEYS, make_fingerprint

    b = create_backbone("dinov2_vits14", pretrained=False, image_size=28, model_kwargs=TINY)
    fp = make_fingerprint(b, precision="fp32", patches="mean")
    assert fp["pos_embed"] == "official-dinov2: bicubic scale (n+0.1)/M, no antialias"
    assert fp["precision"] == "fp32" and "pos_embed" in BINDING_KEYS
    assert fp["preprocessing"]["crop"] == 28 and "resize_mode" not in fp["preprocessing"]
    reg = create_backbone("dinov2_vits14_reg", pretrained=False, image_size=28, model_kwargs=TINY)
    assert make_fingerprint(reg, precision="bf16", patches="mean")["pos_embed"].startswith(
        "official-dinov2-reg: bicubic to size, antialias"
    )
    b.preprocessing = Preprocessing(28, 28, "bilinear", (0.5,) * 3, (0.5,) * 3, "square")
    assert (
        make_fingerprint(b, precision="fp32", patches="mean")["preprocessing"]["resize_mode"]
        == "square"
    )


def test_square_resize_keeps_the_whole_image() -> None:
    p = Preprocessing(28, 28, "nearest", (0, 0, 0), (1, 1, 1), resize_mode="square")
    img = np.zeros((64, 128, 3), np.uint8)
    img[:, :16] = 255  # a white band on the far left survives a squash, not a centre crop
    x = p.transform()(Image.fromarray(img))
    assert x.shape == (3, 28, 28) and float(x[0, :, 0].min()) == 1.0
    assert float(x[0, :, 4:].max()) == 0.0


def _imported_modules(path: Path) -> set[str]:
    """Every featkit module a file imports, at any depth (deferred imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return {m for m in found if m.startswith("featkit")}


def test_registry_imports_no_family_and_families_skip_the_package() -> None:
    folder = Path(backbones_package.__file__).parent
    allowed = {"featkit.backbones.base", "featkit.errors"}
    assert _imported_modules(folder / "registry.py") <= allowed
    for family in ("hub", "timm_models", "hf", "pixels", "tiny_dino", "official"):
        # Importing the package from a family would run the package's imports in a circle.
        assert "featkit.backbones" not in _imported_modules(folder / f"{family}.py"), family


def test_register_scheme_routes_a_prefix_and_guards_names(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(registry, "_SCHEMES", dict(registry._SCHEMES))
    monkeypatch.setattr(registry, "_SCHEME_USAGE", dict(registry._SCHEME_USAGE))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    seen: dict[str, object] = {}

    def factory(name: str, target: str, **options: object) -> Backbone:
        seen.update(options, name=name, target=target)
        return create_backbone(
            "timm:vit_tiny_patch16_224", pretrained=False, image_size=32, model_kwargs=TINY
        )

    register_scheme("test:", factory, usage="test:<anything>")
    b = create_backbone("test:some/thing", pretrained=False, image_size=32)
    assert not b.training
    assert seen["name"] == "test:some/thing" and seen["target"] == "some/thing"
    assert seen["transform"] == "processor" and seen["image_size"] == 32
    with pytest.raises(ValueError, match="may not start"):
        register_backbone("test:x")
    register_backbone("hide:me")(factory)
    with pytest.raises(ValueError, match="would hide"):
        register_scheme("hide:", factory)
    with pytest.raises(ValueError, match="ends with"):
        register_scheme("nocolon", factory)
    with pytest.raises(FeatkitError, match="test:<anything>"):
        create_backbone("no-such-model", pretrained=False)
