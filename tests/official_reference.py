"""An independent re-implementation of the official DINO v1 / DINOv2 / DINOv3 forward.

Written from the papers and from reading facebookresearch/dino (``vision_transformer.py``),
dinov2 (``models/vision_transformer.py``, ``hub/backbones.py``) and dinov3
(``models/vision_transformer.py``, ``layers/``), not from featkit or timm: plain tensor
maths on a state dict in the *released* key layout. The position-embedding resampling is
spelled out as interpolation matrices (no ``F.interpolate``), so a test comparing featkit
with this module checks the rule itself, not that both call the same function the same way.

Used by tests/test_official_parity.py and benchmarks/official_parity.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# family -> (position rule, final/block LayerNorm eps)
FAMILIES = {
    "dino": ("offset", 1e-6),  # DINO v1
    "dinov2": ("offset", 1e-6),
    "dinov2_reg": ("antialias", 1e-6),
    "dinov3": ("rope", 1e-5),  # "layernormbf16" in the DINOv3 hub code is eps=1e-5
}
ROPE_BASE = 100.0  # DINOv3 hub: pos_embed_rope_base=100, normalize_coords="separate"


# --------------------------------------------------------------------------- resampling


def _keys_cubic(s: Tensor, a: float) -> Tensor:
    """Keys' cubic convolution kernel at distances ``s``."""
    s = s.abs()
    near = ((a + 2) * s - (a + 3)) * s * s + 1
    far = ((a * s - 5 * a) * s + 8 * a) * s - 4 * a
    return torch.where(s <= 1, near, torch.where(s < 2, far, torch.zeros_like(s)))


def cubic_matrix(n_in: int, n_out: int, step: float) -> Tensor:
    """``[n_out, n_in]`` weights of plain bicubic resampling (a = -0.75, edge clamped).

    ``step`` is the input distance between output samples: ``n_in / n_out`` for a target
    size, ``1 / scale_factor`` when a scale factor is given (the DINO +0.1 rule).
    """
    out = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        x = (i + 0.5) * step - 0.5  # half-pixel centres
        base = math.floor(x)
        for tap in range(base - 1, base + 3):
            weight = _keys_cubic(torch.tensor(x - tap, dtype=torch.float64), -0.75)
            out[i, min(max(tap, 0), n_in - 1)] += weight
    return out


