"""One pretraining run: a folder of unlabelled images → a DINO-trained backbone file,
resumable after every epoch (the loop itself is :class:`featkit.dino.trainer.DINOTrainer`)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from featkit.dino.config import PretrainConfig, PretrainResult, check_resumable, state_path
from featkit.dino.data import MultiCropImages, collate_views
from featkit.dino.multicrop import MultiCrop, MultiCropConfig, default_local_size
from featkit.dino.trainer import DINOTrainer
from featkit.errors import FeatkitError
from featkit.progress import SILENT, Progress

if TYPE_CHECKING:
    from featkit.backbones import Backbone

logger = logging.getLogger("featkit")


def _build_backbone(config: PretrainConfig) -> Backbone:
    from featkit.backbones import create_backbone

    name = config.init or config.arch
    pretrained = config.init is not None or config.weights is not None
    # Local crops are smaller than global ones: timm interpolates the position
    # embeddings per input size with dynamic_img_size.
    kwargs = {**config.model_kwargs, "dynamic_img_size": True}
    return create_backbone(
        name,
        weights=config.weights,
        image_size=config.image_size,
        pretrained=pretrained,
        model_kwargs=kwargs,
    )


def _image_paths(data: Path, split: str | None) -> list[Path]:
    from featkit.data.images import discover

    dataset = discover(data)
    records = [r for r in dataset.records if split is None or r.split == split]
    if split is not None and not records:
        found = sorted({r.split or "none" for r in dataset.records})
        raise FeatkitError(
            f"{data}: no images in split {split!r}; the data has splits {', '.join(found)}"
        )
    return [dataset.root / r.path for r in records]


def pretrain(
    data: Path,
    config: PretrainConfig,
    out: Path,
    *,
    resume: bool = False,
    progress: Progress = SILENT,
) -> PretrainResult:
    """Run DINO on the images of ``data`` (folder or manifest; labels unused) → ``out``.

    With ``resume=True`` an existing ``out.train.pt`` is continued (a finished run
    returns at once); without it an existing state is an error rather than overwritten.
    The run seeds torch from ``config.seed`` on a forked generator: the caller's global
    random state is the same afterwards.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        return _pretrain(data, config, Path(out), resume, progress)


def _pretrain(
    data: Path, config: PretrainConfig, out: Path, resume: bool, progress: Progress
) -> PretrainResult:
    out = Path(out)
    if out.suffix != ".safetensors":
        raise FeatkitError(f"--out {out}: expected a .safetensors file name")
    if config.epochs < 1:
        raise FeatkitError(f"--epochs {config.epochs}: expected at least 1")
    if config.centering not in ("ema", "sinkhorn"):
        raise FeatkitError(f"--centering {config.centering!r}: expected 'ema' or 'sinkhorn'")
    saved_path = state_path(out)
    if saved_path.exists() and not resume:
        raise FeatkitError(
            f"{saved_path} exists; pass --resume to continue that run or choose another --out"
        )
    paths = _image_paths(Path(data), config.split)
    if len(paths) < 2:
        raise FeatkitError(f"{data}: DINO needs at least 2 images, found {len(paths)}")

    torch.manual_seed(config.seed)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone = _build_backbone(config)
    if not any(p.requires_grad for p in backbone.parameters()):
        raise FeatkitError(
            f"--arch {config.init or config.arch}: expected a network with weights to train "
            "(a ViT), got one without any"
        )
    global_size = config.image_size or backbone.preprocessing.crop
    config = dataclasses.replace(config, image_size=global_size)
    pre = backbone.preprocessing
    crops = MultiCropConfig(
        global_size=global_size,
        local_size=config.local_size or default_local_size(global_size, backbone.patch_size),
        n_local=config.local_crops,
        global_scale=config.global_scale,
        local_scale=config.local_scale,
        flip=config.flip,
        mean=pre.mean,
        std=pre.std,
    )
    batch_size = min(config.batch_size, len(paths))
    steps_per_epoch = len(paths) // batch_size
    trainer = DINOTrainer(backbone, backbone.embed_dim, config, steps_per_epoch, device)

    if resume and saved_path.exists():
        state = torch.load(saved_path, map_location=device, weights_only=True)
        check_resumable(json.loads(state["config"]), config, saved_path)
        trainer.load_state_dict(state)

    images = MultiCropImages(paths, MultiCrop(crops))
    task = progress.task("pretrain (DINO)", config.epochs * steps_per_epoch)
    task.advance(trainer.epoch * steps_per_epoch)
    try:
        while trainer.epoch < config.epochs:
            # Seeded per epoch so that a resumed run draws the same order and crops.
            torch.manual_seed(config.seed * 100_003 + trainer.epoch)
            generator = torch.Generator().manual_seed(config.seed * 100_003 + trainer.epoch)
            loader = torch.utils.data.DataLoader(
                images,
                batch_size=batch_size,
                shuffle=True,
                drop_last=True,
                num_workers=config.num_workers,
                collate_fn=collate_views,
                generator=generator,
                persistent_workers=False,
            )
            trainer.train_epoch(iter(loader), task)
            trainer.save(out)
    finally:
        task.close()
    _warn_if_collapsed(trainer.history, config.out_dim)
    return PretrainResult(out, saved_path, trainer.epoch, trainer.history)


def _warn_if_collapsed(history: list[dict[str, float]], out_dim: int) -> None:
    if not history:
        return
    h = history[-1].get("teacher_entropy", float("nan"))
    log_k = float(np.log(out_dim))
    if h < 0.02 * log_k or h > 0.98 * log_k:
        kind = "one prototype" if h < 0.02 * log_k else "uniform"
        logger.warning(
            "teacher entropy %.3g of max %.3g: training looks collapsed (%s); "
            "try a lower --lr, more epochs or --centering sinkhorn",
            h,
            log_k,
            kind,
        )
