"""What a fine-tune sweep produced, and its rows in the workspace's result tables.

The rows come from :func:`featkit.evaluation.records.episode_records`, the builder the probe uses,
so the same predictions give the same result, per-class and confusion rows whichever
stage made them (tests/test_records.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featkit.evaluation.splits import Sweep
from featkit.tune.inputs import LabelledImages

FEATURE = "cls"  # the head reads the CLS token


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


@dataclass
class FinetuneRun:
    """Everything one ``run_finetune`` produced."""

    dataset: str
    model: str
    protocol: str
    params: str
    sweep: Sweep = field(default_factory=Sweep)
    # Ties the rows to the images and features the probe used: the store's fingerprint,
    # or from a data folder the backbone's own (featkit.store.fingerprint.make_fingerprint).
    fingerprint: dict[str, Any] = field(default_factory=dict)
    outcomes: list[EpisodeOutcome] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # undecodable images
    seconds: float = 0.0
    results_dir: Path | None = None


def write_results(run: FinetuneRun, rows: LabelledImages, workspace: Path) -> Path:
    """Merge the run's rows into the workspace's long, summary, per-class and confusion CSVs.

    The run id covers the data (:func:`featkit.evaluation.records.data_id`) and the draws' seed and
    test fraction exactly as the probe's does.
    """
    from featkit.evaluation.records import data_id, episode_records
    from featkit.results import io as results

    classes = list(range(len(rows.label_names)))
    data_key = data_id(rows.dataset, rows.paths, rows.labels, rows.splits, rows.label_names)
    seed = run.sweep.seed
    long, per_class, confusion = [], [], []
    for out in run.outcomes:
        rid = results.run_id(
            run.fingerprint,
            FEATURE,
            run.protocol,
            run.params,
            out.shots,
            seed,
            out.episode,
            test_fraction=run.sweep.test_fraction,  # as the probe does: it changes the draws
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
