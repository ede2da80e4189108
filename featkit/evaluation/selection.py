"""Choosing among a protocol's settings without looking at the test images.

A grid on the command line (``--param knn.k=10,20,50``) normally reports every setting
side by side; picking the best of them afterwards is selection on test and flatters the
winner (best-of-30 k-NN settings read 3.5 points above an honest estimate). With
``featkit probe --select`` each grid is one method instead: in every episode the
training images are split again, stratified by class, into a part to fit on and a
validation part (``VALIDATION_FRACTION`` of each class with at least two images, at least
one image), every setting is scored on the validation part by balanced accuracy, the
best is refitted on all training images, and only that one meets the test images.
Ties go to the first setting in grid order. With one training image per class there is
nothing to validate on: the first setting is used and the record says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from featkit.errors import FeatkitError
from featkit.evaluation.splits import round_half_up
from featkit.metrics import balanced_accuracy
from featkit.protocols import Protocol

VALIDATION_FRACTION = 0.2


def validation_split(
    y: NDArray[np.int64], seed: int = 0, fraction: float = VALIDATION_FRACTION
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Sorted row indices ``(fit, validation)``: per class with ≥ 2 images, a
    ``fraction`` (rounded half up, at least 1, at most n − 1) goes to validation."""
    rng = np.random.default_rng(seed)
    held: list[NDArray[np.int64]] = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        if members.size < 2:
            continue
        n_val = min(max(round_half_up(fraction * members.size), 1), members.size - 1)
        held.append(rng.permutation(members)[:n_val])
    validation = np.sort(np.concatenate(held)) if held else np.empty(0, np.int64)
    return np.setdiff1d(np.arange(y.size), validation), validation


class SelectOnValidation(Protocol):
    """A meta-protocol: fit each candidate on part of the training set, keep the one
    that scores best on the rest, refit it on everything."""

    name = "select"

    def __init__(self, candidates: Sequence[Any] = (), random_state: int = 0) -> None:
        self.candidates = candidates  # specs with .create() and .params_string()
        self.random_state = random_state

    def fit(self, X: ArrayLike, y: ArrayLike | None = None) -> SelectOnValidation:
        if y is None:
            raise FeatkitError("select labels: expected labels to choose a setting, got none")
        features, labels, _ = self._check_Xy(X, y)
        fit_rows, val_rows = validation_split(labels, self.random_state)
        self.scores_: dict[str, float] = {}
        chosen = 0
        # Validation needs ≥ 2 classes left to fit on; otherwise keep the grid's first.
        if val_rows.size and np.unique(labels[fit_rows]).size >= 2:
            for index, spec in enumerate(self.candidates):
                model = spec.create().fit(features[fit_rows], labels[fit_rows])
                score = balanced_accuracy(labels[val_rows], model.predict(features[val_rows]))
                self.scores_[spec.params_string()] = float(score)
                if score > self.scores_.get(self.candidates[chosen].params_string(), -1.0):
                    chosen = index
        self.n_validation_ = int(val_rows.size) if self.scores_ else 0
        self.chosen_ = self.candidates[chosen]
        self.estimator_ = self.chosen_.create().fit(features, labels)
        self.classes_ = self.estimator_.classes_
        return self

    @property
    def fitted_params_(self) -> dict[str, Any]:
        chosen = {
            "selected": self.chosen_.params_string(),
            "validation_images": self.n_validation_,
            "validation_balanced_accuracy": self.scores_,
        }
        if not self.scores_:
            chosen["warning"] = (
                "no validation images (one training image per class): the grid's first "
                "setting was used"
            )
        return {**chosen, **self.estimator_.fitted_params_}

    def predict(self, X: ArrayLike) -> NDArray[np.int64]:
        return self.estimator_.predict(X)

    def predict_proba(self, X: ArrayLike) -> NDArray[np.float64]:
        return np.asarray(self.estimator_.predict_proba(X))


@dataclass(frozen=True)
class SelectedSpec:
    """A protocol's grid as one method: what :class:`featkit.evaluation.probe.ProtocolSpec` is for
    one setting (``name``, ``supervised``, ``create()``, ``params_string()``)."""

    name: str
    candidates: tuple[Any, ...]

    @property
    def params(self) -> tuple[tuple[str, Any], ...]:
        return (("select", self.params_string()),)

    @property
    def supervised(self) -> bool:
        return True

    def create(self) -> Protocol:
        return SelectOnValidation(self.candidates)

    def params_string(self) -> str:
        return "select=" + "|".join(spec.params_string() for spec in self.candidates)


def select_grids(specs: Sequence[Any]) -> tuple[Any, ...]:
    """Each supervised protocol with several settings becomes one :class:`SelectedSpec`;
    everything else passes through, in the original order."""
    grids: dict[str, list[Any]] = {}
    for spec in specs:
        if spec.supervised:
            grids.setdefault(spec.name, []).append(spec)
    out: list[Any] = []
    for spec in specs:
        grid = grids.get(spec.name) if spec.supervised else None
        if grid is None or len(grid) == 1:
            out.append(spec)
        elif spec is grid[0]:
            out.append(SelectedSpec(spec.name, tuple(grid)))
    return tuple(out)
