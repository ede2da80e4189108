"""Light fine-tuning on the probes' splits: episodes → train → evaluate → result rows.

For every (shots, episode) draw of :func:`featkit.evaluation.splits.episodes` (the very function
``featkit probe`` uses, so both see the same images) a fresh copy of the backbone is
tuned with one method of :mod:`featkit.tune`, scored on the shared test split and
written as result rows with protocol ``finetune-<method>``. The pieces stay separate:
:func:`labelled_images` reads a store or a data folder, :func:`tune_episode` trains and
scores one draw, :func:`run_finetune` sweeps and records.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits
from torch import Tensor

from featkit.backbones import Backbone
from featkit.cost import measure
from featkit.errors import FeatkitError
from featkit.evaluation.splits import DEFAULT_EPISODES as PROBE_EPISODES
from featkit.evaluation.splits import DEFAULT_TEST_FRACTION, Episode, Shots
from featkit.progress import SILENT, Progress
from featkit.tune.adapter import save_adapter
from featkit.tune.episode import (  # re-exported: featkit.finetune is the public door
    DEFAULT_LR,
    FinetuneSettings,
    cpu_threads,
    episode_seed,
    tune_episode,
)
from featkit.tune.head import ClsOnly
from featkit.tune.images import ImageSet, load_images
from featkit.tune.methods import count_parameters
from featkit.tune.train import predict_logits

__all__ = [
    "DEFAULT_EPISODES",
    "DEFAULT_LR",
    "EpisodeOutcome",
    "FinetuneRun",
    "FinetuneSettings",
    "LabelledImages",
    "adapter_dir",
    "check_store_backbone",
    "cpu_threads",
    "episode_seed",
    "labelled_images",
    "require_labels",
    "run_finetune",
    "tune_episode",
    "write_results",
]

logger = logging.getLogger("featkit")

FEATURE = "cls"  # the head reads the CLS token
# The probe's episodes 0..9: a mean over fewer draws has a wider interval (t factor 4.3 at
# 3 episodes against 2.3 at 10), so tuned and probed cells would not compare like with like.
DEFAULT_EPISODES = PROBE_EPISODES

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
    from featkit.data.images import discover

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
    from featkit.data.images import discover
    from featkit.store.reader import open_store

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
    seconds: float  # wall time of the tune: head probe, training, test predictions
    trainable: int
    total: int
    adapter: Path | None = None
    peak_mb: float = 0.0  # peak memory of the tune (featkit.cost.measure)


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
    from featkit.evaluation.splits import episodes
    from featkit.precision import detect_hardware, resolve_device, resolve_precision

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
    from featkit.store.fingerprint import parameters_sha256

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
    with measure(device) as cost:
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
    """Merge the run's rows into the workspace's long, summary, per-class and confusion CSVs.

    Rows come from :func:`featkit.evaluation.records.episode_records`, the function the probe uses,
    under a run id that covers the data as the probe's does.
    """
    from featkit.evaluation.records import data_id, episode_records
    from featkit.results import io as results
    from featkit.store.fingerprint import make_fingerprint

    # The store's fingerprint ties rows to the images and features the probe used; from a
    # data folder the backbone's own fingerprint stands in for it.
    fingerprint = rows.fingerprint or make_fingerprint(
        backbone, precision=precision, patches="none"
    )
    classes = list(range(len(rows.label_names)))
    data_key = data_id(rows.dataset, rows.paths, rows.labels, rows.splits, rows.label_names)
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
            dataset=run.dataset,
            data=data_key,
        )
        base = dict(
            dataset=run.dataset,
            model=run.model,
            feature=FEATURE,
            protocol=run.protocol,
            params=run.params,
            shots=out.shots,
            episode=out.episode,
            effective_shots=out.effective_shots,
            n_train=len(out.train_paths),
            n_test=len(out.test_paths),
            seed=seed,
            run_id=rid,
            store=str(rows.store) if rows.store else "",
            data_id=data_key,
            seconds=out.seconds,
            peak_mb=round(out.peak_mb, 1),
        )
        records = episode_records(
            base,
            out.y_train,
            out.y_true,
            out.y_pred,
            rows.label_names,
            scores=out.scores,
            score_classes=classes,
            test_paths=out.test_paths,
            seed=seed,
        )
        long += records[0]
        per_class += records[1]
        confusion += records[2]
    return results.write_results(workspace, long, per_class, confusion)
