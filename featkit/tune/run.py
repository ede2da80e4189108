"""Light fine-tuning on the probes' splits: episodes → train → evaluate → result rows.

For every draw of a :class:`featkit.evaluation.splits.Sweep` (the object ``featkit probe`` draws its
episodes from, so both see the same images) a fresh copy of the backbone is tuned with
one method of :mod:`featkit.tune`, scored on the shared test split and written as result
rows with protocol ``finetune-<method>``. :func:`run_finetune` builds one frozen
:class:`Context` (settings, sweep, data, base backbone, device) and hands it to
:func:`tune_draw` for every draw; :mod:`featkit.tune.results` writes the rows.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits
from torch import Tensor

from featkit.backbones import Backbone
from featkit.cost import measure
from featkit.errors import FeatkitError
from featkit.evaluation.splits import Episode, Sweep
from featkit.progress import SILENT, Progress
from featkit.tune.adapter import save_adapter
from featkit.tune.episode import (
    DEFAULT_LR,
    FinetuneSettings,
    cpu_threads,
    episode_seed,
    tune_episode,
)
from featkit.tune.head import ClsOnly
from featkit.tune.images import ImageSet, load_images
from featkit.tune.inputs import (
    LabelledImages,
    check_store_backbone,
    labelled_images,
    require_labels,
)
from featkit.tune.methods import count_parameters
from featkit.tune.results import EpisodeOutcome, FinetuneRun, write_results
from featkit.tune.train import predict_logits

__all__ = [
    "DEFAULT_LR",
    "Context",
    "EpisodeOutcome",
    "FinetuneRun",
    "FinetuneSettings",
    "LabelledImages",
    "Sweep",
    "adapter_dir",
    "check_store_backbone",
    "cpu_threads",
    "episode_seed",
    "labelled_images",
    "require_labels",
    "run_finetune",
    "tune_draw",
    "tune_episode",
    "write_results",
]


@dataclass(frozen=True)
class Context:
    """Everything the draws of one sweep share, built once by :func:`run_finetune`."""

    settings: FinetuneSettings
    sweep: Sweep
    rows: LabelledImages
    images: ImageSet  # the rows' images that decoded
    labels: np.ndarray  # int64 [len(images.paths)], aligned with ``images``
    base: Backbone  # untouched and frozen on ``device``: every draw tunes its own copy
    device: str
    precision: str
    model: str  # the model column of the rows
    features: Tensor | None = None  # CLS of every image, for ``linear`` (fixed features)
    workspace: Path | None = None  # adapters are saved under it (None: not saved)
    progress: Progress = SILENT

    @property
    def num_classes(self) -> int:
        return len(self.rows.label_names)


def run_finetune(
    rows: LabelledImages,
    backbone: Backbone,
    settings: FinetuneSettings,
    sweep: Sweep = Sweep(),
    *,
    workspace: Path | None = None,
    save_adapters: bool = True,
    model_name: str | None = None,
    progress: Progress = SILENT,
) -> FinetuneRun:
    """Tune and score every draw of ``sweep``; write result rows under ``workspace``.

    ``backbone`` is the untouched base; each draw tunes its own copy. With
    ``workspace=None`` nothing is written (the outcomes are returned either way).
    ``model_name`` is the model column of the rows (default ``backbone.name``; the
    store's name, e.g. ``<model>-random``, keeps them beside the probe's rows).
    """
    from featkit.precision import detect_hardware, resolve_device, resolve_precision
    from featkit.store.fingerprint import make_fingerprint

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
    base = backbone.to(device).eval()
    base.requires_grad_(False)
    context = Context(
        settings=settings,
        sweep=sweep,
        rows=rows,
        images=images,
        labels=rows.labels[kept],
        base=base,
        device=device,
        precision=precision,
        model=model_name or backbone.name,
        features=_fixed_features(base, images, settings, device, precision),
        workspace=workspace if save_adapters else None,
        progress=progress,
    )
    draws = list(
        sweep.draws(images.paths, context.labels, [rows.splits[i] for i in kept], rows.label_names)
    )
    run = FinetuneRun(
        rows.dataset,
        context.model,
        settings.protocol,
        settings.params(),
        sweep=sweep,
        # The store's fingerprint ties the rows to the probe's; from a data folder the
        # backbone's own stands in for it.
        fingerprint=rows.fingerprint
        or make_fingerprint(backbone, precision=precision, patches="none"),
        failed=images.failed,
    )
    task = progress.task(f"{settings.protocol} episodes", len(draws))
    for draw in draws:
        outcome = tune_draw(context, draw)
        run.outcomes.append(outcome)
        task.advance(1, bal_acc=_balanced(outcome))
    task.close()
    run.seconds = time.perf_counter() - start
    if workspace is not None:
        run.results_dir = write_results(run, rows, workspace)
    return run


def _fixed_features(
    base: Backbone, images: ImageSet, settings: FinetuneSettings, device: str, precision: str
) -> Tensor | None:
    """``linear`` trains on the frozen CLS of every image: computed once per run."""
    if settings.method != "linear":
        return None
    with threadpool_limits(limits=cpu_threads(base, 64, settings.cpu_threads, device)):
        return predict_logits(
            ClsOnly(base), images.evals, device=device, precision=precision, batch_size=64
        )


def _balanced(outcome: EpisodeOutcome) -> float:
    from featkit.metrics import balanced_accuracy

    return balanced_accuracy(outcome.y_true, outcome.y_pred)


def tune_draw(context: Context, draw: Episode) -> EpisodeOutcome:
    """Tune a copy of the context's backbone on one draw, score it, save its adapter."""
    settings, images = context.settings, context.images
    shots = str(draw.shots)
    with measure(context.device) as cost:
        classifier, log, scores = tune_episode(
            context.base,
            images,
            context.labels,
            draw.train,
            draw.test,
            settings,
            num_classes=context.num_classes,
            seed=episode_seed(context.sweep.seed, shots, draw.episode),
            device=context.device,
            precision=context.precision,
            features=context.features,
            progress=context.progress,
            description=f"{settings.method} {shots}-shot ep {draw.episode}",
        )
    trainable, total = count_parameters(classifier)
    adapter = None
    if context.workspace is not None:
        rows, sweep = context.rows, context.sweep
        adapter = save_adapter(
            classifier,
            adapter_dir(
                context.workspace, rows.dataset, context.model, settings, sweep, shots, draw.episode
            ),
            method=settings.method,
            options=settings.method_options,
            label_names=list(rows.label_names),
            extra={
                "params": settings.params(),
                "shots": shots,
                "episode": draw.episode,
                "seed": sweep.seed,
                "test_fraction": sweep.test_fraction,
                "dataset": rows.dataset,
            },
        )
    return EpisodeOutcome(
        shots=shots,
        episode=draw.episode,
        effective_shots=draw.effective_shots,
        train_paths=[images.paths[i] for i in draw.train],
        test_paths=[images.paths[i] for i in draw.test],
        y_train=context.labels[draw.train],
        y_true=context.labels[draw.test],
        y_pred=scores.argmax(1),
        scores=scores,
        losses=log.losses,
        seconds=cost.seconds,
        peak_mb=cost.peak_mb,
        trainable=trainable,
        total=total,
        adapter=adapter,
    )


def adapter_dir(
    workspace: Path,
    dataset: str,
    model: str,
    settings: FinetuneSettings,
    sweep: Sweep,
    shots: str,
    episode: int,
) -> Path:
    """``<ws>/finetune/<dataset>/<model>/<protocol>-<hash>/<shots>-shot/episode-<e>``.

    The hash covers everything else that defines the adapter (params, the sweep's seed
    and test fraction), so a rerun with other settings never overwrites another run's.
    """
    from featkit.workspace import finetune_dir, safe_name

    key = f"{settings.params()}|seed={sweep.seed}|test_fraction={float(sweep.test_fraction)!r}"
    tag = hashlib.sha1(key.encode()).hexdigest()[:8]
    return (
        finetune_dir(workspace)
        / safe_name(dataset)
        / safe_name(model)
        / f"{settings.protocol}-{tag}"
        / f"{safe_name(shots.replace('%', 'pct'))}-shot"
        / f"episode-{episode}"
    )
