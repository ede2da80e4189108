"""Light fine-tuning on the probes' splits: episodes → train → evaluate → result rows.

For every (shots, episode) draw of :func:`featkit.splits.episodes` (the very function
``featkit probe`` uses, so both see the same images) a fresh copy of the backbone is
tuned with one method of :mod:`featkit.tune`, scored on the shared test split and
written as result rows with protocol ``finetune-<method>``. The pieces stay separate:
:func:`labelled_images` reads a store or a data folder, :func:`tune_episode` trains and
scores one draw, :func:`run_finetune` sweeps and records.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor

from featkit.backbones import Backbone
from featkit.errors import FeatkitError
from featkit.imbalance import DEFAULT_BETA, DEFAULT_TAU
from featkit.progress import SILENT, Progress
from featkit.splits import DEFAULT_EPISODES as PROBE_EPISODES
from featkit.splits import DEFAULT_TEST_FRACTION, Episode, Shots
from featkit.tune.adapter import save_adapter
from featkit.tune.head import ClsOnly, fold_into, fold_norm, norm_from, train_head
from featkit.tune.images import Augment, ImageSet, load_images
from featkit.tune.losses import check_loss, make_loss
from featkit.tune.methods import (
    LoraOptions,
    MethodOptions,
    TunedClassifier,
    check_method,
    count_parameters,
    create_classifier,
)
from featkit.tune.train import (
    TrainLog,
    default_steps,
    make_schedule,
    predict_logits,
    seeded,
    train,
)

logger = logging.getLogger("featkit")

FEATURE = "cls"  # the head reads the CLS token
# The probe's episodes 0..9: a mean over fewer draws has a wider interval (t factor 4.3 at
# 3 episodes against 2.3 at 10), so tuned and probed cells would not compare like with like.
DEFAULT_EPISODES = PROBE_EPISODES
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
        from featkit.results import canonical_params

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


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class LabelledImages:
    """The rows a fine-tune draws from: what a store (or a data folder) says about images."""

    dataset: str
    root: Path  # folder the relative paths are under
    paths: tuple[str, ...]
    labels: np.ndarray  # int64 [N], -1 = unlabelled
    splits: tuple[str, ...]  # "train" | "val" | "test" | "" per row
    label_names: tuple[str, ...]
    store: Path | None = None  # the store the rows came from, if any
    store_model: str | None = None
    fingerprint: dict[str, Any] | None = None


def labelled_images(source: Path, data: Path | None = None) -> LabelledImages:
    """Rows from a store (``.h5``: images under ``data``) or a data folder / CSV manifest."""
    from featkit.data import discover

    source = Path(source)
    if source.suffix == ".h5" and source.is_file():
        return _from_store(source, data)
    if data is not None:
        raise FeatkitError(
            f"--data {data}: expected it only with a store as input, got a data source {source}"
        )
    dataset = discover(source)
    labels = np.asarray(dataset.label_indices(), dtype=np.int64)
    return LabelledImages(
        dataset=dataset.name,
        root=dataset.root,
        paths=tuple(r.path for r in dataset.records),
        labels=labels,
        splits=tuple(r.split or "" for r in dataset.records),
        label_names=dataset.label_names,
    )


def _from_store(path: Path, data: Path | None) -> LabelledImages:
    from featkit.data import discover
    from featkit.store import open_store

    with open_store(path) as store:
        rows = LabelledImages(
            dataset=store.dataset,
            root=Path(),
            paths=tuple(store.paths()),
            labels=store.labels(),
            splits=tuple(store.splits()),
            label_names=tuple(store.label_names),
            store=path,
            store_model=store.model,
            fingerprint=dict(store.fingerprint),
        )
        # A store that records its image folder needs no --data (none does yet).
        recorded = getattr(store, "data_root", None) or store.fingerprint.get("data_root")
    if data is not None:
        root = discover(data).root if Path(data).is_file() else Path(data).resolve()
    elif recorded:
        root = Path(recorded)
    else:
        raise FeatkitError(
            f"{path}: the store does not record where its images are; "
            "expected --data FOLDER (the image folder or CSV manifest it was extracted from)"
        )
    missing = next((p for p in rows.paths if not (root / p).is_file()), None)
    if missing is not None:
        raise FeatkitError(
            f"--data {root}: expected the images of store {path.name} under it, "
            f"got a missing file ({missing})"
        )
    return replace(rows, root=root)


# --------------------------------------------------------------------------- one episode


@dataclass
class EpisodeOutcome:
    """What tuning on one draw gave: scores on the test split and the cost."""

    shots: str
    episode: int
    effective_shots: int
    train_paths: list[str]
    test_paths: list[str]
    y_train: np.ndarray  # [n_train]
    y_true: np.ndarray  # [n_test]
    y_pred: np.ndarray  # [n_test]
    scores: np.ndarray  # [n_test, C] softmax probabilities
    losses: list[float]
    seconds: float
    trainable: int
    total: int
    adapter: Path | None = None


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
            augment = Augment(base.preprocessing, hflip=settings.hflip)
            sources = [images.sources[i] for i in train_rows]

            def make_batch(idx: Tensor, gen: torch.Generator) -> Tensor:
                return augment([sources[i] for i in idx.tolist()], gen)

            mean, std = _probe_head(
                classifier, train_images, make_batch, y, loss_fn, settings, generator, device
            )
            classifier.norm = norm_from(mean, std).to(device)
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


# Augmented views per training image the head-first probe sees (besides the image itself).
PROBE_VIEWS = 4


def _probe_head(
    classifier: TunedClassifier,
    train_images: Tensor,
    make_views: Any,
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

    The probe also sees ``PROBE_VIEWS`` augmented views of each image, the inputs the
    tuning stage trains on: a head fitted to the unaugmented images alone is confidently
    wrong on crops and flips, and tuning then starts from a loss above chance.
    """
    n = len(train_images)
    encode = ClsOnly(classifier.backbone)
    batches = [train_images] + [make_views(torch.arange(n), generator) for _ in range(PROBE_VIEWS)]
    features = torch.cat([predict_logits(encode, b, device=device) for b in batches])
    labels = y.repeat(len(batches))
    schedule = make_schedule(
        len(labels),
        lr=DEFAULT_LR["linear"],
        batch_size=settings.batch_size,
        steps=default_steps(n, settings.batch_size, min_epochs=100, min_steps=300, max_epochs=1000),
        weight_decay=settings.weight_decay,
    )
    _, mean, std = train_head(
        classifier.head, features, labels, loss_fn, schedule, generator, device
    )
    return mean, std


