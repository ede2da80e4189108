"""What the data holds before any number is read: images per class, imbalance, test sizes.

A per-class number means little when its class has two test images (one image moves its
recall by 50 points), so the summary names the smallest test class and warns below
``MIN_TEST_IMAGES``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from featkit.evaluation.checks import MIN_TEST_IMAGES
from featkit.evaluation.splits import DEFAULT_TEST_FRACTION, train_test_split


@dataclass
class DataSummary:
    dataset: str
    per_class: pd.DataFrame  # class, train, test (sorted by train count, largest first)
    failed: int
    unlabelled: int
    warnings: list[str] = field(default_factory=list)

    @property
    def imbalance_ratio(self) -> float:
        """Largest over smallest training class (inf when a class has no training image)."""
        train = self.per_class["train"]
        return float(train.max() / train.min()) if train.min() > 0 else float("inf")

    @property
    def smallest_test_class(self) -> tuple[str, int]:
        row = self.per_class.iloc[int(np.argmin(self.per_class["test"].to_numpy()))]
        return str(row["class"]), int(row["test"])

    def lines(self) -> list[str]:
        """The summary as short sentences, largest facts first."""
        train, test = int(self.per_class["train"].sum()), int(self.per_class["test"].sum())
        name, smallest = self.smallest_test_class
        ratio = self.imbalance_ratio
        ratio_text = f"{ratio:.1f}:1" if np.isfinite(ratio) else "unbounded (a class has none)"
        lines = [
            f"{self.dataset}: {len(self.per_class)} classes, {train} training and {test} test "
            f"images; {self.failed} failed to decode, {self.unlabelled} unlabelled.",
            f"Imbalance (largest / smallest training class): {ratio_text}.",
            f"Smallest test class: {name} with {smallest} image{'' if smallest == 1 else 's'}.",
        ]
        return lines + self.warnings


def summarize_data(
    dataset: str,
    paths: Sequence[str],
    labels: ArrayLike,
    label_names: Sequence[str],
    explicit_splits: Sequence[str] | None = None,
    *,
    failed: int = 0,
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> DataSummary:
    """Count images per class in the same train/test split the probes draw."""
    y = np.asarray(labels, dtype=np.int64)
    train, test = train_test_split(paths, y, explicit_splits, seed, test_fraction)
    classes = np.arange(len(label_names))
    train_counts = np.bincount(y[train], minlength=len(classes))[: len(classes)]
    test_counts = np.bincount(y[test], minlength=len(classes))[: len(classes)]
    per_class = pd.DataFrame(
        {"class": list(label_names), "train": train_counts, "test": test_counts}
    )
    per_class = per_class.sort_values(["train", "class"], ascending=[False, True])
    per_class = per_class.reset_index(drop=True)
    small = per_class[per_class["test"] < MIN_TEST_IMAGES]
    warnings = []
    if not small.empty:
        names = ", ".join(f"{c} ({n})" for c, n in zip(small["class"], small["test"], strict=True))
        warnings.append(
            f"Warning: {len(small)} classes have fewer than {MIN_TEST_IMAGES} test images "
            f"({names}); their per-class recall moves by 20 points or more per image."
        )
    return DataSummary(dataset, per_class, int(failed), int((y < 0).sum()), warnings)
