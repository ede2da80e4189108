"""Weight files: read them safely, unwrap training containers, convert official layouts.

A checkpoint may be a bare timm state dict, an official DINO / DINOv2 / DINOv3 release
file, or a training checkpoint that wraps one (``teacher``/``student``/``model``/
``state_dict`` entries, ``module.`` and ``backbone.`` prefixes, projection heads). This
module turns any of those into the state dict of the target timm model and loads it
strictly, so a wrong file is a one-line error and never a silently half-loaded model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from featkit.atomic import atomic_path
from featkit.errors import FeatkitError

logger = logging.getLogger("featkit")

StateDict = dict[str, Tensor]

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
# safetensors metadata key under which a checkpoint may record the timm kwargs
# (depth, embed_dim, ...) needed to rebuild its architecture.
MODEL_KWARGS_KEY = "featkit_model_kwargs"

# Containers of training checkpoints, most useful first: DINO evaluates the teacher.
_CONTAINER_KEYS = ("teacher", "model_ema", "model", "state_dict", "module", "student")
# Whole-key prefixes left by DDP, torch.compile and the DINO meta-architecture.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_BRANCH_PREFIXES = ("teacher.", "student.")
_HEAD_PREFIXES = ("head.", "dino_head.", "ibot_head.")
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, streamed so that a 7B checkpoint never sits in memory twice."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_weights_path(path: str | Path) -> Path:
    """The weight file as a Path; FeatkitError when missing or of an unknown type."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FeatkitError(f"weights file {p} does not exist; expected a .pth/.pt/.safetensors")
    if p.suffix.lower() not in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX):
        raise FeatkitError(
            f"weights file {p} has suffix {p.suffix!r}; expected .pth, .pt, .bin or .safetensors"
        )
    return p


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a .safetensors file ({} for other formats)."""
    if path.suffix.lower() != SAFETENSORS_SUFFIX:
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as err:  # safetensors raises its own SafetensorError on bad headers
        raise FeatkitError(
            f"weights file {path} is not a readable .safetensors file: {err}"
        ) from err


def model_kwargs_from_metadata(path: Path) -> dict[str, Any]:
    """Architecture kwargs recorded in the file (``featkit_model_kwargs`` JSON), or {}."""
    raw = read_metadata(path).get(MODEL_KWARGS_KEY)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        raise FeatkitError(
            f"weights file {path}: metadata {MODEL_KWARGS_KEY} is not JSON: {raw[:60]!r}"
        ) from err
    if not isinstance(value, dict):
        raise FeatkitError(f"weights file {path}: metadata {MODEL_KWARGS_KEY} is not an object")
    return value


def save_safetensors(
    model: nn.Module,
    path: str | Path,
    model_kwargs: Mapping[str, Any] | None = None,
    *,
    extra_metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``model``'s state dict as .safetensors, atomically, with its architecture kwargs.

    ``model_kwargs`` (JSON-able: depth, embed_dim, ...) are stored as metadata so that
    ``create_backbone("timm:ARCH", weights=path)`` rebuilds the same architecture;
    ``extra_metadata`` adds more string entries (how the file was made).
    """
    from safetensors.torch import save_file

    target = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = dict(extra_metadata or {})
    if model_kwargs:
        metadata[MODEL_KWARGS_KEY] = json.dumps(dict(model_kwargs), sort_keys=True)
    with atomic_path(target) as tmp:  # a crash leaves the old file or the new one
        save_file(state, str(tmp), metadata=metadata or None)
    return target


def read_checkpoint(path: Path) -> Any:
    """The raw object in a weight file, without executing pickled code."""
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:
            raise FeatkitError(
                f"weights file {path} is not a readable .safetensors file: {err}"
            ) from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError, RuntimeError (zip), EOFError, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FeatkitError(
            f"weights file {path} could not be read as a weights-only torch checkpoint: {first}"
        ) from err


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> StateDict:
    """Find the backbone's tensors inside a training checkpoint.

    Descends into container entries (teacher first), strips DDP/compile prefixes,
    keeps the teacher branch and the ``backbone.`` sub-module when present, and drops
    DINO/iBOT projection heads.
    """
    while isinstance(obj, Mapping) and not _all_tensors(obj.values()):
        inner = next(
            (obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping) and obj[k]),
            None,
        )
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise FeatkitError(f"{source}: expected a state dict of tensors, got {type(obj).__name__}")
    state: StateDict = {k: v for k, v in obj.items() if isinstance(k, str) and torch.is_tensor(v)}
    if not state:
        raise FeatkitError(f"{source}: no tensors found; expected a model state dict")

    for prefix in _WRAPPER_PREFIXES:
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    for prefix in _BRANCH_PREFIXES:  # teacher before student: the first present wins
        if any(k.startswith(prefix) for k in state):
            state = _select(state, prefix)
            break
    if any(k.startswith("backbone.") for k in state):
        state = _select(state, "backbone.")
    return {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}


def to_timm_layout(state: StateDict, model: nn.Module) -> StateDict:
    """Convert official DINO-family layouts to the target timm model's keys.

    DINO v1 releases already use timm's key names. DINOv2 releases differ by the mask
    token, register tokens (timm folds the CLS position embedding into the CLS token
    for register models), chunked blocks and the SwiGLU names of ViT-g. DINOv3 (timm
    ``Eva``) is converted by timm's own filter, which we run last for every model
    because it also resamples position embeddings to the model's image size.
    """
    state = {_CHUNKED_BLOCK.sub(r"blocks.\1.", k): v for k, v in state.items()}
    if "storage_tokens" in state:
        state = _prepare_dinov3(state, model)
    elif "mask_token" in state or "register_tokens" in state:
        state = _convert_dinov2(state, model)
    return _timm_filter(state, model)


