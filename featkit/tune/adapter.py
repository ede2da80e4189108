"""Saving and reloading what a fine-tune learned: safetensors weights + a JSON of settings.

An adapter folder holds ``adapter.safetensors`` (only the tuned tensors: LoRA
matrices, or the unfrozen blocks and norm, and the head) and ``adapter.json`` (the
method, its options, the base model and weights it belongs to, the class names). Base
weights are never copied: reloading needs the same base model, which is checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from featkit.atomic import fsync_dir, fsync_file
from featkit.backbones import Backbone
from featkit.errors import FeatkitError
from featkit.tune.methods import (
    LoraOptions,
    MethodOptions,
    TunedClassifier,
    create_classifier,
    merge_lora,
)

WEIGHTS_FILE = "adapter.safetensors"
SETTINGS_FILE = "adapter.json"
FORMAT_VERSION = 1
_HEAD = "head."
_BACKBONE = "backbone."


def save_adapter(
    classifier: TunedClassifier,
    directory: Path,
    *,
    method: str,
    options: MethodOptions,
    label_names: list[str],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the trainable tensors of ``classifier`` and its settings to ``directory``.

    The folder is written whole: both files go into a temporary sibling folder, are
    flushed to disk, and the folder is renamed into place. A run killed while writing
    leaves the previous adapter (if any) untouched; ``adapter_sha256`` in the settings
    ties them to the weights, and loading refuses weights that do not match it.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: p.detach().cpu().contiguous()
        for name, p in classifier.named_parameters()
        if p.requires_grad
    }
    backbone = classifier.backbone
    staging = Path(
        tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent)
    )
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would make the adapter private to this user
        weights_path = staging / WEIGHTS_FILE
        save_file(tensors, str(weights_path))
        fsync_file(weights_path)
        settings = {
            "format_version": FORMAT_VERSION,
            "method": method,
            "options": asdict(options),
            "model": backbone.name,
            "base_weights_sha256": backbone.weights_sha256,
            "base_digest": frozen_digest(classifier),
            "image_size": backbone.preprocessing.crop,
            "embed_dim": backbone.embed_dim,
            "label_names": list(label_names),
            "adapter_sha256": _sha256(weights_path),
            **(extra or {}),
        }
        text = json.dumps(settings, indent=2, sort_keys=True) + "\n"
        _write_settings(staging / SETTINGS_FILE, text)
        fsync_file(staging / SETTINGS_FILE)
        _replace_folder(staging, directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return directory


def _write_settings(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _replace_folder(new: Path, target: Path) -> None:
    """Put the finished folder ``new`` at ``target``, replacing an older one.

    A folder cannot be renamed over a non-empty one, so the old folder is first moved
    aside; a kill between the two renames leaves it, complete, under ``.<name>.*.old``
    and :func:`read_adapter_settings` names it.
    """
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        old.rmdir()
        os.replace(target, old)
    os.replace(new, target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_adapter_settings(directory: Path) -> dict[str, Any]:
    """The adapter's JSON settings (a plain dict); FeatkitError if the folder holds none
    or its weights are not the ones the settings were written for."""
    directory = Path(directory)
    path = directory / SETTINGS_FILE
    if not (path.is_file() and (directory / WEIGHTS_FILE).is_file()):
        aside = sorted(directory.parent.glob(f".{directory.name}.*.old"))
        hint = f"; an earlier adapter was left at {aside[-1]}" if aside else ""
        raise FeatkitError(
            f"{directory}: expected an adapter folder with {SETTINGS_FILE} and {WEIGHTS_FILE} "
            f"(written by featkit finetune), got none{hint}"
        )
    try:
        settings: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise FeatkitError(f"{path}: expected adapter settings JSON, got {error}") from None
    if settings.get("format_version") != FORMAT_VERSION:
        raise FeatkitError(
            f"{path}: expected adapter format_version {FORMAT_VERSION}, "
            f"got {settings.get('format_version')!r}"
        )
    recorded, actual = settings.get("adapter_sha256"), _sha256(directory / WEIGHTS_FILE)
    if recorded != actual:
        raise FeatkitError(
            f"{directory / WEIGHTS_FILE}: expected weights with sha256 {str(recorded)[:12]} "
            f"(recorded in {SETTINGS_FILE}), got {actual[:12]}: the adapter is damaged or mixed"
        )
    return settings


def load_tuned_classifier(backbone: Backbone, directory: Path) -> TunedClassifier:
    """Rebuild the tuned classifier on a freshly created ``backbone`` of the same model
    (modified in place) and load the adapter's tensors into it."""
    from safetensors.torch import load_file

    settings = read_adapter_settings(directory)
    _check_base(backbone, settings, Path(directory))
    options = _options(settings)
    classifier = create_classifier(
        backbone, len(settings["label_names"]), settings["method"], options
    )
    if frozen_digest(classifier) != settings.get("base_digest"):
        # Same name and weight file but other numbers: typically a random-init base.
        raise FeatkitError(
            f"{directory}: the base model's frozen weights differ from those the adapter "
            f"was tuned on (model {backbone.name!r}); expected the same --weights"
        )
    tensors = load_file(str(Path(directory) / WEIGHTS_FILE))
    expected = {n for n, p in classifier.named_parameters() if p.requires_grad}
    if set(tensors) != expected:
        missing = sorted(expected - set(tensors))[:3]
        unknown = sorted(set(tensors) - expected)[:3]
        raise FeatkitError(
            f"{directory}: adapter tensors do not fit {backbone.name} "
            f"(missing {missing}, unexpected {unknown})"
        )
    try:
        classifier.load_state_dict(tensors, strict=False)
    except RuntimeError as error:  # shape mismatch: another model size
        first = str(error).splitlines()[-1].strip()
        raise FeatkitError(f"{directory}: adapter does not fit {backbone.name}: {first}") from None
    classifier.requires_grad_(False)
    classifier.eval()
    return classifier