def _linear_steps(n_train: int, settings: FinetuneSettings) -> int | None:
    """Linear heads train on cached features, so a long schedule costs milliseconds."""
    if settings.epochs is not None:
        return None
    return default_steps(
        n_train, settings.batch_size, min_epochs=100, min_steps=300, max_epochs=1000
    )


# --------------------------------------------------------------------------- the sweep


@dataclass
class FinetuneRun:
    """Everything one ``run_finetune`` produced."""

    dataset: str
    model: str
    protocol: str
    params: str
    outcomes: list[EpisodeOutcome] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # undecodable images
    seconds: float = 0.0
    results_dir: Path | None = None
    test_fraction: float = DEFAULT_TEST_FRACTION


def run_finetune(
    rows: LabelledImages,
    backbone: Backbone,
    settings: FinetuneSettings,
    *,
    shots: str | Sequence[Shots] = "1,5,10,all",
    n_episodes: int = DEFAULT_EPISODES,
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    workspace: Path | None = None,
    save_adapters: bool = True,
    model_name: str | None = None,
    progress: Progress = SILENT,
) -> FinetuneRun:
    """Tune and score every (shots, episode) draw; write result rows under ``workspace``.

    ``backbone`` is the untouched base; each draw tunes its own copy. With
    ``workspace=None`` nothing is written (the outcomes are returned either way).
    ``model_name`` is the model column of the rows (default ``backbone.name``; the
    store's name, e.g. ``<model>-random``, keeps them beside the probe's rows).
    """
    from featkit.precision import detect_hardware, resolve_device, resolve_precision
    from featkit.splits import episodes

    require_labels(rows)
    check_store_backbone(rows, backbone)
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, detect_hardware(device))
    if precision == "fp16":
        raise FeatkitError("--precision: expected auto, fp32 or bf16 for fine-tuning, got fp16")
    start = time.perf_counter()
    images = load_images(rows.root, rows.paths, backbone.preprocessing, progress)
    keep = {p: i for i, p in enumerate(rows.paths)}
    kept = [keep[p] for p in images.paths]
    labels = rows.labels[kept]
    splits = [rows.splits[i] for i in kept]
    num_classes = len(rows.label_names)
    draws = list(
        episodes(
            images.paths,
            labels,
            splits,
            shots=shots,
            n_episodes=n_episodes,
            seed=seed,
            test_fraction=test_fraction,
            label_names=rows.label_names,
        )
    )
    base = backbone.to(device).eval()
    base.requires_grad_(False)
    features = None
    if settings.method == "linear":
        with threadpool_limits(limits=cpu_threads(base, 64, settings.cpu_threads, device)):
            features = predict_logits(
                ClsOnly(base), images.evals, device=device, precision=precision, batch_size=64
            )
    run = FinetuneRun(
        rows.dataset, model_name or backbone.name, settings.protocol, settings.params()
    )
    run.failed = images.failed
    run.test_fraction = test_fraction
    sweep = progress.task(f"{settings.protocol} episodes", len(draws))
    for draw in draws:
        outcome = _run_draw(
            base,
            images,
            labels,
            draw,
            settings,
            rows,
            num_classes,
            seed,
            device,
            precision,
            features,
            workspace if save_adapters else None,
            run.model,
            progress,
            test_fraction,
        )
        run.outcomes.append(outcome)
        sweep.advance(1, bal_acc=_balanced(outcome))
    sweep.close()
    run.seconds = time.perf_counter() - start
    if workspace is not None:
        run.results_dir = write_results(run, rows, backbone, seed, workspace, precision)
    return run


