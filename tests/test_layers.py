"""The official linear-evaluation features: CLS of the last n blocks, ``extract --layers n``.

The truth here is a manual loop over the tiny ViT's blocks, each output through the final
norm (what DINO v1's and DINOv2's ``get_intermediate_layers`` return), never featkit's hooks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from featkit.backbones import Backbone, create_backbone
from featkit.cli import app
from featkit.data.images import discover, load_image
from featkit.errors import FeatkitError, FingerprintMismatchError
from featkit.extraction.run import ExtractSettings, extract
from featkit.store.reader import open_store
from tests.helpers import digits_folder

SETTINGS = ExtractSettings(precision="fp32", batch_size=4, shard_size=4, workers=0, layers=3)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(name: str = "timm:vit_tiny_patch16_224", size: int = 32) -> Backbone:
    torch.manual_seed(0)
    return create_backbone(
        name,
        image_size=size,
        pretrained=False,
        model_kwargs={"depth": 3, "embed_dim": 48, "num_heads": 2},
    )


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    return _tiny()


def _manual(backbone: Backbone, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(normed CLS of every block ``[B, depth, D]``, mean of the last block's normed patches)."""
    vit = backbone.model
    x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))
    per_block = []
    for block in vit.blocks:
        x = block(x)
        per_block.append(vit.norm(x))
    cls = torch.stack([tokens[:, 0] for tokens in per_block], dim=1)
    return cls, per_block[-1][:, backbone.num_prefix_tokens :].mean(dim=1)


@pytest.mark.parametrize(
    "name, size",
    [("timm:vit_tiny_patch16_224", 32), ("dinov2_vits14", 28), ("dinov2_vits14_reg", 28)],
)
def test_forward_layers_equal_a_manual_loop_over_the_blocks(name: str, size: int) -> None:
    backbone = _tiny(name, size)
    images = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        truth, _ = _manual(backbone, images)
        for n in (1, 2, 3):
            out, layers = backbone.forward_layers(images, n)
            assert layers.shape == (2, n, 48)
            torch.testing.assert_close(layers, truth[:, -n:], rtol=1e-5, atol=1e-5)
            assert torch.equal(layers[:, -1], out.cls)  # cls<n> ends with exactly `cls`
    for bad in (0, 4):
        with pytest.raises(FeatkitError, match=f"layers: expected 1 to 3 .*got {bad}"):
            backbone.forward_layers(images, bad)


@pytest.mark.parametrize("kind", ["Dinov2", "DINOv3ViT"])
def test_forward_layers_of_hf_models_equal_their_hidden_states(tmp_path: Path, kind: str) -> None:
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, f"{kind}Config")(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8,
    )  # fmt: skip
    model = getattr(transformers, f"{kind}Model")(config).eval()
    model.save_pretrained(tmp_path)
    backbone = create_backbone(f"hf:{tmp_path}")
    images = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        hidden = model(pixel_values=images, output_hidden_states=True).hidden_states
        norm = model.layernorm if kind == "Dinov2" else model.norm
        truth = torch.stack([norm(h)[:, 0] for h in hidden[-2:]], dim=1)
        _, layers = backbone.forward_layers(images, 2)
    torch.testing.assert_close(layers, truth, rtol=1e-5, atol=1e-5)


def test_store_holds_the_official_kinds(backbone: Backbone, tmp_path: Path) -> None:
    data = discover(digits_folder(tmp_path, per_class=1))
    out = tmp_path / "s.h5"
    extract(data, backbone, out, SETTINGS)
    transform = backbone.preprocessing.transform()
    batch = torch.stack([transform(load_image(data.root / r.path)) for r in data.records])
    with torch.inference_mode():
        cls, avgpool = _manual(backbone, batch)
    order = np.argsort([r.path for r in data.records], kind="stable")
    cls, avgpool = cls.numpy()[order], avgpool.numpy()[order]
    with open_store(out) as store:
        assert store.layers == 3 and store.fingerprint["layers"] == 3
        assert "cls_layers" in store.feature_kinds
        # DINOv2 eval/linear.py: CLS of the last n blocks, oldest first, then the avgpool.
        for k in (2, 3):
            got = store.features(f"cls{k}")
            np.testing.assert_allclose(got, cls[:, -k:].reshape(len(cls), -1), atol=1e-5)
            both = store.features(f"cls{k}+avgpool")
            np.testing.assert_allclose(both[:, : k * 48], got, atol=0)
            np.testing.assert_allclose(both[:, k * 48 :], avgpool, atol=1e-5)
        np.testing.assert_array_equal(store.features("cls1"), store.features("cls"))
        np.testing.assert_array_equal(
            store.features("cls1+avgpool"), store.features("cls+patch_mean")
        )
        with pytest.raises(FeatkitError, match="holds 3; extract again with --layers 4"):
            store.features("cls4")
        with pytest.raises(FeatkitError, match="feature kind: expected"):
            store.features("cls0")
    with pytest.raises(FeatkitError, match="layers: expected 1 to 3"):
        extract(data, backbone, tmp_path / "t.h5", ExtractSettings(layers=4))
    with pytest.raises(FeatkitError, match="layers: expected a positive integer"):
        extract(data, backbone, tmp_path / "t.h5", ExtractSettings(layers=0))