def antialias_cubic_matrix(n_in: int, n_out: int) -> Tensor:
    """``[n_out, n_in]`` weights of antialiased bicubic resampling to a size (as PIL does:
    a = -0.5, the kernel stretched by the shrink factor, weights normalised per output)."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    out = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo = max(int(centre - 2 * stretch + 0.5), 0)
        hi = min(int(centre + 2 * stretch + 0.5), n_in)
        taps = torch.arange(lo, hi, dtype=torch.float64)
        weights = _keys_cubic((taps - centre + 0.5) / stretch, -0.5)
        out[i, lo:hi] = weights / weights.sum()
    return out


def resample(patch_pos: Tensor, grid: tuple[int, int], rule: str) -> Tensor:
    """Official resampling of a stored ``[M*M, D]`` grid to ``grid`` → ``[h*w, D]``."""
    side = math.isqrt(patch_pos.shape[0])
    h, w = grid
    if (h, w) == (side, side):
        return patch_pos  # both families return the stored embeddings untouched
    if rule == "offset":  # scale factor (n + 0.1) / M, no antialiasing
        rows = cubic_matrix(side, h, side / (h + 0.1))
        cols = cubic_matrix(side, w, side / (w + 0.1))
    elif rule == "antialias":
        rows, cols = antialias_cubic_matrix(side, h), antialias_cubic_matrix(side, w)
    else:
        raise ValueError(rule)
    square = patch_pos.double().reshape(side, side, -1)
    out = torch.einsum("ia,abd,jb->ijd", rows, square, cols)
    return out.reshape(h * w, -1).to(patch_pos.dtype)


# --------------------------------------------------------------------------- forward


def _ln(x: Tensor, state: dict[str, Tensor], key: str, eps: float) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], state[f"{key}.weight"], state[f"{key}.bias"], eps)


def _lin(x: Tensor, state: dict[str, Tensor], key: str, bias: Tensor | None = None) -> Tensor:
    b = state.get(f"{key}.bias") if bias is None else bias
    y = x @ state[f"{key}.weight"].T
    return y if b is None else y + b


def _rope_angles(h: int, w: int, head_dim: int) -> Tensor:
    """``[h*w, head_dim/2]``: angle of each rotated pair; first half rows, second columns."""
    k = torch.arange(head_dim // 4, dtype=torch.float64)
    periods = ROPE_BASE ** (4 * k / head_dim)
    ys = 2 * (torch.arange(h, dtype=torch.float64) + 0.5) / h - 1  # each axis to [-1, 1]
    xs = 2 * (torch.arange(w, dtype=torch.float64) + 0.5) / w - 1
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    by_row = 2 * math.pi * y.reshape(-1, 1) / periods
    by_col = 2 * math.pi * x.reshape(-1, 1) / periods
    return torch.cat([by_row, by_col], dim=1)


def _rotate(t: Tensor, angles: Tensor) -> Tensor:
    """Rotate channel pairs (a, a + d/2) of ``t`` ``[..., n, d]`` by ``angles`` ``[n, d/2]``."""
    half = t.shape[-1] // 2
    z = torch.complex(t[..., :half].double(), t[..., half:].double())
    z = z * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([z.real, z.imag], dim=-1).to(t.dtype)


def _attention(
    x: Tensor, state: dict[str, Tensor], key: str, heads: int, rope: Tensor | None
) -> Tensor:
    b, n, d = x.shape
    bias = state.get(f"{key}.qkv.bias")
    mask = state.get(f"{key}.qkv.bias_mask")
    if bias is not None and mask is not None:
        bias = bias * mask  # DINOv3 masks the k bias
    qkv = _lin(x, state, f"{key}.qkv", bias).reshape(b, n, 3, heads, d // heads)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [b, heads, n, dh]
    if rope is not None:  # patches only; CLS and storage tokens are not rotated
        first = n - rope.shape[0]
        q = torch.cat([q[:, :, :first], _rotate(q[:, :, first:], rope)], dim=2)
        k = torch.cat([k[:, :, :first], _rotate(k[:, :, first:], rope)], dim=2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, n, d)
    return _lin(out, state, f"{key}.proj")


def _mlp(x: Tensor, state: dict[str, Tensor], key: str) -> Tensor:
    if f"{key}.w12.weight" in state:  # DINOv2 ViT-g: packed SwiGLU
        gate, value = _lin(x, state, f"{key}.w12").chunk(2, dim=-1)
        return _lin(F.silu(gate) * value, state, f"{key}.w3")
    if f"{key}.w1.weight" in state:  # DINOv3 SwiGLU
        hidden = F.silu(_lin(x, state, f"{key}.w1")) * _lin(x, state, f"{key}.w2")
        return _lin(hidden, state, f"{key}.w3")
    return _lin(F.gelu(_lin(x, state, f"{key}.fc1")), state, f"{key}.fc2")


def forward_tokens(state: dict[str, Tensor], family: str, images: Tensor, heads: int) -> Tensor:
    """All tokens after the final norm, ``[B, 1 + registers + h*w, D]``, official order."""
    rule, eps = FAMILIES[family]
    weight = state["patch_embed.proj.weight"]
    patch = weight.shape[-1]
    grid = F.conv2d(images, weight, state["patch_embed.proj.bias"], stride=patch)
    b, d, h, w = grid.shape
    patches = grid.flatten(2).transpose(1, 2)
    cls = state["cls_token"].expand(b, -1, -1)
    rope = None
    if family == "dinov3":
        storage = state["storage_tokens"].expand(b, -1, -1)
        x = torch.cat([cls, storage, patches], dim=1)
        rope = _rope_angles(h, w, d // heads).to(images.dtype)
    else:
        pos = state["pos_embed"][0]
        x = torch.cat([cls + pos[:1], patches + resample(pos[1:], (h, w), rule)], dim=1)
        if "register_tokens" in state:  # inserted after the position embeddings
            regs = state["register_tokens"].expand(b, -1, -1)
            x = torch.cat([x[:, :1], regs, x[:, 1:]], dim=1)
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(depth):
        key = f"blocks.{i}"
        attn = _attention(_ln(x, state, f"{key}.norm1", eps), state, f"{key}.attn", heads, rope)
        x = x + attn * state.get(f"{key}.ls1.gamma", 1.0)  # DINO v1 has no LayerScale
        mlp = _mlp(_ln(x, state, f"{key}.norm2", eps), state, f"{key}.mlp")
        x = x + mlp * state.get(f"{key}.ls2.gamma", 1.0)
    return _ln(x, state, "norm", eps)


def cls_and_patch_mean(
    state: dict[str, Tensor], family: str, images: Tensor, heads: int, registers: int
) -> tuple[Tensor, Tensor]:
    tokens = forward_tokens(state, family, images, heads)
    return tokens[:, 0], tokens[:, 1 + registers :].mean(1)


# --------------------------------------------------------------------------- weights


def random_official_state(
    family: str,
    timm_state: dict[str, Tensor],
    heads: int,
    seed: int = 0,
    qkv_bias: bool = True,
) -> dict[str, Tensor]:
    """Random weights in the *released* layout of ``family``, shaped like a timm model.

    Every parameter is perturbed (LayerNorm affine, LayerScale, attention biases
    including the masked k part, tokens); position embeddings are white noise, the
    worst case for resampling. ``qkv_bias``: DINOv3 attention biases, as the official
    models other than the 7B have them (added when the timm model has none).
    """
    gen = torch.Generator().manual_seed(seed)

    def noise(shape: torch.Size, scale: float = 1.0, shift: float = 0.0) -> Tensor:
        return torch.randn(shape, generator=gen) * scale + shift

    fc1, fc2 = timm_state.get("blocks.0.mlp.fc1.weight"), timm_state["blocks.0.mlp.fc2.weight"]
    packed = fc1 is not None and fc1.shape[0] == 2 * fc2.shape[1]  # gate and value in one
    split = "blocks.0.mlp.fc1_g.weight" in timm_state
    out: dict[str, Tensor] = {}
    for key, ref in timm_state.items():
        if key.endswith((".k_bias", "rope.periods")) or ref.dtype != torch.float32:
            continue
        key = _released_key(family, key, packed, split)
        if key.endswith(".weight") and ref.ndim >= 2:
            out[key] = noise(ref.shape, ref[0].numel() ** -0.5)
        elif key.endswith(("norm1.weight", "norm2.weight")) or key == "norm.weight":
            out[key] = noise(ref.shape, 0.2, 1.0)
        elif key.endswith(".gamma"):
            out[key] = torch.rand(ref.shape, generator=gen) + 0.5
        else:
            out[key] = noise(ref.shape, 0.1 if key.endswith("bias") else 1.0)
    dim = out["cls_token"].shape[-1]
    if family != "dino":  # DINOv2/v3 files carry their pretraining mask token
        out["mask_token"] = noise(torch.Size([1, dim]))
    if family == "dinov2_reg":  # the released file keeps a CLS slot in pos_embed
        out["pos_embed"] = torch.cat([noise(torch.Size([1, 1, dim])), out["pos_embed"]], dim=1)
    if family == "dinov3":
        out["mask_token"] = torch.zeros(1, dim)  # added to CLS as 0 * mask_token
        k = torch.arange((dim // heads) // 4, dtype=torch.float32)
        out["rope_embed.periods"] = ROPE_BASE ** (4 * k / (dim // heads))
        for i in range(1 + max(int(k.split(".")[1]) for k in out if k.startswith("blocks."))):
            q_bias = out.pop(f"blocks.{i}.attn.q_bias", None)
            v_bias = out.pop(f"blocks.{i}.attn.v_bias", None)
            if not qkv_bias:
                continue
            if q_bias is None or v_bias is None:
                q_bias, v_bias = noise(torch.Size([dim]), 0.1), noise(torch.Size([dim]), 0.1)
            k_bias = noise(q_bias.shape, 0.1)  # masked: must not change anything
            out[f"blocks.{i}.attn.qkv.bias"] = torch.cat([q_bias, k_bias, v_bias])
            ones = torch.ones_like(q_bias)
            out[f"blocks.{i}.attn.qkv.bias_mask"] = torch.cat([ones, 0 * ones, ones])
    return out


def _released_key(family: str, key: str, packed_swiglu: bool, split_swiglu: bool) -> str:
    """A timm key of this family's model → the official release's name for it."""
    if family == "dinov2_reg":
        key = key.replace("reg_token", "register_tokens")
    if packed_swiglu:  # DINOv2 ViT-g
        key = key.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.")
    if family == "dinov3":
        key = key.replace("reg_token", "storage_tokens")
        key = key.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
    if split_swiglu:  # DINOv3 S+, H+, 7B
        key = key.replace("mlp.fc1_g.", "mlp.w1.").replace("mlp.fc1_x.", "mlp.w2.")
        key = key.replace("mlp.fc2.", "mlp.w3.")
    return key
