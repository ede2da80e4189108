"""Train/test splits and few-shot episodes: a function of (relative paths, labels, seed).

Every model and protocol (and fine-tuning) must be compared on the same images, so
nothing here looks at features or row order. Each image gets a pseudo-random key,
``blake2b(seed, purpose, relative path)``; within a class, images are taken in key
order. Two stores of the same images from different models, or with rows in another
order, therefore give the same images in every split and episode.

Rules (also in docs/protocols.md):

* **Explicit splits** (``train``/``val``/``test`` from folders or a ``split`` column)
  are used as given. With a ``test`` split, ``train`` and ``val`` together are the
  training set (a protocol that needs a validation set, like ``logistic``, holds one
  out of it itself, so every protocol sees the same training images). Without ``test``
  but with ``val``, ``val`` is the test set (ImageNet-style ``train``/``val`` folders).
  With ``train`` only, the stratified split below is made among those images. An image
  without a split when others have one is an error: the intent is ambiguous.
* **Stratified split** otherwise: per class, ``test_fraction · n`` rounded half up images are
  test, at least 1 and at most ``n − 1`` for every class with at least 2 images; a class
  with a single image keeps it for training.
* Unlabelled images (label ``-1``) are in neither set.
* **Episodes**: for ``k`` shots, each class contributes its first ``k`` training images
  in the episode's key order, so the 1-shot set is inside the 5-shot set of the same
  episode (nested). A class with fewer than ``k`` images uses all it has; a warning
  says so and the smallest per-class count is recorded as the *effective shots*. A
  fraction (``10%``) takes ``max(1, f · n rounded half up)`` images per class in the same order.
  ``all`` is the whole training set and has a single episode; ``0`` (label-free
  protocols) has no training images and is evaluated on the test set.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from featkit.errors import FeatkitError
from featkit.evaluation.shots import Shots, parse_shots

log = logging.getLogger("featkit")

DEFAULT_TEST_FRACTION = 0.2
DEFAULT_EPISODES = 10
SPLIT_NAMES = ("train", "val", "test")


def round_half_up(x: float) -> int:
    """``2.5 → 3`` (Python's ``round`` gives 2: half to even); 1e-9 absorbs float error
    such as ``0.3 · 5 = 1.4999999999999998``."""
    return math.floor(x + 0.5 + 1e-9)


def image_keys(paths: Sequence[str], seed: int, purpose: str) -> NDArray[np.uint64]:
    """A pseudo-random 64-bit key per relative path; depends on nothing else."""
    prefix = f"{int(seed)}\x00{purpose}\x00".encode()
    keys = np.empty(len(paths), dtype=np.uint64)
    for i, path in enumerate(paths):
        digest = hashlib.blake2b(prefix + path.encode(), digest_size=8).digest()
        keys[i] = int.from_bytes(digest, "little")
    return keys


def _by_class(
    indices: NDArray[np.int64], labels: NDArray[np.int64], keys: NDArray[np.uint64]
) -> dict[int, NDArray[np.int64]]:
    """Class → its indices in key order (ties, i.e. duplicate paths, broken by index)."""
    groups: dict[int, NDArray[np.int64]] = {}
    for label in np.unique(labels[indices]):
        members = indices[labels[indices] == label]
        groups[int(label)] = members[np.lexsort((members, keys[members]))]
    return groups


def _check_inputs(
    paths: Sequence[str], labels: ArrayLike, splits: Sequence[str] | None
) -> NDArray[np.int64]:
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(paths):
        raise FeatkitError(f"labels: expected one per path ({len(paths)}), got shape {y.shape}")
    if splits is not None and len(splits) != len(paths):
        raise FeatkitError(f"splits: expected one per path ({len(paths)}), got {len(splits)}")
    return y.astype(np.int64, copy=False)


def train_test_split(
    paths: Sequence[str],
    labels: ArrayLike,
    explicit_splits: Sequence[str] | None = None,
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Sorted row indices ``(train, test)`` of the labelled images (see the module rules)."""
    y = _check_inputs(paths, labels, explicit_splits)
    if not 0.0 < test_fraction < 1.0:
        raise FeatkitError(f"test fraction: expected a value in (0, 1), got {test_fraction}")
    labelled = np.flatnonzero(y >= 0)
    names = np.asarray(explicit_splits if explicit_splits is not None else [""] * len(paths))
    named = {str(s) for s in names[labelled]} - {""}
    if named:
        unknown = named - set(SPLIT_NAMES)
        if unknown:
            raise FeatkitError(
                f"splits: expected train/val/test, got {', '.join(sorted(unknown))!s}"
            )
        missing = labelled[names[labelled] == ""]
        if missing.size:
            raise FeatkitError(
                f"splits: expected every labelled image to name a split when some do, "
                f"got {missing.size} without one (e.g. {paths[int(missing[0])]})"
            )
        if "test" in named:
            train = labelled[np.isin(names[labelled], ["train", "val"])]
            return train, labelled[names[labelled] == "test"]
        if "val" in named:
            return labelled[names[labelled] == "train"], labelled[names[labelled] == "val"]
    keys = image_keys(paths, seed, "test-split")
    test_parts: list[NDArray[np.int64]] = []
    for members in _by_class(labelled, y, keys).values():
        n = members.size
        if n >= 2:
            n_test = min(max(round_half_up(test_fraction * n), 1), n - 1)
            test_parts.append(members[:n_test])
    test = np.sort(np.concatenate(test_parts)) if test_parts else np.empty(0, np.int64)
    return np.setdiff1d(labelled, test), test


@dataclass(frozen=True)
class Episode:
    """One training/test draw; indices are sorted rows of the arrays given."""

    shots: Shots
    episode: int
    train: NDArray[np.int64]
    test: NDArray[np.int64]
    effective_shots: int  # smallest number of training images any class got (0 for "0")


def _take(shots: Shots, n: int) -> int:
    if shots.kind == "count":
        return min(int(shots.value), n)
    if shots.kind == "fraction":
        return min(max(round_half_up(shots.value * n), 1), n)
    return n


def sample_episode(
    paths: Sequence[str],
    labels: ArrayLike,
    train: NDArray[np.int64],
    shots: Shots,
    episode: int,
    seed: int = 0,
) -> tuple[NDArray[np.int64], int]:
    """Training rows of one episode and its effective shots (nested across shots)."""
    y = _check_inputs(paths, labels, None)
    if shots.kind == "zero":
        return np.empty(0, np.int64), 0
    return _select(_episode_order(paths, y, train, episode, seed), shots)


def _episode_order(
    paths: Sequence[str], y: NDArray[np.int64], train: NDArray[np.int64], episode: int, seed: int
) -> dict[int, NDArray[np.int64]]:
    keys = image_keys(paths, seed, f"episode-{episode}")
    return _by_class(np.asarray(train, np.int64), y, keys)


def _select(groups: dict[int, NDArray[np.int64]], shots: Shots) -> tuple[NDArray[np.int64], int]:
    if shots.kind == "zero" or not groups:
        return np.empty(0, np.int64), 0
    chosen = [members[: _take(shots, members.size)] for members in groups.values()]
    return np.sort(np.concatenate(chosen)), min(c.size for c in chosen)


def _check_shots(
    shots: Sequence[Shots], counts: dict[int, int], label_names: Sequence[str] | None, warn: bool
) -> None:
    def name(label: int) -> str:
        return label_names[label] if label_names and 0 <= label < len(label_names) else str(label)

    largest = max(counts.values())
    for s in shots:
        if s.kind != "count":
            continue
        k = int(s.value)
        if k > largest:
            raise FeatkitError(
                f"--shots {k}: expected at most {largest} (the largest class's training "
                f"images), got {k} — every class has fewer"
            )
        short = sorted((n, name(c)) for c, n in counts.items() if n < k)
        if short and warn:
            listed = ", ".join(f"{c!r} ({n})" for n, c in short[:5])
            more = f" and {len(short) - 5} more" if len(short) > 5 else ""
            log.warning(
                "%d-shot: %d class(es) have fewer training images and use all they have: "
                "%s%s; the effective shots are recorded",
                k,
                len(short),
                listed,
                more,
            )


def episodes(
    paths: Sequence[str],
    labels: ArrayLike,
    splits: Sequence[str] | None = None,
    shots: Sequence[Shots] | str = "1,5,10,all",
    n_episodes: int = DEFAULT_EPISODES,
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    label_names: Sequence[str] | None = None,
    *,
    warn: bool = True,
    n_splits: int = 1,
) -> Iterator[Episode]:
    """Every (shots, episode) draw of a data set: the one entry point for all evaluations.

    ``paths``/``labels``/``splits`` are per row (a store's ``paths()``, ``labels()``,
    ``splits()``); the yielded indices refer to those rows. Few-shot and fraction
    shots get ``n_episodes`` episodes (0 … n−1), ``all`` one, ``0`` ``n_episodes``
    (label-free protocols vary their own seed per episode). With ``n_splits`` > 1 the
    ``all`` draws are the folds of :func:`stratified_folds` instead (episode = fold), so
    every labelled image is tested once. Raises FeatkitError when
    fewer than two classes have training images or ``k`` exceeds every class; logs a
    warning (unless ``warn=False``) when ``k`` exceeds some class.
    """
    shot_list = parse_shots(shots) if isinstance(shots, str) else tuple(shots)
    if n_episodes < 1:
        raise FeatkitError(f"--episodes: expected at least 1, got {n_episodes}")
    if n_splits < 1:
        raise FeatkitError(f"--splits: expected at least 1, got {n_splits}")
    y = _check_inputs(paths, labels, splits)
    if not np.any(y >= 0):
        raise FeatkitError("labels: expected labelled images, got none (every label is -1)")
    train, test = train_test_split(paths, y, splits, seed, test_fraction)
    classes, counts = np.unique(y[train], return_counts=True)
    if classes.size < 2:
        raise FeatkitError(
            f"labels: expected at least 2 classes with training images, got {classes.size}"
        )
    if test.size == 0:
        raise FeatkitError("test split: expected at least one test image, got none")
    per_class = dict(zip(classes.tolist(), counts.tolist(), strict=True))
    _check_shots(shot_list, per_class, label_names, warn)
    orders: dict[int, dict[int, NDArray[np.int64]]] = {}  # episode → class → rows in key order
    for s in shot_list:
        if s.kind == "all" and n_splits > 1:
            yield from _folds(paths, y, splits, n_splits, seed)
            continue
        for e in range(1 if s.kind == "all" else n_episodes):
            if s.kind in ("count", "fraction") and e not in orders:
                orders[e] = _episode_order(paths, y, train, e, seed)
            if s.kind == "all":
                chosen, effective = train, int(counts.min())
            else:
                chosen, effective = _select(orders.get(e, {}), s)
            yield Episode(s, e, chosen, test, effective)


@dataclass(frozen=True)
class Sweep:
    """Which draws an evaluation makes: the shots, the episodes per few-shot setting, the
    seed and the hold-out fraction of the train/test split.

    The probe (``ProbeSettings.sweep``) and the fine-tune draw their episodes from this one
    object, so equal sweeps give both stages exactly the same images. ``shots`` is parsed
    (:func:`parse_shots`); any sequence of them is kept as a tuple.
    """

    shots: tuple[Shots, ...] = parse_shots("1,5,10,all")
    episodes: int = DEFAULT_EPISODES
    seed: int = 0
    test_fraction: float = DEFAULT_TEST_FRACTION

    def __post_init__(self) -> None:
        # A tuple, so equal sweeps compare and hash equal (frozen: the one normalising write).
        object.__setattr__(self, "shots", tuple(self.shots))

    def draws(
        self,
        paths: Sequence[str],
        labels: ArrayLike,
        splits: Sequence[str] | None = None,
        label_names: Sequence[str] | None = None,
        *,
        warn: bool = True,
        n_splits: int = 1,
    ) -> Iterator[Episode]:
        """The sweep's draws of one data set (:func:`episodes`, in ``shots`` order)."""
        return episodes(
            paths,
            labels,
            splits,
            self.shots,
            self.episodes,
            self.seed,
            self.test_fraction,
            label_names,
            warn=warn,
            n_splits=n_splits,
        )


def stratified_folds(
    paths: Sequence[str],
    labels: ArrayLike,
    n_splits: int,
    seed: int = 0,
) -> list[tuple[NDArray[np.int64], NDArray[np.int64]]]:
    """``n_splits`` stratified folds ``(train, test)`` of the labelled images.

    Within each class, images in ``test-split`` key order are dealt into ``n_splits``
    near-equal consecutive chunks; fold ``r`` tests chunk ``r`` and trains on the rest, so
    every labelled image of a class with at least 2 images is tested exactly once. A class
    with one image is always in training (as in :func:`train_test_split`).
    """
    y = _check_inputs(paths, labels, None)
    labelled = np.flatnonzero(y >= 0)
    keys = image_keys(paths, seed, "test-split")
    chunks: list[list[NDArray[np.int64]]] = [[] for _ in range(n_splits)]
    for members in _by_class(labelled, y, keys).values():
        if members.size >= 2:
            for r, part in enumerate(np.array_split(members, n_splits)):
                chunks[r].append(part)
    folds = []
    for parts in chunks:
        test = np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)
        folds.append((np.setdiff1d(labelled, test), test))
    return folds


def _folds(
    paths: Sequence[str],
    y: NDArray[np.int64],
    splits: Sequence[str] | None,
    n_splits: int,
    seed: int,
) -> Iterator[Episode]:
    if splits is not None and any(s for s in splits):
        raise FeatkitError(
            "--splits: expected data without named train/val/test splits (folds are drawn "
            "over all labelled images), got named splits"
        )
    for r, (train, test) in enumerate(stratified_folds(paths, y, n_splits, seed)):
        if test.size == 0:
            raise FeatkitError(f"--splits {n_splits}: fold {r} has no test image; use fewer")
        counts = np.unique(y[train], return_counts=True)[1]
        yield Episode(Shots("all"), r, train, test, int(counts.min()))