def read_state_dict(path: Path) -> StateDict:
    """The backbone tensors of a weight file: read safely, then unwrapped."""
    return unwrap_state_dict(read_checkpoint(path), source=f"weights file {path}")


def load_timm_weights(model: nn.Module, path: Path) -> None:
    """Read, unwrap, convert and strictly load ``path`` into the timm ``model``."""
    load_strict(model, to_timm_layout(read_state_dict(path), model), f"weights file {path}")


def load_strict(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming a few bad keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{label} {_few(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes (file vs model)", wrong),
        )
        if keys
    ]
    if problems:
        raise FeatkitError(
            f"{source} does not fit the model ({type(model).__name__}): " + "; ".join(problems)
        )
    model.load_state_dict(dict(state), strict=True)


# --------------------------------------------------------------------------- helpers


def _all_tensors(values: Iterable[object]) -> bool:
    return all(torch.is_tensor(v) for v in values)


def _select(state: StateDict, prefix: str) -> StateDict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _few(keys: list[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _convert_dinov2(state: StateDict, model: nn.Module) -> StateDict:
    """Official DINOv2 → timm VisionTransformer (the DINOv2 ``hubconf`` release layout)."""
    out = {k: v for k, v in state.items() if k != "mask_token"}  # pretraining only
    if "register_tokens" in out:
        # timm's register models use no_embed_class: the CLS position embedding is
        # added to the CLS token once here, and pos_embed covers patches only.
        pos = out.pop("pos_embed")
        out["reg_token"] = out.pop("register_tokens")
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    renamed: StateDict = {}
    for k, v in out.items():
        # ViT-g's SwiGLU: packed w12 / w3 are timm's SwiGLUPacked fc1 / fc2.
        k = re.sub(r"^(blocks\.\d+\.mlp\.)w12\.", r"\1fc1.", k)
        k = re.sub(r"^(blocks\.\d+\.mlp\.)w3\.", r"\1fc2.", k)
        renamed[k] = v
    return renamed


def _prepare_dinov3(state: StateDict, model: nn.Module) -> StateDict:
    """Check DINOv3 attention biases against the target before timm's filter.

    The official models add q and v biases (the k part is masked); the distilled releases
    carry them all zero. A target built without biases may drop all-zero ones (the same
    maths; timm's filter would otherwise print for every block) but never non-zero ones:
    that would compute another network, so it is an error naming the fix.
    """
    params = dict(model.named_parameters())
    out: StateDict = {}
    for k, v in state.items():
        if k.endswith("attn.qkv.bias") and k.replace("qkv.bias", "q_bias") not in params:
            q, _, v_part = v.chunk(3, dim=-1)  # the k third is masked by the official code
            if torch.count_nonzero(q) or torch.count_nonzero(v_part):
                raise FeatkitError(
                    f"{k} holds non-zero q/v biases but the {type(model).__name__} model has "
                    "no attention bias; use the DINOv3 hub name (dinov3_vits16, ...), which "
                    "keeps them, or a timm name ending in _qkvb"
                )
            continue
        out[k] = v
    return out


def _timm_filter(state: StateDict, model: nn.Module) -> StateDict:
    """Run the ``checkpoint_filter_fn`` of the model's timm module, if it has one."""
    module = sys.modules.get(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is None or not type(model).__module__.startswith("timm."):
        return state
    return dict(filter_fn(state, model))


# --------------------------------------------------------------------------- hub files

_HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")


def hub_weights_file(
    model_name: str, pretrained_cfg: Mapping[str, Any], *, local_files_only: bool = False
) -> Path:
    """Download (or find in the cache) the weight file timm would use for this model.

    Loading then goes through the same path as a local ``--weights`` file, so hub and
    local weights are converted, checked and fingerprinted identically. Without a
    network, or with ``HF_HUB_OFFLINE=1`` (which huggingface_hub honours itself), an
    uncached file becomes a one-line error that says how to pass a local file.
    """
    offline_hint = (
        f"no weights for {model_name} are available offline (not in the Hugging Face or "
        f"torch cache); download them on a machine with a network, or pass a local "
        f"checkpoint with --weights FILE"
    )
    repo = pretrained_cfg.get("hf_hub_id")
    url = pretrained_cfg.get("url")
    if repo:
        return _hf_hub_file(str(repo), model_name, offline_hint, local_files_only)
    if url:
        return _url_file(str(url), offline_hint, local_files_only)
    raise FeatkitError(
        f"{model_name} has no pretrained weights to download; pass --weights FILE "
        "or use random init"
    )


def _hf_hub_file(repo: str, model_name: str, offline_hint: str, local_files_only: bool) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
    )

    for filename in _HUB_FILENAMES:
        try:
            return Path(hf_hub_download(repo, filename, local_files_only=local_files_only))
        except (RemoteEntryNotFoundError, LocalEntryNotFoundError):
            continue  # try the other file name; the cache may hold either
        except GatedRepoError as err:
            raise FeatkitError(
                f"the weights of {model_name} ({repo}) are gated: accept the licence on "
                f"huggingface.co and log in (hf auth login), or pass --weights FILE"
            ) from err
        except OSError as err:  # connection refused, DNS, offline mode, HTTP errors
            raise FeatkitError(offline_hint) from err
    raise FeatkitError(offline_hint)


def _url_file(url: str, offline_hint: str, local_files_only: bool) -> Path:
    import os.path
    from urllib.parse import urlparse

    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if cached.is_file():
        return cached
    if local_files_only:
        raise FeatkitError(offline_hint)
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(cached), progress=False)
    except OSError as err:  # URLError is an OSError
        raise FeatkitError(offline_hint) from err
    return cached
