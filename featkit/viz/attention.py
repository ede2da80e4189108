"""DINO's last-block CLS attention per head, recomputed exactly, and its masks.

Fused attention (``scaled_dot_product_attention``) never materialises the attention
weights, so they are recomputed here for the last block only: a pre-hook on the last
attention module captures its input (already through the block's ``norm1``) and, for
DINOv3, its rotary embedding; the CLS query is then scored against every key exactly
as the model does (q/k norms, RoPE on the patch tokens, ``softmax(q·kᵀ·scale)``).

Supported: timm ``VisionTransformer`` (DINO v1, DINOv2, registers), timm ``Eva``
(DINOv3) and transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel`` /
``DINOv3ViTModel`` / ``ViTModel``. Anything else is a :class:`FeatkitError`.

The CLS row sums to one over *all* keys (CLS and registers included); maps show only
the patch part, so registers never appear in a picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from featkit.errors import FeatkitError

DEFAULT_THRESHOLD = 0.6  # DINO's masks keep the patches holding 60% of the attention mass


@dataclass
class AttentionMaps:
    """The last block's CLS attention and the final patch features of a batch."""

    cls_attention: Tensor  # [B, heads, N] CLS row over all N tokens; each row sums to 1
    num_prefix_tokens: int  # CLS + registers, at the front of the sequence
    grid: tuple[int, int]  # (h, w) patches
    patch_tokens: Tensor  # [B, h, w, D] after the final norm, registers excluded
    patch_size: int

    def patch_attention(self) -> Tensor:
        """[B, heads, h, w]: the CLS→patch part of the row (CLS and registers left out)."""
        b, heads, _ = self.cls_attention.shape
        return self.cls_attention[:, :, self.num_prefix_tokens :].reshape(b, heads, *self.grid)


# ---------------------------------------------------------------------------------------
# Adapters: where the last attention lives and how its queries and keys are formed.


class _Adapter:
    """One model family: runs the forward pass and rebuilds (q, k) of the last block."""

    def __init__(self, model: nn.Module) -> None:
        self.model: Any = model  # duck-typed: timm and transformers classes share no base

    def attention_module(self) -> Any:
        raise NotImplementedError

    def forward_tokens(self, images: Tensor) -> Tensor:
        """[B, N, D] tokens after the final norm."""
        raise NotImplementedError

    def queries_keys(self, x: Tensor, kwargs: dict[str, Any]) -> tuple[Tensor, Tensor, float]:
        """(q [B, H, N, d], k [B, H, N, d], scale) from the attention module's input."""
        raise NotImplementedError

    num_prefix_tokens: int
    patch_size: int


class _TimmAdapter(_Adapter):
    """timm VisionTransformer (Attention / AttentionRope) and Eva (DINOv3)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.num_prefix_tokens = int(self.model.num_prefix_tokens)
        patch = self.model.patch_embed.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)

    def attention_module(self) -> Any:
        blocks = self.model.blocks
        return blocks[-1].attn

    def forward_tokens(self, images: Tensor) -> Tensor:
        return self.model.forward_features(images)

    def queries_keys(self, x: Tensor, kwargs: dict[str, Any]) -> tuple[Tensor, Tensor, float]:
        attn = self.attention_module()
        b, n, _ = x.shape
        heads = int(attn.num_heads)
        if getattr(attn, "qkv", None) is not None:
            qkv = attn.qkv(x)
            if getattr(attn, "q_bias", None) is not None:
                # Eva keeps q/v biases outside the fused linear (k has a zero bias).
                qkv = qkv + torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
            qkv = qkv.reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
            q, k = qkv[0], qkv[1]
        elif getattr(attn, "q_proj", None) is not None:
            q = attn.q_proj(x).reshape(b, n, heads, -1).transpose(1, 2)
            k = attn.k_proj(x).reshape(b, n, heads, -1).transpose(1, 2)
        else:
            raise FeatkitError(
                f"attention maps: expected a timm attention with qkv or q_proj/k_proj, "
                f"got {type(attn).__name__}"
            )
        q_norm = getattr(attn, "q_norm", None)
        k_norm = getattr(attn, "k_norm", None)
        q = q_norm(q) if q_norm is not None else q
        k = k_norm(k) if k_norm is not None else k
        rope = kwargs.get("rope")
        if rope is not None:
            from timm.layers import apply_rot_embed_cat

            # RoPE rotates patch tokens only; CLS and registers keep their vectors.
            npt = int(getattr(attn, "num_prefix_tokens", self.num_prefix_tokens))
            half = bool(getattr(attn, "rotate_half", False))
            q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], 2)
            k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], 2)
        return q, k, float(attn.scale)


def _rotate_half(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class _HFAdapter(_Adapter):
    """transformers Dinov2 / Dinov2WithRegisters / DINOv3ViT / ViT models."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        config: Any = model.config
        self.num_prefix_tokens = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        patch = config.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        self.num_heads = int(config.num_attention_heads)

    @staticmethod
    def layers(model: nn.Module) -> nn.ModuleList | None:
        encoder = getattr(model, "encoder", None) or getattr(model, "model", None)
        layers = getattr(encoder, "layer", None)
        return layers if isinstance(layers, nn.ModuleList) and len(layers) else None

    def attention_module(self) -> Any:
        layers = self.layers(self.model)
        assert layers is not None  # checked by _adapter_for
        return layers[-1].attention

    def forward_tokens(self, images: Tensor) -> Tensor:
        return self.model(pixel_values=images).last_hidden_state

    def queries_keys(self, x: Tensor, kwargs: dict[str, Any]) -> tuple[Tensor, Tensor, float]:
        attn = self.attention_module()
        b, n, _ = x.shape
        q = attn.q_proj(x).reshape(b, n, self.num_heads, -1).transpose(1, 2)
        k = attn.k_proj(x).reshape(b, n, self.num_heads, -1).transpose(1, 2)
        position = kwargs.get("position_embeddings")
        if position is not None:
            # DINOv3: rotate-half RoPE on the trailing patch tokens only.
            cos, sin = position
            npt = n - cos.shape[-2]
            q = torch.cat(
                [q[:, :, :npt], q[:, :, npt:] * cos + _rotate_half(q[:, :, npt:]) * sin], 2
            )
            k = torch.cat(
                [k[:, :, :npt], k[:, :, npt:] * cos + _rotate_half(k[:, :, npt:]) * sin], 2
            )
        return q, k, float(q.shape[-1] ** -0.5)


