"""One fine-tuning draw: settings, the head-first probe, the tune, the test probabilities.

:func:`tune_episode` trains a fresh classifier on one (shots, episode) draw and scores
it on the test rows; :mod:`featkit.tune.run` sweeps the draws and records the rows.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor
from torch.nn import functional as F

from featkit.backbones import Backbone
from featkit.errors import FeatkitError
from featkit.progress import SILENT, Progress
from featkit.protocols.imbalance import DEFAULT_BETA, DEFAULT_TAU
from featkit.tune.head import ClsOnly, fold_into, fold_norm, norm_from, train_head
from featkit.tune.images import Augment, ImageSet
from featkit.tune.losses import check_loss, make_loss
from featkit.tune.methods import (
    LoraOptions,
    MethodOptions,
    TunedClassifier,
    check_method,
    create_classifier,
)
from featkit.tune.train import (
    MakeBatch,
    TrainLog,
    default_steps,
    make_schedule,
    predict_logits,
    seeded,
    train,
)

logger = logging.getLogger("featkit")

# Peak learning rates: the head alone on fixed features tolerates more than tuned blocks.
DEFAULT_LR = {"linear": 1e-2, "lora": 1e-3, "last-block": 2e-4}


@dataclass(frozen=True)
class FinetuneSettings:
    """What to tune and how; every field that changes the numbers goes into ``params``."""

    method: str = "lora"  # "lora" | "last-block" | "linear"
    loss: str = "ce"  # "ce" | "class-balanced" | "logit-adjusted"
    lora: LoraOptions = field(default_factory=LoraOptions)
    blocks: int = 1  # last-block: final blocks unfrozen (with the final norm and head)
    epochs: int | None = None  # None and steps None: scaled to the training-set size
    steps: int | None = None  # optimiser steps; wins over epochs
    lr: float | None = None  # peak learning rate; None = DEFAULT_LR[method]
    batch_size: int = 32
    weight_decay: float = 0.05
    beta: float = DEFAULT_BETA  # class-balanced: effective-number β
    tau: float = DEFAULT_TAU  # logit-adjusted: prior scale τ
    # Augmentation: random horizontal flips. Off by default: a flip changes the class of
    # digits, letters and anything chiral, and adds little to a light tune elsewhere.
    hflip: bool = False
    precision: str = "auto"  # "auto" (bf16 where the hardware has it) | "fp32" | "bf16"
    device: str = "auto"  # "auto" | "cpu" | "cuda[:N]"
    cpu_threads: int | None = None  # None: 1 for small steps (see cpu_threads()), else all

    def __post_init__(self) -> None:
        check_method(self.method)
        check_loss(self.loss)

    @property
    def protocol(self) -> str:
        return f"finetune-{self.method}"

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.method] if self.lr is None else self.lr

    @property
    def method_options(self) -> MethodOptions:
        return MethodOptions(lora=self.lora, blocks=self.blocks)

    def params(self) -> str:
        """Canonical ``key=value;…`` of the settings that change results (not device)."""
        from featkit.results.io import canonical_params

        items: dict[str, Any] = {"loss": self.loss, "lr": self.learning_rate}
        if self.method == "lora":
            items.update(r=self.lora.r, alpha=self.lora.effective_alpha, dropout=self.lora.dropout)
        if self.method == "last-block":
            items["blocks"] = self.blocks
        if self.loss == "class-balanced":
            items["beta"] = self.beta
        if self.loss == "logit-adjusted":
            items["tau"] = self.tau
        if self.steps is not None:
            items["steps"] = self.steps
        else:
            items["epochs"] = "auto" if self.epochs is None else self.epochs
        items["batch"] = self.batch_size
        if self.weight_decay != 0.05:
            items["wd"] = self.weight_decay
        if self.method != "linear" and self.hflip:
            items["flip"] = True
        return canonical_params(items)


def episode_seed(seed: int, shots: str, episode: int) -> int:
    """A seed per draw, so every episode trains differently but reproducibly."""
    digest = hashlib.blake2b(f"{seed}/{shots}/{episode}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def tune_episode(
    base: Backbone,
    images: ImageSet,
    labels: np.ndarray,
    train_rows: np.ndarray,
    test_rows: np.ndarray,
    settings: FinetuneSettings,
    *,
    num_classes: int,
    seed: int,
    device: str = "cpu",
    precision: str = "fp32",
    features: Tensor | None = None,
    progress: Progress = SILENT,
    description: str = "fine-tuning",
) -> tuple[TunedClassifier, TrainLog, np.ndarray]:
    """Tune a copy of ``base`` on ``train_rows`` of ``images``; return the classifier, its
    training log and the test probabilities ``[n_test, C]``.

    ``features`` (``[N, D]`` CLS of every image, for ``linear``) skips the backbone: the
    head then trains on fixed features, which is exactly what ``linear`` means.
    """
    y = torch.as_tensor(labels[train_rows], dtype=torch.long)
    counts = np.bincount(labels[train_rows], minlength=num_classes)
    loss_fn = make_loss(settings.loss, counts, beta=settings.beta, tau=settings.tau)
    linear = settings.method == "linear"
    schedule = make_schedule(
        len(train_rows),
        lr=settings.learning_rate,
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        steps=settings.steps
        if settings.steps is not None or not linear
        else _linear_steps(len(train_rows), settings),
        weight_decay=settings.weight_decay,
    )
    threads = cpu_threads(base, schedule.batch_size, settings.cpu_threads, device)
    if linear and device == "cpu" and settings.cpu_threads is None:
        threads = 1  # a head on cached features: the smallest steps of all
    with seeded(seed, device) as generator, threadpool_limits(limits=threads):
        backbone = base if linear else copy.deepcopy(base)
        classifier = create_classifier(
            backbone, num_classes, settings.method, settings.method_options
        )
        classifier.to(device)
        train_images = images.evals[torch.as_tensor(train_rows)]
        if linear:
            if features is None:
                raise ValueError("linear tuning needs the precomputed CLS features")
            log, mean, std = train_head(
                classifier.head,
                features[torch.as_tensor(train_rows)],
                y,
                loss_fn,
                schedule,
                generator,
                device,
            )
            fold_into(classifier.head, mean, std)
            with torch.inference_mode():
                logits = (
                    classifier.head(features[torch.as_tensor(test_rows)].to(device)).float().cpu()
                )
        else:
            # Head first (LP-FT), on z-scores; the tuning stage keeps the head on
            # z-scores through a BatchNorm that follows the features as they change.
            mean, std = _probe_head(
                classifier, train_images, y, loss_fn, settings, generator, device
            )
            classifier.norm = norm_from(mean, std).to(device)
            make_batch = _training_views(
                classifier,
                Augment(base.preprocessing, hflip=settings.hflip),
                [images.sources[i] for i in train_rows],
                train_images,
                y,
                generator,
                device=device,
                precision=precision,
                description=description,
            )
            log = train(
                classifier,
                make_batch,
                y,
                loss_fn,
                schedule,
                generator,
                device=device,
                precision=precision,
                progress=progress,
                description=description,
            )
            fold_norm(classifier, train_images, device=device, precision=precision)
            logits = predict_logits(
                classifier,
                images.evals[torch.as_tensor(test_rows)],
                device=device,
                precision=precision,
            )
    return classifier, log, torch.softmax(logits, dim=1).numpy()


# Below this many token rows per step (batch × tokens), CPU training runs on one thread.
SMALL_STEP_ROWS = 4096


def cpu_threads(
    backbone: Backbone, batch_size: int, requested: int | None, device: str
) -> int | None:
    """Threads for one episode's CPU work (``None`` = leave torch's default).

    Small steps (a ViT-S at 32-64 px, a linear head) are many tiny matrix products:
    extra threads then mostly synchronise, and on a shared machine a waiting thread
    stalls every product (measured on the 2-core dev machine under load: ViT-S/16,
    32 px, batch 32: 0.29 s per step on one thread, 5.2 s on two).
    """
    if requested is not None:
        if requested < 1:
            raise FeatkitError(f"cpu threads: expected >= 1, got {requested}")
        return requested
    if device != "cpu":
        return None
    side = backbone.preprocessing.crop // backbone.patch_size
    rows = batch_size * (side * side + backbone.num_prefix_tokens)
    return 1 if rows < SMALL_STEP_ROWS else None


def _probe_head(
    classifier: TunedClassifier,
    train_images: Tensor,
    y: Tensor,
    loss_fn: Any,
    settings: FinetuneSettings,
    generator: torch.Generator,
    device: str,
) -> tuple[Tensor, Tensor]:
    """Start the head from a linear probe on the untuned features (LP-FT); return the
    features' mean and std (the head is left on z-scores).

    Kumar et al. (2022), "Fine-Tuning can Distort Pretrained Features": a random head
    trained jointly with the backbone sends large, random gradients into it; with the
    few hundred steps of a light tune it also never catches up with a plain probe.
    LoRA's B matrices start at zero, so these are exactly the frozen features.

    Fitting the probe to augmented views as well (4 per image) started the tune from
    a lower loss but cost 13-18 points of balanced accuracy on the demo, so the probe
    sees the unaugmented images only.
    """
    n = len(train_images)
    features = predict_logits(ClsOnly(classifier.backbone), train_images, device=device)
    schedule = make_schedule(
        n,
        lr=DEFAULT_LR["linear"],
        batch_size=settings.batch_size,
        steps=default_steps(n, settings.batch_size, min_epochs=100, min_steps=300, max_epochs=1000),
        weight_decay=settings.weight_decay,
    )
    _, mean, std = train_head(classifier.head, features, y, loss_fn, schedule, generator, device)
    return mean, std


# Augmented views are used only while the head-first probe still classifies them at a
# cross-entropy below this fraction of chance (ln C); see _training_views.
AUGMENT_MAX_LOSS = 0.5


def _training_views(
    classifier: TunedClassifier,
    augment: Augment,
    sources: list[Tensor],
    train_images: Tensor,
    y: Tensor,
    generator: torch.Generator,
    *,
    device: str,
    precision: str,
    description: str,
) -> MakeBatch:
    """Augmented crops if the untuned features already treat them as the same images,
    else the unaugmented training images.

    Augmentation regularises a tune by asking for invariances the features nearly have.
    Where they do not, a light tune of a few hundred steps spends itself learning them
    and the test images (never augmented) gain nothing: featkit-tiny-dino on its 32-px
    demo digits moves its CLS token to cosine 0.57 of the original under a 1-px shift and
    0.13 under a 3-px one, so the head-first probe (loss 0.01 on the training images)
    met its crops at a loss of 2.6, above chance (ln 10 = 2.30), and LoRA ended at 1.9
    with no better test accuracy than the frozen head. One augmented view per training
    image, scored by that probe (plain cross-entropy, whatever ``--loss``), decides: a
    judgement of the features on this data, not a setting tuned to one data set.
    """

    def augmented(idx: Tensor, gen: torch.Generator) -> Tensor:
        return augment([sources[i] for i in idx.tolist()], gen)

    views = augmented(torch.arange(len(sources)), generator)
    logits = predict_logits(classifier, views, device=device, precision=precision)
    loss = float(F.cross_entropy(logits, y))
    limit = AUGMENT_MAX_LOSS * math.log(classifier.head.out_features)
    if loss <= limit:
        return augmented
    logger.info(
        "%s: training on the unaugmented images: the untuned features put augmented "
        "views at a loss of %.2f (limit %.2f), so crops would teach invariances "
        "rather than the classes",
        description,
        loss,
        limit,
    )
    return lambda idx, _gen: train_images[idx]


def _linear_steps(n_train: int, settings: FinetuneSettings) -> int | None:
    """Linear heads train on cached features, so a long schedule costs milliseconds."""
    if settings.epochs is not None:
        return None
    return default_steps(
        n_train, settings.batch_size, min_epochs=100, min_steps=300, max_epochs=1000
    )
