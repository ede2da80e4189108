"""The probe sweep: features × shots × episodes × protocols → result rows.

:func:`evaluate_arrays` works on plain arrays (tests need no store); :func:`probe_store`
reads a store through :func:`featkit.open_store` and validates it; :func:`probe` runs
several stores and merges the rows into a workspace through :mod:`featkit.results.io`.

Every protocol of one store sees the same episodes (:func:`featkit.evaluation.splits.episodes`),
and supervised protocols are fitted on ``X[train]`` and scored on ``X[test]``.
Label-free protocols run at ``shots = 0`` on the test images, once per episode with the
episode number as their seed, ``k`` = number of test classes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from featkit.bootstrap import DEFAULT_BOOTSTRAP, StratifiedBootstrap
from featkit.clustering import clustering_metrics, match_clusters
from featkit.cost import measure
from featkit.errors import FeatkitError
from featkit.evaluation.checks import (
    check_data,
    check_one_store_per_model,
    check_same_images,
    warn_small_test_classes,
)
from featkit.evaluation.fits import SweepFits
from featkit.evaluation.records import data_id, episode_records
from featkit.evaluation.rows import ProbeResults
from featkit.evaluation.shots import Shots, parse_shots

# ProtocolSpec and protocol_grid stay importable from here, beside ProbeSettings.
from featkit.evaluation.specs import (  # noqa: F401
    ProtocolSpec,
    default_specs,
    label_free_protocol,
    protocol_grid,
)
from featkit.evaluation.splits import DEFAULT_EPISODES, DEFAULT_TEST_FRACTION, Episode, Sweep
from featkit.progress import SILENT, Progress
from featkit.protocols import Protocol
from featkit.results.io import CONFUSION_COLUMNS, PER_CLASS_COLUMNS, RESULT_COLUMNS, run_id
from featkit.threads import cpu_sample, limit_threads, planned_threads

logger = logging.getLogger("featkit")

FEATURE_KINDS = ("cls", "patch_mean", "cls+patch_mean")


@dataclass(frozen=True)
class ProbeSettings:
    """What to evaluate; every field has the documented default."""

    # Default: every registered protocol whose class says default = True.
    protocols: tuple[ProtocolSpec, ...] = field(default_factory=default_specs)
    shots: tuple[Shots, ...] = parse_shots("1,5,10,all")
    # "cls" | "patch_mean" | "cls+patch_mean" | "cls<k>" | "cls<k>+avgpool" (Store.features)
    features: tuple[str, ...] = ("cls",)
    episodes: int = DEFAULT_EPISODES  # per few-shot setting; "all" always has one
    seed: int = 0  # drives the train/test split and the episodes
    test_fraction: float = DEFAULT_TEST_FRACTION  # when the data name no test split
    bootstrap: int = DEFAULT_BOOTSTRAP  # stratified resamples of the test images per row
    splits: int = 1  # > 1: the "all" column is this many stratified folds (k-fold)
    select: bool = False  # a protocol's grid becomes one method, chosen on validation

    @property
    def sweep(self) -> Sweep:
        """The draws as one object, the one the fine-tune draws its episodes from."""
        return Sweep(self.shots, self.episodes, self.seed, self.test_fraction)


def _with_selection(settings: ProbeSettings) -> ProbeSettings:
    """With ``select``, each protocol's grid becomes one method chosen on a validation
    split of the training images (:mod:`featkit.evaluation.selection`), never on test."""
    if not settings.select:
        return settings
    from featkit.evaluation.selection import select_grids

    return replace(settings, protocols=select_grids(settings.protocols))


@dataclass
class EvalData:
    """The arrays of one store that an evaluation needs (row-aligned)."""

    dataset: str
    model: str
    paths: list[str]
    labels: NDArray[np.int64]  # -1 = unlabelled
    features: dict[str, NDArray[np.float32]]  # kind → [N, D]
    splits: list[str] | None = None
    label_names: tuple[str, ...] = ()
    fingerprint: Mapping[str, Any] | str = ""
    store: str = ""


def _episodes(
    data: EvalData, settings: ProbeSettings, with_zero: bool, warn: bool = True
) -> list[Episode]:
    shots = set(settings.shots) | ({Shots("zero")} if with_zero else set())
    ordered = sorted(shots, key=lambda s: s.sort_key)
    try:
        sweep = replace(settings.sweep, shots=tuple(ordered))  # with the label-free "0"
        rows = (data.paths, data.labels, data.splits, data.label_names)
        return list(sweep.draws(*rows, warn=warn, n_splits=settings.splits))
    except FeatkitError as error:
        where = f"store {data.store}" if data.store else f"{data.dataset}/{data.model}"
        raise FeatkitError(f"{where}: {error}") from None


def _class_name(data: EvalData, label: int) -> str:
    if 0 <= label < len(data.label_names):
        return data.label_names[label]
    return str(label)


def _scores(model: Protocol, X: NDArray[np.float32]) -> NDArray | None:
    for method in ("predict_proba", "decision_function"):
        if hasattr(model, method):
            return np.asarray(getattr(model, method)(X))
    return None


@dataclass(frozen=True)
class _Job:
    kind: str
    spec: ProtocolSpec
    draw: Episode
    base: dict[str, Any]


def _jobs(data: EvalData, settings: ProbeSettings, draws: Sequence[Episode]) -> list[_Job]:
    """Every (feature, protocol, draw) of a sweep with its result columns and run id.

    The run id covers everything that defines the numbers: the store fingerprint, the
    data (dataset name, paths, labels, splits: :func:`featkit.evaluation.records.data_id`), feature,
    protocol and settings, shots, seed, test fraction and episode.
    """
    supervised = [s for s in settings.protocols if s.supervised]
    label_free = [s for s in settings.protocols if not s.supervised]
    labelled_draws = [e for e in draws if e.shots.kind != "zero"]
    zero_draws = [e for e in draws if e.shots.kind == "zero"]
    params = {spec: spec.params_string() for spec in settings.protocols}
    data_key = data_id(data.dataset, data.paths, data.labels, data.splits, data.label_names)
    folds = {"splits": settings.splits} if settings.splits > 1 else {}
    jobs = []
    for kind in settings.features:
        pairs = [(spec, draw) for draw in labelled_draws for spec in supervised]
        pairs += [(spec, draw) for draw in zero_draws for spec in label_free]
        for spec, draw in pairs:
            base = {
                "dataset": data.dataset,
                "model": data.model,
                "feature": kind,
                "protocol": spec.name,
                "params": params[spec],
                "shots": str(draw.shots),
                "episode": draw.episode,
                "effective_shots": draw.effective_shots,
                "n_train": int(draw.train.size),
                "n_test": int(draw.test.size),
                "seed": settings.seed,
                "run_id": run_id(
                    data.fingerprint,
                    kind,
                    spec.name,
                    params[spec],
                    str(draw.shots),
                    settings.seed,
                    draw.episode,
                    test_fraction=settings.test_fraction,
                    dataset=data.dataset,
                    data=data_key,
                    # Fold r of --splits is another test set than the standard split.
                    **folds if draw.shots.kind == "all" else {},
                ),
                "store": data.store,
                "data_id": data_key,
            }
            jobs.append(_Job(kind, spec, draw, base))
    return jobs


def evaluate_arrays(
    data: EvalData, settings: ProbeSettings | None = None, progress: Progress = SILENT
) -> ProbeResults:
    """Run the sweep on one data set's arrays; nothing is written."""
    settings = settings or ProbeSettings()
    settings = _with_selection(settings)
    check_data(data, settings)
    label_free = [s for s in settings.protocols if not s.supervised]
    draws = _episodes(data, settings, with_zero=bool(label_free))
    warn_small_test_classes(data, draws)
    jobs = _jobs(data, settings, draws)
    y = np.asarray(data.labels, dtype=np.int64)
    rows: list[dict[str, Any]] = []
    per_class: list[dict[str, Any]] = []
    confusion: list[dict[str, Any]] = []
    task = progress.task(f"probe {data.dataset}/{data.model}", len(jobs))
    fits = SweepFits(data.features, y, [(job.kind, job.spec, job.draw) for job in jobs])
    # Episodes share their test set (but for --splits folds): its resamples are drawn once.
    bootstraps: dict[bytes, StratifiedBootstrap] = {}
    try:
        for job in jobs:
            X, spec, draw = data.features[job.kind], job.spec, job.draw
            y_test = y[draw.test]
            key = draw.test.tobytes()
            if key not in bootstraps:
                bootstraps[key] = StratifiedBootstrap(y_test, settings.bootstrap, settings.seed)
            metrics: dict[str, float] | None = None
            scores, score_classes = None, None
            fit_seconds = 0.0
            if spec.supervised:
                model, fit_seconds = fits.fitted(job.kind, spec, draw)
            with measure() as cost:  # with the fit's seconds: the price of this route
                if spec.supervised:
                    predicted = model.predict(X[draw.test])
                    scores, score_classes = _scores(model, X[draw.test]), model.classes_.tolist()
                else:
                    model = label_free_protocol(spec, draw.episode, int(np.unique(y_test).size))
                    clusters = model.fit(X[draw.test]).predict(X[draw.test])
            if not spec.supervised:
                metrics = clustering_metrics(y_test, clusters)
                predicted = match_clusters(y_test, clusters)
            fitted = model.fitted_params_ if spec.supervised else {}
            if fitted.get("warning"):
                logger.warning(
                    "%s/%s %s: %s", data.dataset, data.model, spec.name, fitted["warning"]
                )
            new_rows, new_per_class, new_confusion = episode_records(
                {
                    **job.base,
                    "fitted": json.dumps(fitted, sort_keys=True) if fitted else "",
                    # The fit's whole cost when reused, its share when batched
                    # (featkit.evaluation.fits): the price of the route alone.
                    "seconds": cost.seconds + fit_seconds,
                    "peak_mb": round(cost.peak_mb, 1),
                },
                y[draw.train],
                y_test,
                predicted,
                data.label_names,
                metrics=metrics,
                scores=scores,
                score_classes=score_classes,
                test_paths=[data.paths[i] for i in draw.test],
                bootstrap=bootstraps[key],
            )
            rows += new_rows
            per_class += new_per_class
            confusion += new_confusion
            task.advance(1, protocol=spec.name, shots=str(draw.shots))
    finally:
        task.close()
    return ProbeResults(
        pd.DataFrame(rows, columns=list(RESULT_COLUMNS)),
        pd.DataFrame(per_class, columns=list(PER_CLASS_COLUMNS)),
        pd.DataFrame(confusion, columns=list(CONFUSION_COLUMNS)),
    )


