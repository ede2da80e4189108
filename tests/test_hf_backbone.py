"""hf: backbones built from save_pretrained folders of tiny transformers configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from featkit.backbones import Preprocessing, create_backbone
from featkit.errors import FeatkitError

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
)
# (config class, model class, extra config, register tokens in the output)
MODELS = {
    "dinov2": ("Dinov2Config", "Dinov2Model", {}, 0),
    "dinov2_reg": ("Dinov2WithRegistersConfig", "Dinov2WithRegistersModel", {}, 4),
    "dinov3": ("DINOv3ViTConfig", "DINOv3ViTModel", {"num_register_tokens": 4}, 4),
    "vit": ("ViTConfig", "ViTModel", {}, 0),
}


def _save(folder: Path, kind: str, seed: int = 0) -> tuple[Any, int]:
    config_cls, model_cls, extra, regs = MODELS[kind]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**TINY, **extra)
    model = getattr(transformers, model_cls)(config).eval()
    model.save_pretrained(folder)
    return model, regs


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_hf_folder_cls_equals_the_models_own_output(tmp_path: Path, kind: str) -> None:
    model, regs = _save(tmp_path, kind)
    b = create_backbone(f"hf:{tmp_path}")
    assert (b.patch_size, b.embed_dim, b.num_registers) == (8, 32, regs)
    assert b.weights_sha256 is not None and len(b.weights_sha256) == 64
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = b(x)
        ref = model(pixel_values=x, output_hidden_states=True)
    hidden = ref.last_hidden_state
    assert hidden.shape[1] == 1 + regs + 16  # CLS, registers, 4x4 patches
    torch.testing.assert_close(out.cls, hidden[:, 0])
    torch.testing.assert_close(out.patches.reshape(2, 16, 32), hidden[:, 1 + regs :])
    # last_hidden_state is after the final norm: the last block's output, normed.
    with torch.no_grad():
        normed = b.final_norm(ref.hidden_states[-1])
    torch.testing.assert_close(out.cls, normed[:, 0])
    assert len(b.blocks) == 2
    names = {n.rsplit(".", 1)[-1] for n, _ in b.model.named_modules()}
    assert set(b.lora_targets) <= names and len(b.lora_targets) == 2


@pytest.mark.parametrize("kind", ["vit", "dinov2_reg", "dinov3"])
def test_hf_position_embeddings_follow_the_image_size(tmp_path: Path, kind: str) -> None:
    _save(tmp_path, kind)
    b = create_backbone(f"hf:{tmp_path}", image_size=48)
    assert b.preprocessing.crop == 48 and b.preprocessing.resize == 55  # round(48 / 0.875)
    with torch.no_grad():
        out = b(torch.randn(1, 3, 48, 48))
    assert out.patches.shape == (1, 6, 6, 32)
    with pytest.raises(FeatkitError, match="not a multiple of the patch size 8"):
        create_backbone(f"hf:{tmp_path}", image_size=50)


def test_preprocessing_from_the_processor_config(tmp_path: Path) -> None:
    _save(tmp_path, "dinov2")
    b = create_backbone(f"hf:{tmp_path}")
    # No processor config: DINO defaults at the (tiny) config size.
    assert b.preprocessing == Preprocessing.dino(32)
    proc = {
        "size": {"shortest_edge": 40},
        "crop_size": {"height": 32, "width": 32},
        "do_center_crop": True,
        "resample": 2,
        "image_mean": [0.5, 0.4, 0.3],
        "image_std": [0.2, 0.2, 0.25],
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(proc))
    b = create_backbone(f"hf:{tmp_path}")
    assert b.preprocessing == Preprocessing(40, 32, "bilinear", (0.5, 0.4, 0.3), (0.2, 0.2, 0.25))


def test_random_init_and_weights_file(tmp_path: Path) -> None:
    model, _ = _save(tmp_path / "m", "dinov2_reg")
    rand = create_backbone(f"hf:{tmp_path / 'm'}", pretrained=False)
    assert rand.weights_sha256 is None
    torch.save({"model": model.state_dict()}, tmp_path / "w.pth")
    loaded = create_backbone(f"hf:{tmp_path / 'm'}", weights=tmp_path / "w.pth")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).cls, model(pixel_values=x).last_hidden_state[:, 0])
        assert not torch.allclose(rand(x).cls, loaded(x).cls)


def test_hf_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FeatkitError, match=r"has no loadable config\.json"):
        create_backbone(f"hf:{tmp_path}")
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FeatkitError) as err:
        create_backbone("hf:facebook/dinov2-small")  # conftest: HF_HUB_OFFLINE=1
    assert "\n" not in str(err.value) and "--weights FILE" in str(err.value)
    transformers.BertConfig(hidden_size=32, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(FeatkitError, match="is a 'bert' model; expected one of dinov2"):
        create_backbone(f"hf:{tmp_path}")


# --------------------------------------------------------------------------- processors


def _photo() -> Any:
    """A wide image with structure everywhere, so that crop vs squash shows."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:60, 0:100]
    rgb = np.stack([xx * 2.5, yy * 4.0, (xx + yy) % 50 * 5], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


@pytest.mark.parametrize(
    ("kind", "processor", "settings"),
    [
        ("dinov3", "DINOv3ViTImageProcessor", {"size": {"height": 32, "width": 32}}),
        (
            "dinov2",
            "BitImageProcessor",
            {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}},
        ),
    ],
)
def test_hf_preprocessing_follows_the_processor(
    tmp_path: Path, kind: str, processor: str, settings: dict[str, Any]
) -> None:
    import numpy as np

    model, _ = _save(tmp_path, kind)
    getattr(transformers, processor)(**settings).save_pretrained(tmp_path)
    b = create_backbone(f"hf:{tmp_path}")
    image = _photo()
    ours = b.preprocessing.transform()(image)
    theirs = getattr(transformers, processor).from_pretrained(tmp_path)(
        images=image, return_tensors="pt"
    )["pixel_values"][0]
    assert ours.shape == theirs.shape == (3, 32, 32)
    # Same geometry and statistics; resampling kernels differ slightly between libraries.
    assert float((ours - theirs).abs().mean()) < 0.05
    family = create_backbone(f"hf:{tmp_path}", transform="family").preprocessing
    assert family == Preprocessing.dino(32)
    other = family.transform()(image)
    assert float((other - theirs).abs().mean()) > 4 * float((ours - theirs).abs().mean())
    # And the features: featkit's pass equals the processor + model pipeline.
    with torch.no_grad():
        cls = b(ours[None]).cls
        ref = model(pixel_values=theirs[None]).last_hidden_state[:, 0]
    assert float(torch.nn.functional.cosine_similarity(cls, ref)) > 0.99
    assert np.isfinite(cls.numpy()).all()


def test_dino_v1_port_with_half_statistics_gets_imagenet_and_a_notice(tmp_path: Path) -> None:
    _save(tmp_path, "vit")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    b = create_backbone(f"hf:{tmp_path}")
    assert (b.preprocessing.mean, b.preprocessing.std) == (
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
    )
    assert b.preprocessing.resize_mode == "square" and b.preprocessing.crop == 32
    assert len(b.notices) == 1 and "\n" not in b.notices[0] and "ImageNet" in b.notices[0]
    other = {"image_mean": [0.4, 0.4, 0.4], "image_std": [0.3, 0.3, 0.3]}
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, **other).save_pretrained(
        tmp_path
    )
    kept = create_backbone(f"hf:{tmp_path}")
    assert kept.preprocessing.mean == (0.4, 0.4, 0.4) and kept.notices == ()
    with pytest.raises(FeatkitError, match="transform: expected processor or family"):
        create_backbone(f"hf:{tmp_path}", transform="mine")
