"""Do featkit's hub names compute what the official DINO code computes? The cosine table.

For every hub name and input size, the worst cosine (over a small batch) between
featkit's CLS token and the truth's, and between their patch-token means, fp32.

The truth, in order of preference:

- the official code itself, when a local checkout is given (``--dino``, ``--dinov2``,
  ``--dinov3``: the folder holding ``vision_transformer.py`` / the ``dinov2`` /
  ``dinov3`` package), built with the same config and loaded with the same weights;
- otherwise tests/official_reference.py, an independent re-implementation of the
  official forward written for featkit's tests.

Weights: tiny random networks (depth 2, width 64) in the released key layout, with
white-noise position embeddings (the worst case for resampling), written to a temporary
file and loaded by featkit like any released ``.pth``. ``--checkpoint NAME=FILE`` adds
rows for real release files (full size, slower).

    python benchmarks/official_parity.py
    python benchmarks/official_parity.py --dinov2 ~/src/dinov2 --models 'dinov2_*'
    python benchmarks/official_parity.py --checkpoint dinov2_vits14=dinov2_vits14_pretrain.pth
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# featkit from this checkout, unless PYTHONPATH names another (to measure an older one).
sys.path.append(str(Path(__file__).resolve().parents[1]))
from featkit.backbones import create_backbone


def _load_reference() -> Any:
    """tests/official_reference.py of this checkout, by path (whatever featkit is imported)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tests" / "official_reference.py"
    spec = importlib.util.spec_from_file_location("official_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _load_reference()

# name -> (family, patch, released input size (None: RoPE), heads at full size, DINOv3 q/v bias)
MODELS: dict[str, tuple[str, int, int | None, int, bool]] = {
    "dino_vits16": ("dino", 16, 224, 6, False),
    "dino_vits8": ("dino", 8, 224, 6, False),
    "dino_vitb16": ("dino", 16, 224, 12, False),
    "dino_vitb8": ("dino", 8, 224, 12, False),
    "dinov2_vits14": ("dinov2", 14, 518, 6, False),
    "dinov2_vitb14": ("dinov2", 14, 518, 12, False),
    "dinov2_vitl14": ("dinov2", 14, 518, 16, False),
    "dinov2_vitg14": ("dinov2", 14, 518, 24, False),
    "dinov2_vits14_reg": ("dinov2_reg", 14, 518, 6, False),
    "dinov2_vitb14_reg": ("dinov2_reg", 14, 518, 12, False),
    "dinov2_vitl14_reg": ("dinov2_reg", 14, 518, 16, False),
    "dinov2_vitg14_reg": ("dinov2_reg", 14, 518, 24, False),
    "dinov3_vits16": ("dinov3", 16, None, 6, True),
    "dinov3_vits16plus": ("dinov3", 16, None, 6, True),
    "dinov3_vitb16": ("dinov3", 16, None, 12, True),
    "dinov3_vitl16": ("dinov3", 16, None, 16, True),
    "dinov3_vith16plus": ("dinov3", 16, None, 20, True),
    "dinov3_vit7b16": ("dinov3", 16, None, 32, False),
}
HEADS = 2
WIDTH = 64
REGISTERS = {"dino": 0, "dinov2": 0, "dinov2_reg": 4, "dinov3": 4}


def tiny_kwargs(name: str) -> dict[str, object]:
    kwargs: dict[str, object] = {"depth": 2, "embed_dim": WIDTH, "num_heads": HEADS}
    if "vitg14" in name:  # timm's ViT-g ratio gives an odd SwiGLU width at width 64
        kwargs["mlp_ratio"] = 4.0
    return kwargs


def sizes_for(patch: int, wanted: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Each wanted size rounded to the nearest multiple of the patch (518 -> 512 for /16)."""
    return [(round(h / patch) * patch, round(w / patch) * patch) for h, w in wanted]


# --------------------------------------------------------------------------- official code

Truth = Callable[[dict[str, Tensor], Tensor], tuple[Tensor, Tensor]]


def _import_from(folder: Path, module: str) -> object:
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    import importlib

    return importlib.import_module(module)


def official_truth(name: str, checkouts: dict[str, Path], full: bool) -> Truth | None:
    """A function (state, images) -> (cls, patch mean) running the official model."""
    family, patch, stored, _, qkv_bias = MODELS[name]
    repo = checkouts.get("dinov2" if family == "dinov2_reg" else family)
    if repo is None:
        return None
    if full:
        builder = _official_full(name, family, repo)
    else:
        builder = partial(_official_tiny, name, family, patch, stored, qkv_bias, repo)

    def run(state: dict[str, Tensor], images: Tensor) -> tuple[Tensor, Tensor]:
        model = builder(state).eval()
        model.load_state_dict(state, strict=True)
        with torch.no_grad():
            if family == "dino":
                x = model.prepare_tokens(images)
                for blk in model.blocks:
                    x = blk(x)
                x = model.norm(x)
                return x[:, 0], x[:, 1:].mean(1)
            out = model.forward_features(images)
        return out["x_norm_clstoken"], out["x_norm_patchtokens"].mean(1)

    return run


def _official_tiny(
    name: str,
    family: str,
    patch: int,
    stored: int | None,
    qkv_bias: bool,
    repo: Path,
    state: dict[str, Tensor],
) -> nn.Module:
    hidden = state[
        "blocks.0.mlp.w3.weight" if "blocks.0.mlp.w3.weight" in state else "blocks.0.mlp.fc2.weight"
    ]
    common = {"patch_size": patch, "embed_dim": WIDTH, "depth": 2, "num_heads": HEADS}
    if family == "dino":
        vits = _import_from(repo, "vision_transformer")
        return vits.VisionTransformer(  # type: ignore[attr-defined, no-any-return]
            **common, mlp_ratio=4, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6)
        )
    if family in ("dinov2", "dinov2_reg"):
        vt = _import_from(repo, "dinov2.models.vision_transformer")
        swiglu = "blocks.0.mlp.w12.weight" in state
        return vt.DinoVisionTransformer(  # type: ignore[attr-defined, no-any-return]
            **common,
            img_size=stored,
            # SwiGLU keeps 2/3 of the MLP width: invert that to get the same hidden size.
            mlp_ratio=hidden.shape[1] * (1.5 if swiglu else 1.0) / WIDTH,
            init_values=1.0,
            ffn_layer="swiglufused" if swiglu else "mlp",
            block_chunks=0,
            num_register_tokens=4 if family == "dinov2_reg" else 0,
            interpolate_antialias=family == "dinov2_reg",
            interpolate_offset=0.0 if family == "dinov2_reg" else 0.1,
        )
    vt = _import_from(repo, "dinov3.models.vision_transformer")
    swiglu = "blocks.0.mlp.w1.weight" in state
    return vt.DinoVisionTransformer(  # type: ignore[attr-defined, no-any-return]
        **common,
        img_size=224,
        pos_embed_rope_base=100,
        pos_embed_rope_normalize_coords="separate",
        pos_embed_rope_rescale_coords=2,
        pos_embed_rope_dtype="fp32",
        ffn_ratio=hidden.shape[1] * (1.5 if swiglu else 1.0) / WIDTH,
        qkv_bias=qkv_bias,
        layerscale_init=1.0e-05,
        norm_layer="layernormbf16",
        ffn_layer="swiglu" if swiglu else "mlp",
        n_storage_tokens=4,
        mask_k_bias=True,
    )


def _official_full(name: str, family: str, repo: Path) -> Callable[[dict[str, Tensor]], nn.Module]:
    if family == "dino":
        hub = _import_from(repo, "hubconf")
    elif family == "dinov3":
        hub = _import_from(repo, "dinov3.hub.backbones")
    else:
        hub = _import_from(repo, "dinov2.hub.backbones")
    factory = getattr(hub, name)
    return lambda state: factory(pretrained=False)


# --------------------------------------------------------------------------- measuring


def reference_truth(name: str, heads: int) -> Truth:
    family = MODELS[name][0]
    return lambda state, x: ref.cls_and_patch_mean(state, family, x, heads, REGISTERS[family])


def cosines(
    name: str, weights: Path, state: dict[str, Tensor], truth: Truth, kwargs: dict, sizes: list
) -> list[str]:
    cells = []
    gen = torch.Generator().manual_seed(0)
    for h, w in sizes:
        x = torch.randn(2, 3, h, w, generator=gen)
        # Built per size: older featkit versions fixed the grid at build time.
        backbone = create_backbone(name, weights=weights, image_size=h, model_kwargs=kwargs or None)
        try:
            with torch.no_grad():
                out = backbone(x)
        except (RuntimeError, AssertionError) as err:  # that older featkit, non-square input
            cells.append(f"fails: {str(err).splitlines()[0][:40]}")
            continue
        with torch.no_grad():
            cls, mean = truth(state, x)
        c = F.cosine_similarity(out.cls, cls).min().item()
        m = F.cosine_similarity(out.patches.mean((1, 2)), mean).min().item()
        cells.append(f"{c:.6f} / {m:.6f}")
    return cells


def tiny_row(name: str, truth: Truth, folder: Path, wanted: list) -> tuple[list[str], list]:
    family, patch, stored, _, qkv_bias = MODELS[name]
    kwargs = tiny_kwargs(name)
    shape_src = create_backbone(
        name, pretrained=False, image_size=stored or 224, model_kwargs=kwargs, device="meta"
    )
    shapes = {k: torch.empty(v.shape) for k, v in shape_src.model.state_dict().items()}
    state = ref.random_official_state(family, shapes, HEADS, qkv_bias=qkv_bias)
    path = folder / f"{name}.pth"
    torch.save(state, path)
    sizes = sizes_for(patch, wanted)
    return cosines(name, path, state, truth, kwargs, sizes), sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dino", type=Path, help="checkout of facebookresearch/dino")
    parser.add_argument("--dinov2", type=Path, help="checkout of facebookresearch/dinov2")
    parser.add_argument("--dinov3", type=Path, help="checkout of facebookresearch/dinov3")
    parser.add_argument(
        "--checkpoint", action="append", default=[], metavar="NAME=FILE", help="a released file"
    )
    parser.add_argument("--models", default="*", help="fnmatch pattern over hub names")
    parser.add_argument("--sizes", default="224,112,518,224x336", help="HxW or side, comma list")
    args = parser.parse_args()
    wanted = [(int(s.split("x")[0]), int(s.split("x")[-1])) for s in args.sizes.split(",") if s]
    checkouts = {
        k: v
        for k, v in (("dino", args.dino), ("dinov2", args.dinov2), ("dinov3", args.dinov3))
        if v
    }
    torch.manual_seed(0)

    header = "| hub name | truth | " + " | ".join(f"{h}x{w}" for h, w in wanted) + " |"
    print("CLS cosine / patch-mean cosine, worst of 2 images, fp32 (sizes rounded to the patch)")
    print(header)
    print("|" + "---|" * (2 + len(wanted)))
    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(MODELS):
            if not fnmatch.fnmatchcase(name, args.models):
                continue
            official = official_truth(name, checkouts, full=False)
            truth = official or reference_truth(name, HEADS)
            cells, _ = tiny_row(name, truth, Path(tmp), wanted)
            source = "official code" if official else "test reference"
            print(f"| {name} (tiny, random) | {source} | " + " | ".join(cells) + " |")
    for item in args.checkpoint:
        name, _, file = item.partition("=")
        if name not in MODELS:
            parser.error(f"--checkpoint {item}: expected NAME=FILE with a hub name")
        from featkit.backbones import checkpoints

        state = checkpoints.read_state_dict(Path(file))
        official = official_truth(name, checkouts, full=True)
        truth = official or reference_truth(name, MODELS[name][3])
        cells = cosines(name, Path(file), state, truth, {}, sizes_for(MODELS[name][1], wanted))
        source = "official code" if official else "test reference"
        print(f"| {name} ({Path(file).name}) | {source} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
