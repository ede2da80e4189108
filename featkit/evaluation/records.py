"""One episode's predictions → the result, per-class and confusion rows of the CSV contract.

Probe (:mod:`featkit.evaluation.probe`) and fine-tuning (:mod:`featkit.tune.results`) both call
:func:`episode_records`, so the same predictions give the same rows whichever path made
them. The run identity (:func:`data_id`, :func:`featkit.results.io.run_id`) covers the data:
dataset name, relative paths, labels, label names and the split of every image.

Every metric row carries ``test_se``, the stratified-bootstrap standard error of its
value over the test images; the accuracy row of each episode also carries ``correct``,
the per-image correctness as hex bits per class in the order of the sorted test paths
(:func:`encode_correct`), so a report can pair two methods on the same images without
the predictions file a full table would need.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from featkit.bootstrap import DEFAULT_BOOTSTRAP, StratifiedBootstrap
from featkit.errors import FeatkitError
from featkit.metrics import (
    classification_metrics,
    confusion_counts,
    per_class_recall,
)

# Columns that name the evaluated run in the per-class and confusion rows.
KEY_COLUMNS = ("dataset", "model", "feature", "protocol", "params", "shots", "episode", "run_id")


def data_id(
    dataset: str,
    paths: Sequence[str],
    labels: ArrayLike,
    splits: Sequence[str] | None = None,
    label_names: Sequence[str] = (),
) -> str:
    """16 hex digits identifying the data an evaluation saw; independent of row order.

    Two stores of the same images (any model, any row order) share it; a changed label,
    an added image or a moved split changes it.
    """
    y = np.asarray(labels, dtype=np.int64)
    names = list(splits) if splits is not None else [""] * len(paths)
    rows = sorted(zip(paths, y.tolist(), names, strict=True))
    digest = hashlib.sha256()
    digest.update(json.dumps([dataset, list(label_names)]).encode())
    for path, label, split in rows:
        digest.update(f"{path}\x00{label}\x00{split}\x01".encode())
    return digest.hexdigest()[:16]


def encode_correct(correct: ArrayLike, test_paths: Sequence[str], y_test: ArrayLike) -> str:
    """Per-image correctness as ``"n:hex.n:hex…"``: one block per class in label order, bits
    in sorted-path order within it (``""`` without paths).

    The class blocks let a report weigh images as balanced accuracy does; sorting by path
    makes two stores of the same images (any row order) give the same layout.
    """
    bits = np.asarray(correct, dtype=bool)
    y = np.asarray(y_test, dtype=np.int64)
    if len(test_paths) != bits.size or bits.size == 0 or y.size != bits.size:
        return ""
    names = np.asarray(test_paths, dtype=object)
    blocks = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        members = members[np.argsort(names[members], kind="stable")]
        blocks.append(f"{members.size}:{np.packbits(bits[members]).tobytes().hex()}")
    return ".".join(blocks)


def decode_correct(text: str, n: int) -> list[NDArray[np.bool_]] | None:
    """Inverse of :func:`encode_correct`: the class blocks, None when absent or not ``n`` bits."""
    blocks = []
    try:
        for part in str(text).split("."):
            size_text, hex_text = part.split(":")
            size = int(size_text)
            raw = np.frombuffer(bytes.fromhex(hex_text), dtype=np.uint8)
            if size <= 0 or raw.size != (size + 7) // 8:
                return None
            blocks.append(np.unpackbits(raw)[:size].astype(bool))
    except ValueError:
        return None
    if sum(b.size for b in blocks) != n:
        return None
    return blocks


def _name(label_names: Sequence[str], label: int) -> str:
    if label < 0:
        return "(unmatched)"
    return label_names[label] if label < len(label_names) else str(label)


def episode_records(
    base: Mapping[str, Any],
    y_train: ArrayLike,
    y_test: ArrayLike,
    y_pred: ArrayLike,
    label_names: Sequence[str],
    *,
    metrics: Mapping[str, float] | None = None,
    scores: ArrayLike | None = None,
    score_classes: Sequence[int] | None = None,
    test_paths: Sequence[str] = (),
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    bootstrap: StratifiedBootstrap | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Result rows (one per metric), per-class recall rows and non-zero confusion cells.

    ``base`` holds every result column but ``metric``/``value``/``test_se``/``correct``;
    the cost columns (``seconds``, ``peak_mb``) are optional and repeat on every metric row.
    ``metrics`` defaults to :func:`classification_metrics` of the predictions (clustering
    passes its own). Per-class rows cover the classes with training or test images.
    ``bootstrap`` holds the resamples of this test set when a caller scores several
    predictions on it (drawn here from ``n_boot`` and ``seed`` otherwise).
    """
    y_tr = np.asarray(y_train, dtype=np.int64)
    t = np.asarray(y_test, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if metrics is None:
        metrics = classification_metrics(t, p, scores, score_classes)
    if bootstrap is None:
        bootstrap = StratifiedBootstrap(t, n_boot, seed)
    elif not np.array_equal(bootstrap.y_true, t):
        raise FeatkitError("bootstrap: expected the resamples of this test set, got another's")
    se = bootstrap.standard_errors(p)
    correct = encode_correct(t == p, test_paths, t)
    rows = [
        {
            **base,
            "metric": name,
            "value": float(value),
            "test_se": se.get(name, float("nan")),
            # Once per episode (on the accuracy row): the bits are the same for every metric.
            "correct": correct if name == "accuracy" else "",
        }
        for name, value in metrics.items()
        if value is not None and np.isfinite(value)
    ]
    key = {c: base[c] for c in KEY_COLUMNS}
    classes = np.union1d(np.unique(y_tr), np.unique(t))
    recalls = per_class_recall(t, p, classes.tolist())
    per_class = [
        {
            **key,
            "class": _name(label_names, int(c)),
            "n_train": int(np.sum(y_tr == c)),
            "n_test": int(np.sum(t == c)),
            "recall": float(r),
        }
        for c, r in zip(classes, recalls, strict=True)
    ]
    order = np.unique(np.concatenate([t, p]))
    counts = confusion_counts(t, p, order.tolist())
    confusion = [
        {
            **key,
            "true": _name(label_names, int(order[i])),
            "pred": _name(label_names, int(order[j])),
            "count": int(counts[i, j]),
        }
        for i, j in zip(*np.nonzero(counts), strict=True)
    ]
    return rows, per_class, confusion