def test_extending_keeps_the_layers_and_refuses_another_count(
    backbone: Backbone, tmp_path: Path
) -> None:
    folder = digits_folder(tmp_path / "d", per_class=1)
    first, later = sorted(folder.rglob("*.png"))[:6], sorted(folder.rglob("*.png"))[6:]
    aside = tmp_path / "aside"
    for path in later:  # hidden for the first run, back for the second
        (aside / path.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
        path.rename(aside / path.relative_to(folder))
    out = tmp_path / "grown.h5"
    extract(discover(folder), backbone, out, SETTINGS)
    for path in later:
        (aside / path.relative_to(folder)).rename(path)
    report = extract(discover(folder), backbone, out, SETTINGS)
    assert report.extracted == len(later) and len(first) == 6
    extract(discover(folder), backbone, tmp_path / "fresh.h5", SETTINGS)
    with open_store(out) as grown, open_store(tmp_path / "fresh.h5") as fresh:
        np.testing.assert_allclose(grown.features("cls3"), fresh.features("cls3"), atol=1e-5)
    with pytest.raises(FingerprintMismatchError, match="layers: 3 -> 2"):
        extract(discover(folder), backbone, out, ExtractSettings(precision="fp32", layers=2))
    plain = tmp_path / "plain.h5"
    extract(discover(folder), backbone, plain, ExtractSettings(precision="fp32", workers=0))
    with open_store(plain) as store:  # --layers 1 writes what earlier versions wrote
        assert "layers" not in store.fingerprint and store.feature_kinds == ("cls", "patch_mean")
        with pytest.raises(FeatkitError, match="extract again with --layers 2"):
            store.features("cls2")


def test_cli_extract_layers_then_probe_cls4(tmp_path: Path) -> None:
    runner = CliRunner()
    data = digits_folder(tmp_path / "data", per_class=2)
    ws = tmp_path / "ws"
    model = ["--model", "timm:vit_tiny_patch16_224", "--random-init", "--image-size", "32"]
    result = runner.invoke(
        app, ["extract", str(data), *model, "--layers", "4", "--precision", "fp32", "-w", str(ws)]
    )
    assert result.exit_code == 0, result.output
    probe = ["probe", "-w", str(ws), "--shots", "1", "--protocols", "prototype", "--episodes", "1"]
    result = runner.invoke(app, [*probe, "--feature", "cls4,cls4+avgpool"])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(ws / "results" / "results.csv")
    assert set(rows["feature"]) == {"cls4", "cls4+avgpool"}
    result = runner.invoke(app, [*probe, "--feature", "cls5"])
    assert result.exit_code == 2 and "--layers 5" in result.stderr, result.output
    result = runner.invoke(app, [*probe, "--feature", "cls4+pool"])
    assert result.exit_code == 2 and "cls<k>+avgpool" in result.stderr, result.output
    result = runner.invoke(app, ["extract", str(data), *model, "--layers", "0", "-w", str(ws)])
    assert result.exit_code == 2 and "--layers: expected a positive" in result.stderr
    result = runner.invoke(app, ["extract", str(data), *model, "--layers", "13", "-w", str(ws)])
    assert result.exit_code == 2 and "--layers: expected 1 to 12" in result.stderr
    assert "extracting" not in result.output  # refused before anything starts