def load_store(path: Path, features: Sequence[str]) -> EvalData:
    """The arrays of a store's ok rows for ``features`` (failed rows are left out)."""
    from featkit.store.reader import open_store

    with open_store(path) as store:
        arrays = {kind: store.features(kind) for kind in features}
        fingerprint = store.fingerprint or {"dataset": store.dataset, "model": store.model}
        return EvalData(
            dataset=store.dataset,
            model=store.model,
            paths=store.paths(),
            labels=store.labels(),
            features=arrays,
            splits=store.splits(),
            label_names=tuple(store.label_names),
            fingerprint=json.loads(json.dumps(fingerprint, sort_keys=True, default=str)),
            store=str(path),
        )


def probe_store(
    path: Path,
    settings: ProbeSettings | None = None,
    progress: Progress = SILENT,
    threads: int | None = None,
) -> ProbeResults:
    """One store's rows; ``threads`` limits its numeric libraries (None: as they are)."""
    settings = settings or ProbeSettings()
    with limit_threads(threads) if threads is not None else nullcontext():
        return evaluate_arrays(load_store(Path(path), settings.features), settings, progress)


def _known(data: EvalData, settings: ProbeSettings, existing: ProbeResults) -> ProbeResults | None:
    """The stored rows of exactly this sweep, or None when any run is missing.

    Draws the sweep's episodes first, so that shots a store cannot give fail here.
    """
    settings = _with_selection(settings)
    label_free = any(not s.supervised for s in settings.protocols)
    draws = _episodes(data, settings, with_zero=label_free, warn=False)  # warnings come later
    if existing.results.empty:
        return None
    wanted = {job.base["run_id"] for job in _jobs(data, settings, draws)}
    found = existing.results["run_id"].isin(wanted)
    if not wanted <= set(existing.results.loc[found, "run_id"]):
        return None
    return ProbeResults(
        existing.results[found].reset_index(drop=True),
        existing.per_class[existing.per_class["run_id"].isin(wanted)].reset_index(drop=True),
        existing.confusion[existing.confusion["run_id"].isin(wanted)].reset_index(drop=True),
    )


