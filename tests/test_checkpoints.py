"""Weight files: timm vs official DINO / DINOv2 / DINOv3 layouts give identical features."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from featkit.backbones import Backbone, checkpoints, create_backbone
from featkit.errors import FeatkitError

TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}
X = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
X16 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _source(arch: str, size: int, seed: int = 0, **extra: object) -> Backbone:
    """A random tiny backbone whose weights the tests write in various layouts."""
    torch.manual_seed(seed)
    b = create_backbone(arch, pretrained=False, image_size=size, model_kwargs={**TINY, **extra})
    with torch.no_grad():
        for name, p in b.model.named_parameters():
            if "gamma" in name:  # layer scale at 1e-5 would hide most differences
                p.uniform_(0.5, 1.5)
            elif name.endswith("_token"):  # init std 1e-6 would amplify rounding
                p.normal_()
    return b


def _features(b: Backbone, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = b(x)
    return out.cls, out.patches


def _load(arch: str, size: int, path: Path, **extra: object) -> Backbone:
    return create_backbone(arch, weights=path, image_size=size, model_kwargs={**TINY, **extra})


def _assert_same(a: Backbone, b: Backbone, x: torch.Tensor) -> None:
    for fa, fb in zip(_features(a, x), _features(b, x), strict=True):
        torch.testing.assert_close(fa, fb, atol=1e-5, rtol=1e-5)


def _official_dinov2(timm_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm → the DINOv2 release layout (the inverse of the documented timm conversion)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in timm_state.items():
        k = re.sub(r"^blocks\.(\d+)\.", r"blocks.0.\1.", k)  # block_chunks=1 training layout
        k = re.sub(r"(mlp\.)fc1\.", r"\1w12.", k) if "mlp.fc1" in k and _swiglu(timm_state) else k
        k = re.sub(r"(mlp\.)fc2\.", r"\1w3.", k) if "mlp.fc2" in k and _swiglu(timm_state) else k
        out[k] = v.clone()
    d = timm_state["cls_token"].shape[-1]
    out["mask_token"] = torch.zeros(1, d)
    if "reg_token" in out:
        # Official: pos_embed covers CLS too; timm folded CLS's position into cls_token.
        cls_pos = torch.randn(1, 1, d)
        out["register_tokens"] = out.pop("reg_token")
        out["cls_token"] = timm_state["cls_token"] - cls_pos
        out["pos_embed"] = torch.cat([cls_pos, timm_state["pos_embed"]], dim=1)
    return out


def _swiglu(state: dict[str, torch.Tensor]) -> bool:
    w1, w2 = state["blocks.0.mlp.fc1.weight"], state["blocks.0.mlp.fc2.weight"]
    return bool(w1.shape[0] == 2 * w2.shape[1])  # packed gate + value


@pytest.mark.parametrize(
    ("arch", "extra"),
    [("timm:vit_small_patch14_reg4_dinov2", {}), ("timm:vit_giant_patch14_dinov2", {})],
)
def test_official_dinov2_layout_matches_timm_layout(
    tmp_path: Path, arch: str, extra: dict[str, object]
) -> None:
    src = _source(arch, 28, **extra)
    state = src.model.state_dict()
    torch.save(state, tmp_path / "timm.pth")
    official = _official_dinov2(state)
    assert "mask_token" in official and any(k.startswith("blocks.0.1.") for k in official)
    torch.save(official, tmp_path / "official.pth")

    a = _load(arch, 28, tmp_path / "timm.pth", **extra)
    b = _load(arch, 28, tmp_path / "official.pth", **extra)
    _assert_same(src, a, X)
    _assert_same(a, b, X)
    assert a.weights_sha256 == hashlib.sha256((tmp_path / "timm.pth").read_bytes()).hexdigest()
    assert a.weights_sha256 != b.weights_sha256


def test_dino_v1_training_checkpoint_uses_the_teacher(tmp_path: Path) -> None:
    teacher = _source("timm:vit_small_patch16_224", 32, seed=0)
    student = _source("timm:vit_small_patch16_224", 32, seed=1)

    def wrap(b: Backbone) -> dict[str, torch.Tensor]:
        state = {f"module.backbone.{k}": v for k, v in b.model.state_dict().items()}
        state["module.head.mlp.0.weight"] = torch.randn(8, 32)  # DINO projection head
        state["module.head.last_layer.weight_v"] = torch.randn(16, 8)
        return state

    ckpt = {"teacher": wrap(teacher), "student": wrap(student), "epoch": 3, "args": {"lr": 0.1}}
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    loaded = _load("timm:vit_small_patch16_224", 32, tmp_path / "checkpoint.pth")
    _assert_same(teacher, loaded, X16)


def test_safetensors_and_pth_give_identical_features(tmp_path: Path) -> None:
    src = _source("timm:vit_small_patch16_224", 32)
    state = {k: v.contiguous() for k, v in src.model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": state}, tmp_path / "w.pt")
    a = _load("timm:vit_small_patch16_224", 32, tmp_path / "w.safetensors")
    b = _load("timm:vit_small_patch16_224", 32, tmp_path / "w.pt")
    _assert_same(src, a, X16)
    _assert_same(a, b, X16)


def _official_dinov3(
    timm_state: dict[str, torch.Tensor], qkv_bias: bool
) -> dict[str, torch.Tensor]:
    """timm Eva → the DINOv3 release layout."""
    out: dict[str, torch.Tensor] = {}
    for k, v in timm_state.items():
        k = k.replace("reg_token", "storage_tokens")
        k = k.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        if k.endswith("attn.q_bias"):
            v_bias = timm_state[k.replace("q_bias", "v_bias")]
            out[k.replace("q_bias", "qkv.bias")] = torch.cat([v, torch.zeros_like(v), v_bias])
            continue
        if k.endswith("attn.v_bias"):
            continue
        out[k] = v.clone()
    d = timm_state["cls_token"].shape[-1]
    out["mask_token"] = torch.zeros(1, d)
    out["rope_embed.periods"] = torch.rand(d // 8)
    for i in range(TINY["depth"]):
        out[f"blocks.{i}.attn.qkv.bias_mask"] = torch.ones(3 * d)
        if not qkv_bias:  # distilled models ship all-zero biases timm does not build
            out[f"blocks.{i}.attn.qkv.bias"] = torch.zeros(3 * d)
    return out


@pytest.mark.parametrize(
    ("src_arch", "arch"),
    [
        ("dinov3_vits16", "dinov3_vits16"),  # official architecture: q/v biases kept
        ("timm:vit_small_patch16_dinov3", "dinov3_vits16"),  # all-zero biases in the file
        ("timm:vit_small_patch16_dinov3_qkvb", "timm:vit_small_patch16_dinov3_qkvb"),
    ],
)
def test_official_dinov3_layout_loads(tmp_path: Path, src_arch: str, arch: str) -> None:
    src = _source(src_arch, 32)
    qkv_bias = any(k.endswith("q_bias") for k in src.model.state_dict())
    assert qkv_bias == (src_arch != "timm:vit_small_patch16_dinov3")
    if qkv_bias:
        with torch.no_grad():
            for name, p in src.model.named_parameters():
                if name.endswith(("q_bias", "v_bias")):
                    p.normal_()
    official = _official_dinov3(src.model.state_dict(), qkv_bias)
    torch.save({"model": official}, tmp_path / "dinov3.pth")
    loaded = _load(arch, 32, tmp_path / "dinov3.pth")
    # The hub name builds the biases whenever the file has them, even all-zero ones.
    assert any(k.endswith("q_bias") for k in loaded.model.state_dict())
    _assert_same(src, loaded, X16)


def test_non_zero_dinov3_biases_are_never_dropped(tmp_path: Path) -> None:
    src = _source("dinov3_vits16", 32)
    with torch.no_grad():
        for name, p in src.model.named_parameters():
            if name.endswith("v_bias"):
                p.normal_()
    torch.save(_official_dinov3(src.model.state_dict(), True), tmp_path / "biased.pth")
    with pytest.raises(FeatkitError, match=r"non-zero q/v biases .* use the DINOv3 hub name"):
        _load("timm:vit_small_patch16_dinov3", 32, tmp_path / "biased.pth")


def test_mismatched_file_names_the_file_and_keys(tmp_path: Path) -> None:
    src = _source("timm:vit_small_patch16_224", 32)
    torch.save(src.model.state_dict(), tmp_path / "deep.pth")
    with pytest.raises(FeatkitError) as err:
        _load("timm:vit_small_patch16_224", 32, tmp_path / "deep.pth", depth=1)
    msg = str(err.value)
    assert "\n" not in msg and "deep.pth" in msg and "unexpected keys blocks.1." in msg
    with pytest.raises(
        FeatkitError, match=r"wrong shapes .*cls_token \(1, 1, 32\) vs \(1, 1, 48\)"
    ):
        _load("timm:vit_small_patch16_224", 32, tmp_path / "deep.pth", embed_dim=48)


def test_position_embeddings_are_resampled_to_the_image_size(tmp_path: Path) -> None:
    src = _source("timm:vit_small_patch14_reg4_dinov2", 28)  # 2x2 grid
    torch.save(_official_dinov2(src.model.state_dict()), tmp_path / "official.pth")
    big = _load("timm:vit_small_patch14_reg4_dinov2", 56, tmp_path / "official.pth")
    assert big.model.pos_embed.shape == (1, 16, 32)
    cls, patches = _features(big, torch.randn(1, 3, 56, 56))
    assert cls.shape == (1, 32) and patches.shape == (1, 4, 4, 32)
    # Bicubic resampling of a 2x2 grid to 4x4 keeps the mean of each channel close.
    torch.testing.assert_close(
        big.model.pos_embed.mean(1), src.model.pos_embed.mean(1), atol=0.2, rtol=0
    )


def test_architecture_kwargs_from_safetensors_metadata(tmp_path: Path) -> None:
    src = _source("timm:vit_small_patch16_224", 32)
    checkpoints.save_safetensors(src.model, tmp_path / "tiny.safetensors", model_kwargs=TINY)
    assert checkpoints.read_metadata(tmp_path / "tiny.safetensors") == {
        checkpoints.MODEL_KWARGS_KEY: json.dumps(TINY)
    }
    assert not list(tmp_path.glob(".*tmp"))
    loaded = create_backbone(
        "timm:vit_small_patch16_224", weights=tmp_path / "tiny.safetensors", image_size=32
    )
    assert len(loaded.blocks) == 2 and loaded.embed_dim == 32
    _assert_same(src, loaded, X16)


def test_bad_files_are_user_errors(tmp_path: Path) -> None:
    arch = "timm:vit_small_patch16_224"
    with pytest.raises(FeatkitError, match="does not exist"):
        _load(arch, 32, tmp_path / "missing.pth")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(FeatkitError, match=r"suffix '\.onnx'"):
        _load(arch, 32, tmp_path / "w.onnx")
    (tmp_path / "junk.pth").write_bytes(b"not a zip file at all")
    with pytest.raises(FeatkitError, match=r"junk\.pth could not be read"):
        _load(arch, 32, tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad}")
    with pytest.raises(FeatkitError, match=r"not a readable \.safetensors"):
        _load(arch, 32, tmp_path / "junk.safetensors")
    torch.save({"epoch": 3, "args": "lr=0.1"}, tmp_path / "empty.pth")
    with pytest.raises(FeatkitError, match="no tensors found"):
        _load(arch, 32, tmp_path / "empty.pth")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unpickling_code_is_refused(tmp_path: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    with (tmp_path / "evil.pth").open("wb") as fh:
        pickle.dump({"x": Evil()}, fh)
    with pytest.raises(FeatkitError, match="weights-only"):
        _load("timm:vit_small_patch16_224", 32, tmp_path / "evil.pth")


def test_unwrap_prefers_teacher_and_strips_prefixes() -> None:
    t, s = torch.ones(1), torch.zeros(1)
    state = {
        "_orig_mod.teacher.backbone.norm.weight": t,
        "_orig_mod.student.backbone.norm.weight": s,
        "_orig_mod.teacher.dino_head.mlp.weight": t,
    }
    assert checkpoints.unwrap_state_dict(state) == {"norm.weight": t}
    assert checkpoints.unwrap_state_dict({"model": {"module.head.weight": t, "module.x": s}}) == {
        "x": s
    }
    with pytest.raises(FeatkitError, match="expected a state dict"):
        checkpoints.unwrap_state_dict([t])