def load_tuned_backbone(backbone: Backbone, directory: Path) -> Backbone:
    """``backbone`` (fresh, same model as the adapter's) with the tuned weights applied,
    LoRA folded into the base layers: a plain frozen Backbone for ``featkit extract``.

    Modified in place and returned; its forward gives the tuned CLS and patch tokens.
    """
    classifier = load_tuned_classifier(backbone, directory)
    if read_adapter_settings(directory)["method"] == "lora":
        merge_lora(classifier.backbone)
    classifier.backbone.requires_grad_(False)
    return classifier.backbone.eval()


def adapter_fingerprint(directory: Path) -> dict[str, Any]:
    """What identifies an adapter in a store fingerprint: method, options, weights hash."""
    settings = read_adapter_settings(directory)
    return {
        "adapter_method": settings["method"],
        "adapter_options": settings["options"],
        "adapter_sha256": settings["adapter_sha256"],
    }


def frozen_digest(classifier: TunedClassifier) -> str:
    """sha256 over the names and bytes of every frozen parameter: the base the adapter
    needs, whatever file (or random seed) it came from."""
    digest = hashlib.sha256()
    frozen = sorted(
        ((n, p) for n, p in classifier.named_parameters() if not p.requires_grad),
        key=lambda item: item[0],
    )
    for name, param in frozen:
        digest.update(name.encode())
        digest.update(
            param.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def _options(settings: dict[str, Any]) -> MethodOptions:
    raw = settings.get("options", {})
    return MethodOptions(lora=LoraOptions(**raw.get("lora", {})), blocks=raw.get("blocks", 1))


def _check_base(backbone: Backbone, settings: dict[str, Any], directory: Path) -> None:
    if settings.get("model") != backbone.name:
        raise FeatkitError(
            f"{directory}: adapter was tuned on model {settings.get('model')!r}, "
            f"expected it to be loaded onto the same model, got {backbone.name!r}"
        )
    saved, given = settings.get("base_weights_sha256"), backbone.weights_sha256
    if saved != given:
        raise FeatkitError(
            f"{directory}: adapter was tuned on base weights {_short(saved)}, "
            f"got weights {_short(given)} (pass the same --weights)"
        )


def _short(sha: str | None) -> str:
    return "random-init" if sha is None else f"sha256 {sha[:12]}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
