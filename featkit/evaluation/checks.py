"""Checks of the data a probe evaluates: labels, finite features, test-class sizes, and
that stores compared side by side hold the same images."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from numpy.typing import NDArray

from featkit.errors import FeatkitError

if TYPE_CHECKING:
    from featkit.evaluation.splits import Episode

log = logging.getLogger("featkit")

# Below this many test images a class's recall moves in steps of 20 points or more.
MIN_TEST_IMAGES = 5


# What the checks read, as structural types: the probe's EvalData and ProbeSettings fit
# them, and this module stays below the probe instead of importing it back.
class CheckedData(Protocol):
    @property
    def dataset(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def store(self) -> str: ...
    @property
    def paths(self) -> Sequence[str]: ...
    @property
    def labels(self) -> NDArray[np.int64]: ...
    @property
    def label_names(self) -> Sequence[str]: ...
    @property
    def features(self) -> Mapping[str, NDArray[np.float32]]: ...


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class CheckedSettings(Protocol):
    @property
    def protocols(self) -> Sequence[_Named]: ...
    @property
    def features(self) -> Sequence[str]: ...


def _class_name(data: CheckedData, label: int) -> str:
    if 0 <= label < len(data.label_names):
        return data.label_names[label]
    return str(label)


def check_data(data: CheckedData, settings: CheckedSettings) -> None:
    where = f"store {data.store}" if data.store else f"{data.dataset}/{data.model}"
    names = [spec.name for spec in settings.protocols]
    if not names:
        raise FeatkitError("--protocols: expected at least one protocol, got none")
    if not np.any(np.asarray(data.labels) >= 0):
        raise FeatkitError(
            f"{where}: expected labels for protocol(s) {', '.join(dict.fromkeys(names))}, "
            "got none (every image is unlabelled); extract a labelled folder or import a "
            "labels CSV"
        )
    for kind in settings.features:
        X = data.features.get(kind)
        if X is None:
            raise FeatkitError(f"{where}: expected feature kind {kind!r}, it is not available")
        bad = ~np.isfinite(X).all(axis=1)
        if bad.any():
            first = data.paths[int(np.flatnonzero(bad)[0])]
            raise FeatkitError(
                f"{where}: expected finite {kind} features, got NaN/inf in {int(bad.sum())} "
                f"image(s) (e.g. {first}); extract them again or remove them"
            )


def warn_small_test_classes(data: CheckedData, draws: Sequence[Episode]) -> None:
    if not draws:
        return
    y_test = np.asarray(data.labels)[draws[0].test]
    classes, counts = np.unique(y_test, return_counts=True)
    small = [(int(n), _class_name(data, int(c))) for c, n in zip(classes, counts, strict=True)]
    small = sorted(item for item in small if item[0] < MIN_TEST_IMAGES)
    if small:
        listed = ", ".join(f"{c!r} ({n})" for n, c in small[:5])
        log.warning(
            "%s/%s: %d class(es) have fewer than %d test images (%s): their recall moves "
            "in steps of 20 points or more; the intervals include this test-set variance",
            data.dataset,
            data.model,
            len(small),
            MIN_TEST_IMAGES,
            listed,
        )


_ROW_NUMBER = re.compile(r"\d{6,}")


def check_same_images(
    data: CheckedData,
    path: Path,
    seen: dict[str, tuple[frozenset[str], Path]],
    allow_different_images: bool,
) -> None:
    """Refuse two stores of one dataset with different images; warn on row-number paths."""
    if data.paths and all(_ROW_NUMBER.fullmatch(p) for p in data.paths):
        log.warning(
            "store %s: images are named by row number (imported without a 'path' column): "
            "its train/test split follows row order, so it matches another store's split "
            "only if both list the same images in the same order; add a 'path' (or id) "
            "column to the labels CSV to compare stores safely",
            path,
        )
    paths = frozenset(data.paths)
    first = seen.setdefault(data.dataset, (paths, path))
    if first[0] != paths and not allow_different_images:
        only_here = len(paths - first[0])
        only_there = len(first[0] - paths)
        raise FeatkitError(
            f"store {path}: expected the images of store {first[1]} (same dataset "
            f"{data.dataset!r}), got {only_here} image(s) it lacks and {only_there} missing; "
            "models compared side by side must see the same test images "
            "(--allow-different-images to evaluate them anyway)"
        )


def check_one_store_per_model(
    data: CheckedData, path: Path, seen: dict[tuple[str, str], Path]
) -> None:
    """Refuse a second store of the same dataset and model in one probe.

    Their rows would describe the same configurations, so each write would replace the
    other store's rows in the workspace.
    """
    first = seen.setdefault((data.dataset, data.model), path)
    if first != path:
        raise FeatkitError(
            f"store {path}: expected one store per dataset and model, got a second one of "
            f"dataset {data.dataset!r} and model {data.model!r} (first: {first}); their rows "
            "would replace each other (probe them one at a time, or into other workspaces)"
        )