def _adapter_for(model: nn.Module) -> _Adapter:
    blocks: Any = getattr(model, "blocks", None)
    is_timm = blocks is not None and hasattr(model, "forward_features") and len(blocks) > 0
    if is_timm and hasattr(blocks[-1], "attn"):
        return _TimmAdapter(model)
    layers = _HFAdapter.layers(model)
    if hasattr(model, "config") and layers is not None:
        attention = layers[-1].attention
        if hasattr(attention, "q_proj") and hasattr(attention, "k_proj"):
            return _HFAdapter(model)
    raise FeatkitError(
        f"attention maps: expected a timm VisionTransformer/Eva or a transformers "
        f"Dinov2/DINOv3/ViT model, got {type(model).__name__}"
    )


@torch.no_grad()
def compute_attention(model: nn.Module, images: Tensor) -> AttentionMaps:
    """Last-block CLS attention per head and final patch features for ``images`` [B, 3, H, W].

    Runs one ordinary forward pass (fused attention and all) and recomputes the last
    block's CLS attention row from the captured input of its attention module.
    """
    adapter = _adapter_for(model)
    captured: dict[str, Any] = {}

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured["x"] = args[0] if args else kwargs.get("x", kwargs.get("hidden_states"))
        captured["kwargs"] = dict(kwargs)

    handle = adapter.attention_module().register_forward_pre_hook(hook, with_kwargs=True)
    was_training = model.training
    model.eval()
    try:
        tokens = adapter.forward_tokens(images)
    finally:
        handle.remove()
        model.train(was_training)
    if "x" not in captured or captured["x"] is None:
        raise FeatkitError(
            f"attention maps: expected the last attention module of {type(model).__name__} "
            "to run in the forward pass, it did not"
        )
    q, k, scale = adapter.queries_keys(captured["x"], captured["kwargs"])
    # float32 softmax: bf16 logits would not sum to one to 1e-5.
    logits = (q[:, :, :1].float() * scale) @ k.float().transpose(-2, -1)
    cls_attention = logits.softmax(dim=-1)[:, :, 0]  # [B, H, N]

    b, n, d = tokens.shape
    h = images.shape[-2] // adapter.patch_size
    w = images.shape[-1] // adapter.patch_size
    npt = adapter.num_prefix_tokens
    if n - npt != h * w:
        raise FeatkitError(
            f"attention maps: expected {h}x{w} patches plus {npt} CLS/register tokens for an "
            f"image of {images.shape[-2]}x{images.shape[-1]}, got {n} tokens"
        )
    patches = tokens[:, npt:].reshape(b, h, w, d).float()
    return AttentionMaps(cls_attention, npt, (h, w), patches, adapter.patch_size)


# ---------------------------------------------------------------------------------------
# Pure maths on the maps


def attention_masks(attention: Tensor, threshold: float = DEFAULT_THRESHOLD) -> Tensor:
    """DINO masks: per head, the fewest patches holding ``threshold`` of the CLS→patch mass.

    attention: [..., h, w] non-negative; the mass is renormalised over the patches
    (CLS and registers are not part of the picture). Returns a bool tensor of the same
    shape; the kept patches hold at least ``threshold`` of each map's mass.
    """
    if not 0.0 < threshold <= 1.0:
        raise FeatkitError(f"--threshold: expected a fraction in (0, 1], got {threshold}")
    shape = attention.shape
    flat = attention.reshape(-1, shape[-2] * shape[-1]).double()
    flat = flat / flat.sum(dim=-1, keepdim=True).clamp_min(1e-30)
    values, order = flat.sort(dim=-1, descending=True)
    before = values.cumsum(dim=-1) - values  # mass of the patches ranked above each one
    keep_sorted = before < threshold - 1e-12
    keep = torch.zeros_like(keep_sorted)
    keep.scatter_(-1, order, keep_sorted)
    return keep.reshape(shape)
