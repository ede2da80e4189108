"""``hf:`` backbones: DINO-family models from transformers (hub id or local folder).

Supported: ``Dinov2Model``, ``Dinov2WithRegistersModel``, ``DINOv3ViTModel`` and
``ViTModel`` (the DINO v1 ports). All four put the CLS token first, then the register
tokens (when the model has any), then the patches, and apply the final layer norm to
``last_hidden_state``; the tests check both against the models' own outputs.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

import featkit.backbones.checkpoints as checkpoints
from featkit.backbones.base import (
    HUB_IMAGE_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    Preprocessing,
    _check_image_size,
    _triple,
)
from featkit.backbones.registry import TRANSFORMS, register_scheme
from featkit.errors import FeatkitError

logger = logging.getLogger("featkit")

# transformers model_type → whether the model has register tokens.
SUPPORTED_TYPES = ("dinov2", "dinov2_with_registers", "dinov3_vit", "vit")
# Where each model keeps its blocks and final norm (attribute paths), newest layout first.
_BLOCK_PATHS = ("encoder.layer", "model.layer", "layers", "encoder.layers")
_NORM_PATHS = ("layernorm", "norm")
# PIL resample codes used in preprocessor_config.json → torchvision interpolation names.
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


class HFBackbone(Backbone):
    """A transformers DINO-family model behind the :class:`Backbone` interface."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # ViTModel keeps its position embeddings at the config size unless asked;
        # Dinov2 interpolates always and DINOv3 uses RoPE.
        params = inspect.signature(self.model.forward).parameters
        self._forward_kwargs = (
            {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in params else {}
        )

    def tokens(self, images: Tensor) -> Tensor:
        out = self.model(pixel_values=images, **self._forward_kwargs)
        hidden: Tensor = out.last_hidden_state
        return hidden

    @property
    def blocks(self) -> Sequence[nn.Module]:
        found = _first_attr(self.model, _BLOCK_PATHS)
        if not isinstance(found, nn.ModuleList):
            raise FeatkitError(f"backbone {self.name}: cannot find its transformer blocks")
        return cast(Sequence[nn.Module], found)

    @property
    def final_norm(self) -> nn.Module:
        found = _first_attr(self.model, _NORM_PATHS)
        if not isinstance(found, nn.Module):
            raise FeatkitError(f"backbone {self.name}: cannot find its final norm")
        return found


def create_hf_backbone(
    name: str,
    source: str,
    *,
    weights: str | Path | None,
    image_size: int | None,
    pretrained: bool,
    model_kwargs: dict[str, Any] | None,
    device: str | torch.device | None,
    local_files_only: bool,
    transform: str = "processor",
) -> Backbone:
    """Build ``hf:<source>``; see :func:`featkit.backbones.create_backbone`.

    ``transform``: "processor" follows the model's ``preprocessor_config.json`` (resize or
    crop, sizes, statistics); "family" uses the DINO evaluation recipe (resize to 256,
    centre-crop 224, bicubic, ImageNet statistics).
    """
    from transformers import AutoConfig, AutoModel

    folder = Path(source).expanduser()
    is_local = folder.is_dir()
    src = str(folder) if is_local else source
    offline = local_files_only or is_local
    try:
        config = AutoConfig.from_pretrained(src, local_files_only=offline)
    except (OSError, ValueError) as err:
        raise FeatkitError(_unavailable(name, source, is_local, "config.json")) from err
    for key, value in (model_kwargs or {}).items():
        setattr(config, key, value)
    if config.model_type not in SUPPORTED_TYPES:
        raise FeatkitError(
            f"{name} is a {config.model_type!r} model; expected one of {', '.join(SUPPORTED_TYPES)}"
        )

    patch_size = int(config.patch_size)
    preprocessing, notices = _preprocessing(name, src, config, image_size, offline, transform)
    _check_image_size(name, preprocessing.crop, patch_size)

    path = checkpoints.check_weights_path(weights) if weights is not None else None
    with torch.device(device if device is not None else "cpu"):
        if path is not None or not pretrained:
            model = AutoModel.from_config(config)
        else:
            try:
                with _quiet_transformers():
                    model = AutoModel.from_pretrained(src, config=config, local_files_only=offline)
            except OSError as err:
                raise FeatkitError(_unavailable(name, source, is_local, "weights")) from err
    sha = None
    if path is not None:
        state = checkpoints.unwrap_state_dict(
            checkpoints.read_checkpoint(path), f"weights file {path}"
        )
        checkpoints.load_strict(model, state, f"weights file {path}")
        sha = checkpoints.sha256_file(path)
    elif pretrained:
        weight_file = _find_weight_file(src, is_local)
        sha = checkpoints.sha256_file(weight_file) if weight_file is not None else None

    backbone = HFBackbone(
        name=name,
        model=model,
        patch_size=patch_size,
        embed_dim=int(config.hidden_size),
        num_registers=int(getattr(config, "num_register_tokens", 0) or 0),
        preprocessing=preprocessing,
        weights_sha256=sha,
        lora_targets=_lora_targets(model),
        pos_embed_rule=f"transformers: {type(model).__name__}",
    )
    backbone.notices = tuple(notices)
    for notice in notices:
        logger.warning("%s", notice)
    return backbone


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading progress bars for one call (the library never prints)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _lora_targets(model: nn.Module) -> tuple[str, ...]:
    # transformers 5 renamed Dinov2/ViT's query/value to q_proj/v_proj; ask the model.
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    if {"q_proj", "v_proj"} <= names:
        return ("q_proj", "v_proj")
    if {"query", "value"} <= names:
        return ("query", "value")
    raise FeatkitError(f"cannot find the attention projections of {type(model).__name__}")


V1_NOTICE = (
    "{name}: its processor normalises with mean/std 0.5, the ViTImageProcessor default, but "
    "DINO v1 was trained with ImageNet statistics; using those (transform='family' gives "
    "the DINO evaluation recipe)"
)


def _preprocessing(
    name: str, src: str, config: Any, image_size: int | None, offline: bool, transform: str
) -> tuple[Preprocessing, list[str]]:
    """The processor's recipe (resize vs crop, sizes, resampling, statistics) when the model
    has a ``preprocessor_config.json`` and ``transform="processor"``, else the DINO
    evaluation recipe; plus notices for the caller."""
    if transform not in TRANSFORMS:
        raise FeatkitError(f"transform: expected one of {', '.join(TRANSFORMS)}, got {transform!r}")
    proc = _read_processor_config(src, offline) if transform == "processor" else {}
    notices: list[str] = []
    if not proc:
        crop = image_size or min(int(getattr(config, "image_size", HUB_IMAGE_SIZE)), HUB_IMAGE_SIZE)
        return Preprocessing.dino(crop), notices
    mean = _triple_or(proc.get("image_mean"), IMAGENET_MEAN)
    std = _triple_or(proc.get("image_std"), IMAGENET_STD)
    if config.model_type == "vit" and mean == std == (0.5, 0.5, 0.5):
        # The DINO v1 ports on the hub kept ViTImageProcessor's defaults (measured CLS cosine
        # 0.879 against ImageNet statistics, which the weights were trained with).
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        notices.append(V1_NOTICE.format(name=name))
    interpolation = _PIL_RESAMPLE.get(int(proc.get("resample", 3)), "bicubic")
    size, crop_size = proc.get("size"), _side(proc.get("crop_size"))
    short = size.get("shortest_edge") if isinstance(size, dict) else None
    if proc.get("do_center_crop", crop_size is not None) and crop_size is not None:
        # Resize the shorter side, then centre-crop (DINOv2's BitImageProcessor).
        resize = int(short) if short is not None else _side(size) or round(crop_size / 0.875)
        if image_size is not None:  # same recipe at another size: keep the resize ratio
            resize, crop_size = round(image_size * resize / crop_size), image_size
        return Preprocessing(resize, crop_size, interpolation, mean, std), notices
    if short is not None:
        # Shorter side only, no crop: featkit needs a fixed grid, so it crops the centre.
        side = image_size or int(short)
        return Preprocessing(side, side, interpolation, mean, std), notices
    # Resize straight to a square, aspect ratio not kept (ViT / DINOv3 processors).
    side = image_size or _side(size) or HUB_IMAGE_SIZE
    return Preprocessing(side, side, interpolation, mean, std, resize_mode="square"), notices


def _triple_or(values: Any, default: tuple[float, float, float]) -> tuple[float, float, float]:
    return _triple(values) if values else default


def _read_processor_config(src: str, offline: bool) -> dict[str, Any]:
    folder = Path(src)
    if folder.is_dir():
        file: Path | None = folder / "preprocessor_config.json"
    else:
        from huggingface_hub import hf_hub_download

        try:
            file = Path(hf_hub_download(src, "preprocessor_config.json", local_files_only=offline))
        except Exception:  # absent or unreachable: fall back to DINO defaults
            file = None
    if file is None or not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FeatkitError(f"{file} is not valid JSON: {err}") from err
    return data if isinstance(data, dict) else {}


def _side(value: Any) -> int | None:
    """A square side from a processor size: int, {"shortest_edge"} or {"height","width"}."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        for key in ("shortest_edge", "height", "width"):
            if key in value:
                return int(value[key])
    return None


def _find_weight_file(src: str, is_local: bool) -> Path | None:
    for filename in _WEIGHT_FILES:
        if is_local:
            candidate: Any = Path(src) / filename
        else:
            from huggingface_hub import try_to_load_from_cache

            candidate = try_to_load_from_cache(src, filename)
        if isinstance(candidate, (str, Path)) and Path(candidate).is_file():
            return Path(candidate)
    return None


def _first_attr(obj: Any, paths: Sequence[str]) -> Any:
    for path in paths:
        target = obj
        for part in path.split("."):
            target = getattr(target, part, None)
            if target is None:
                break
        if target is not None:
            return target
    return None


def _unavailable(name: str, source: str, is_local: bool, what: str) -> str:
    if is_local:
        return (
            f"folder {source} has no loadable {what} for {name}; expected a folder written by "
            "save_pretrained (config.json and model.safetensors)"
        )
    return (
        f"no {what} for {name} are available offline (not in the Hugging Face cache); "
        f"download them on a machine with a network, or pass a local folder as hf:FOLDER "
        f"or a checkpoint with --weights FILE"
    )


register_scheme("hf:", create_hf_backbone, usage="hf:<hub id or folder>")
