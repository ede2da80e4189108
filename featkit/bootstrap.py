"""The stratified bootstrap of a test set: how far a metric would move on another test set.

A stratified resample draws, for each class with ``n_c`` test images, ``n_c`` images of that
class with replacement, so every draw keeps the class sizes of the test set. A metric row's
``test_se`` is the standard deviation of its metric over ``n_boot`` such draws.

:class:`StratifiedBootstrap` fixes the draws of one test set, so that every prediction scored
on it (each protocol and episode of a probe) is resampled alike and the draws are paid for
once. It takes one of two routes, by size:

* **counted** (up to ``COUNTS_LIMIT`` draw × image cells): it keeps how often each draw takes
  each image, ``[n_boot, N]``. A prediction's per-draw hits and predicted-class counts are
  then one matrix product. These are exactly the draws of
  :func:`stratified_bootstrap_indices` with the same seed.
* **sampled** (larger test sets): the predictions that a class's resample collects are
  multinomial, with that class's row of the confusion matrix as probabilities. Sampling
  those counts gives the same distribution in ``O(n_boot · non-zero cells)`` time and
  memory, independent of the number of images.

Example::

    bootstrap = StratifiedBootstrap(y_test, n_boot=1000, seed=0)
    bootstrap.standard_errors(y_pred)   # {"accuracy": 0.012, "balanced_accuracy": …, …}
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from featkit.errors import FeatkitError
from featkit.metrics import as_labels, paired_labels, times_drawn

DEFAULT_BOOTSTRAP = 1000
# Draw × image cells up to which the counted route keeps its table (float32: 16 MiB). Its
# cost per prediction grows with images × classes, the sampled route's with confusion cells.
COUNTS_LIMIT = 1 << 22


def stratified_bootstrap_indices(y_true: ArrayLike, n_boot: int, seed: int) -> NDArray[np.int64]:
    """``[n_boot, N]`` row indices into ``y_true``, resampled with replacement within each class.

    Column ``j`` always holds an image of the class of ``y_true[order[j]]`` (columns are
    grouped by class in sorted class order), so every draw keeps the class sizes of the
    test set: a class with 2 test images stays a class with 2 test images.
    """
    t = as_labels(y_true, "y_true")
    rng = np.random.default_rng(seed)
    parts = []
    for label in np.unique(t):
        members = np.flatnonzero(t == label)
        parts.append(members[rng.integers(0, members.size, size=(n_boot, members.size))])
    if not parts:
        return np.empty((n_boot, 0), np.int64)
    return np.concatenate(parts, axis=1).astype(np.int64)


class StratifiedBootstrap:
    """The ``n_boot`` stratified draws of one test set (``y_true``), fixed by ``seed``."""

    def __init__(
        self,
        y_true: ArrayLike,
        n_boot: int = DEFAULT_BOOTSTRAP,
        seed: int = 0,
        counts_limit: int = COUNTS_LIMIT,
    ) -> None:
        self.y_true = as_labels(y_true, "y_true")
        if self.y_true.size == 0:
            raise FeatkitError("y_true: expected at least one test label, got none")
        self.n_boot, self.seed = int(n_boot), int(seed)
        self.classes, self.sizes = np.unique(self.y_true, return_counts=True)
        self._class_of = np.searchsorted(self.classes, self.y_true)
        self._times: NDArray[np.float32] | None = None  # [n_boot, N]: the counted route
        n = self.y_true.size
        if self.n_boot * n <= counts_limit:
            draws = stratified_bootstrap_indices(self.y_true, self.n_boot, self.seed)
            self._times = times_drawn(draws, n).astype(np.float32)

    def draws(self, y_pred: ArrayLike) -> dict[str, NDArray[np.float64]]:
        """``accuracy``, ``balanced_accuracy`` and ``macro_f1`` of each draw, ``[n_boot]`` each.

        The conventions are :mod:`featkit.metrics`'s: balanced accuracy over the test
        classes, macro-F1 over the classes that are true or predicted in the draw.
        """
        t, p = paired_labels(self.y_true, y_pred)
        labels = np.union1d(self.classes, p)
        rows = np.searchsorted(labels, self.classes)  # where each test class sits in labels
        at = np.searchsorted(labels, p)  # each prediction's position in labels
        if self._times is not None:
            hits, predicted = self._counted(at, t == p, labels.size)
        else:
            hits, predicted = self._sampled(at, rows, labels.size)
        tp = np.zeros_like(predicted)
        tp[:, rows] = hits
        n_true = np.zeros(labels.size)
        n_true[rows] = self.sizes
        denom = n_true[None, :] + predicted
        f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
        present = denom > 0  # classes true or predicted in this draw
        return {
            "accuracy": hits.sum(axis=1) / t.size,
            "balanced_accuracy": (hits / self.sizes[None, :]).mean(axis=1),
            "macro_f1": f1.sum(axis=1) / present.sum(axis=1),
        }

    def standard_errors(self, y_pred: ArrayLike) -> dict[str, float]:
        """Standard deviation over the draws of each metric of :meth:`draws`; ``{}`` when
        ``n_boot < 2``."""
        if self.n_boot < 2:
            return {}
        return {name: float(v.std(ddof=1)) for name, v in self.draws(y_pred).items()}

    def _counted(
        self, predicted_at: NDArray[np.int64], right: NDArray[np.bool_], n_labels: int
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Per draw: hits per test class ``[B, C]`` and predictions per label ``[B, L]``,
        from each image's predicted label position and whether it is right."""
        assert self._times is not None
        n_classes, images = self.classes.size, np.arange(self.y_true.size)
        weights = np.zeros((images.size, n_classes + n_labels), np.float32)
        weights[images[right], self._class_of[right]] = 1.0
        weights[images, n_classes + predicted_at] = 1.0
        # Exact: integer sums below 2^24 are exact in float32.
        counts = (self._times @ weights).astype(np.float64)
        return counts[:, :n_classes], counts[:, n_classes:]

    def _sampled(
        self, predicted_at: NDArray[np.int64], rows: NDArray[np.int64], n_labels: int
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """As :meth:`_counted`, sampled from the confusion matrix's rows; ``rows``: each
        test class's label position."""
        rng = np.random.default_rng(self.seed)
        cells, counts = np.unique(self._class_of * n_labels + predicted_at, return_counts=True)
        cell_class, cell_label = np.divmod(cells, n_labels)
        hits = np.zeros((self.n_boot, self.classes.size))
        predicted = np.zeros((self.n_boot, n_labels))
        for i, size in enumerate(self.sizes):
            mine = cell_class == i
            columns, n = cell_label[mine], counts[mine]
            draws = rng.multinomial(int(size), n / n.sum(), size=self.n_boot)  # [B, cells]
            predicted[:, columns] += draws
            hits[:, i] = draws[:, columns == rows[i]].sum(axis=1)
        return hits, predicted


def bootstrap_metrics(
    y_true: ArrayLike, y_pred: ArrayLike, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0
) -> dict[str, NDArray[np.float64]]:
    """:meth:`StratifiedBootstrap.draws` of one prediction."""
    return StratifiedBootstrap(y_true, n_boot, seed).draws(y_pred)


def bootstrap_se(
    y_true: ArrayLike, y_pred: ArrayLike, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0
) -> dict[str, float]:
    """:meth:`StratifiedBootstrap.standard_errors` of one prediction: the spread a metric
    would show on another test set of the same class sizes."""
    return StratifiedBootstrap(y_true, n_boot, seed).standard_errors(y_pred)