def probe(
    stores: Sequence[Path],
    settings: ProbeSettings | None = None,
    workspace: Path | None = None,
    progress: Progress = SILENT,
    *,
    force: bool = False,
    allow_different_images: bool = False,
    workers: int | None = None,
) -> ProbeResults:
    """Evaluate every store; with ``workspace``, merge the rows into its results CSVs.

    Stores are evaluated side by side in ``workers`` processes (default: the cores left
    free by other work, at most one per store; 1 evaluates them one after the other).

    Each store is validated (labels, finite features, classes, shots) before any is
    evaluated, so a bad store fails in seconds rather than after the others' sweeps.
    Rows are written once per store, so an interrupted probe keeps the stores done.
    A store whose every run (same run id: same data, features and settings) already has
    rows in the workspace is not evaluated again; ``force=True`` recomputes it.
    """
    if not stores:
        raise FeatkitError("stores: expected at least one store, got none")
    settings = settings or ProbeSettings()
    since = cpu_sample()  # the thread plan's measurement spans the checks below
    existing = (
        ProbeResults.read(workspace) if workspace is not None and not force else ProbeResults()
    )
    images: dict[str, tuple[frozenset[str], Path]] = {}  # dataset → (paths, first store)
    models: dict[tuple[str, str], Path] = {}  # (dataset, model) → its store
    parts: dict[int, ProbeResults] = {}
    pending: list[tuple[int, Path]] = []
    for index, path in enumerate(stores):  # validate everything first; arrays are read again
        item = load_store(Path(path), settings.features)
        check_data(item, settings)
        known = _known(item, settings, existing)
        check_same_images(item, Path(path), images, allow_different_images)
        check_one_store_per_model(item, Path(path), models)
        if known is None:
            pending.append((index, Path(path)))
        else:
            parts[index] = known
        del item
    threads = planned_threads(since) if pending else 1  # measured only when there is work
    workers = min(threads if workers is None else workers, len(pending))
    unwritten = [index for index, _ in pending]  # written in store order, whatever finishes first
    for index, result in _evaluated(pending, settings, workers, threads, progress):
        parts[index] = result
        ready = []
        while unwritten and unwritten[0] in parts:
            ready.append(parts[unwritten.pop(0)])
        if ready and workspace is not None:  # the stores done by now, in one write
            ProbeResults.concat(ready).write(workspace)
    return ProbeResults.concat(parts[index] for index in sorted(parts))


def _evaluated(
    stores: list[tuple[int, Path]],
    settings: ProbeSettings,
    workers: int,
    threads: int,
    progress: Progress,
) -> Iterator[tuple[int, ProbeResults]]:
    """Each store's rows: one after the other with ``threads`` BLAS threads, or, with
    several free cores and stores, in ``workers`` processes side by side."""
    if workers > 1:
        from featkit.evaluation.parallel import can_fork, in_parallel

        if can_fork():
            yield from in_parallel(probe_store, stores, settings, workers, progress)
            return
    for index, path in stores:
        yield index, probe_store(path, settings, progress, threads)
