"""What makes two extractions comparable: the store fingerprint.

A fingerprint is a small JSON object recorded in every store. Resuming or extending a
store is only allowed when the settings that change feature values agree; library
versions are recorded for the record but only warned about, so an upgrade does not
invalidate every store.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from featkit.backbones import Backbone

# Keys whose difference changes feature values: a mismatch refuses to mix rows.
BINDING_KEYS = (
    "model",
    "weights_sha256",
    "preprocessing",
    "image_size",
    "precision",
    "patches",
    "pos_embed",
    "layers",  # CLS tokens of the last n blocks stored (recorded only when n > 1)
    "channels",  # image channels kept (recorded only when pixels keeps 1 for grey data)
)
# Keys recorded for provenance; a difference only logs a warning.
INFO_KEYS = ("featkit_version", "torch", "timm")


def parameters_sha256(module: Any) -> str:
    """SHA-256 over a module's state dict (names, shapes, dtypes and bytes).

    Used when a backbone has no weight file (random init), so that two random
    initialisations are never mistaken for the same weights.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def make_fingerprint(backbone: Backbone, *, precision: str, patches: str) -> dict[str, Any]:
    """The fingerprint of extracting with ``backbone`` at ``precision`` (resolved, not "auto")."""
    import timm
    import torch

    from featkit import __version__

    pre = backbone.preprocessing
    weights = backbone.weights_sha256 or f"params:{parameters_sha256(backbone)}"
    preprocessing: dict[str, Any] = {
        "resize": int(pre.resize),
        "crop": int(pre.crop),
        "interpolation": str(pre.interpolation),
        "mean": [float(v) for v in pre.mean],
        "std": [float(v) for v in pre.std],
    }
    if pre.resize_mode != "shorter":  # recorded only when not the DINO default, so that
        preprocessing["resize_mode"] = pre.resize_mode  # older stores still resume
    fingerprint: dict[str, Any] = {
        "featkit_version": __version__,
        "model": backbone.name,
        "weights_sha256": weights,
        "preprocessing": preprocessing,
        "image_size": int(pre.crop),
        "precision": precision,
        "patches": patches,
        "torch": torch.__version__,
        "timm": timm.__version__,
    }
    rule = getattr(backbone, "pos_embed_rule", "none")
    if rule != "none":  # how position embeddings reached the input size
        fingerprint["pos_embed"] = rule
    return fingerprint


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 24 else text[:21] + "..."


def differences(old: dict[str, Any], new: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """Human-readable ``key: old -> new`` for every key in ``keys`` that differs."""
    out = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    out.append(f"{key}.{sub}: {_short(a.get(sub))} -> {_short(b.get(sub))}")
        else:
            out.append(f"{key}: {_short(a)} -> {_short(b)}")
    return out