def require_labels(rows: LabelledImages) -> None:
    """Fine-tuning is supervised: refuse unlabelled data before any model is built."""
    if not np.any(rows.labels >= 0):
        raise FeatkitError(
            f"{rows.store or rows.root}: fine-tuning expected labelled images (class "
            "sub-folders or a label column), got none: every image is unlabelled"
        )


def check_store_backbone(rows: LabelledImages, backbone: Backbone) -> None:
    """Refuse to label tuned rows with a store's model when the weights or input size
    differ from those the store (and so the probe's rows) was made with."""
    from featkit.fingerprint import parameters_sha256

    if not rows.fingerprint:
        return
    recorded = rows.fingerprint.get("weights_sha256")
    if recorded:
        given = backbone.weights_sha256 or f"params:{parameters_sha256(backbone)}"
        if given != recorded:
            raise FeatkitError(
                f"{rows.store}: expected the weights the store was extracted with "
                f"({str(recorded)[:19]}), got {given[:19]}; pass the same --weights"
            )
    size = rows.fingerprint.get("image_size")
    if size is not None and int(size) != backbone.preprocessing.crop:
        raise FeatkitError(
            f"{rows.store}: expected --image-size {size} like the store, "
            f"got {backbone.preprocessing.crop}"
        )


def _balanced(outcome: EpisodeOutcome) -> float:
    from featkit.metrics import balanced_accuracy

    return balanced_accuracy(outcome.y_true, outcome.y_pred)


def _run_draw(
    base: Backbone,
    images: ImageSet,
    labels: np.ndarray,
    draw: Episode,
    settings: FinetuneSettings,
    rows: LabelledImages,
    num_classes: int,
    seed: int,
    device: str,
    precision: str,
    features: Tensor | None,
    workspace: Path | None,
    model: str,
    progress: Progress,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> EpisodeOutcome:
    shots = str(draw.shots)
    classifier, log, scores = tune_episode(
        base,
        images,
        labels,
        draw.train,
        draw.test,
        settings,
        num_classes=num_classes,
        seed=episode_seed(seed, shots, draw.episode),
        device=device,
        precision=precision,
        features=features,
        progress=progress,
        description=f"{settings.method} {shots}-shot ep {draw.episode}",
    )
    trainable = sum(p.numel() for p in classifier.parameters() if p.requires_grad)
    total = count_parameters(classifier)[1]
    adapter = None
    if workspace is not None:
        adapter = save_adapter(
            classifier,
            adapter_dir(
                workspace,
                rows.dataset,
                model,
                settings,
                shots,
                draw.episode,
                seed=seed,
                test_fraction=test_fraction,
            ),
            method=settings.method,
            options=settings.method_options,
            label_names=list(rows.label_names),
            extra={
                "params": settings.params(),
                "shots": shots,
                "episode": draw.episode,
                "seed": seed,
                "test_fraction": test_fraction,
                "dataset": rows.dataset,
            },
        )
    return EpisodeOutcome(
        shots=shots,
        episode=draw.episode,
        effective_shots=draw.effective_shots,
        train_paths=[images.paths[i] for i in draw.train],
        test_paths=[images.paths[i] for i in draw.test],
        y_train=labels[draw.train],
        y_true=labels[draw.test],
        y_pred=scores.argmax(1),
        scores=scores,
        losses=log.losses,
        seconds=log.seconds,
        trainable=trainable,
        total=total,
        adapter=adapter,
    )


def adapter_dir(
    workspace: Path,
    dataset: str,
    model: str,
    settings: FinetuneSettings,
    shots: str,
    episode: int,
    *,
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> Path:
    """``<ws>/finetune/<dataset>/<model>/<protocol>-<hash>/<shots>-shot/episode-<e>``.

    The hash covers everything else that defines the adapter (params, seed, test
    fraction), so a rerun with other settings never overwrites another run's adapter.
    """
    from featkit.workspace import finetune_dir, safe_name

    key = f"{settings.params()}|seed={seed}|test_fraction={float(test_fraction)!r}"
    tag = hashlib.sha1(key.encode()).hexdigest()[:8]
    return (
        finetune_dir(workspace)
        / safe_name(dataset)
        / safe_name(model)
        / f"{settings.protocol}-{tag}"
        / f"{safe_name(shots.replace('%', 'pct'))}-shot"
        / f"episode-{episode}"
    )


def write_results(
    run: FinetuneRun,
    rows: LabelledImages,
    backbone: Backbone,
    seed: int,
    workspace: Path,
    precision: str,
) -> Path:
    """Append the run's rows to the workspace's long, summary, per-class and confusion CSVs."""
    from featkit import results
    from featkit.fingerprint import make_fingerprint
    from featkit.metrics import classification_metrics, confusion_counts, per_class_recall

    # The store's fingerprint ties rows to the images and features the probe used; from a
    # data folder the backbone's own fingerprint stands in for it.
    fingerprint = rows.fingerprint or make_fingerprint(
        backbone, precision=precision, patches="none"
    )
    classes = list(range(len(rows.label_names)))
    long, per_class, confusion = [], [], []
    for out in run.outcomes:
        rid = results.run_id(
            fingerprint,
            FEATURE,
            run.protocol,
            run.params,
            out.shots,
            seed,
            out.episode,
            test_fraction=run.test_fraction,  # as the probe does: it changes the draws
        )
        key = dict(
            dataset=run.dataset,
            model=run.model,
            feature=FEATURE,
            protocol=run.protocol,
            params=run.params,
            shots=out.shots,
            episode=out.episode,
        )
        n_train = np.bincount(out.y_train, minlength=len(classes))
        base = dict(
            key,
            effective_shots=out.effective_shots,
            n_train=len(out.train_paths),
            n_test=len(out.test_paths),
            seed=seed,
            run_id=rid,
            store=str(rows.store) if rows.store else "",
        )
        metrics = classification_metrics(out.y_true, out.y_pred, out.scores, classes)
        long += results.result_rows(base, metrics)
        recall = per_class_recall(out.y_true, out.y_pred, classes)
        n_test = np.bincount(out.y_true, minlength=len(classes))
        for c in classes:
            per_class.append(
                dict(
                    key,
                    run_id=rid,
                    n_train=int(n_train[c]),
                    n_test=int(n_test[c]),
                    recall=float(recall[c]),
                    **{"class": rows.label_names[c]},
                )
            )
        counts = confusion_counts(out.y_true, out.y_pred, classes)
        for t, p in zip(*np.nonzero(counts), strict=True):
            confusion.append(
                dict(
                    key,
                    run_id=rid,
                    true=rows.label_names[t],
                    pred=rows.label_names[p],
                    count=int(counts[t, p]),
                )
            )
    return results.write_results(workspace, long, per_class, confusion)
