"""Clustering metrics for label-free protocols: Hungarian-matched accuracy, NMI and ARI.

NMI and ARI are computed from the class × cluster contingency table (as scikit-learn
defines them: arithmetic-mean normalisation, Hubert and Arabie's adjustment), with
numpy alone: importing scikit-learn costs a probe run more than all its clusterings.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from featkit.metrics import classification_metrics, confusion_counts, paired_labels

# Up to this many classes (or clusters) a matching is solved here, not by scipy.
SMALL_MATCHING = 64


def best_matching(weights: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Rows and columns ``(r, c)`` of a one-to-one matching of maximum total weight, with
    ``min(n, m)`` pairs of an ``[n, m]`` matrix, rows in increasing order.

    The Hungarian method by shortest augmenting paths (Kuhn-Munkres with potentials,
    ``O(n²·m)``): each row joins by a Dijkstra-like search over the columns, one
    vectorised step per column reached. Written here because scipy's
    ``linear_sum_assignment`` costs importing ``scipy.optimize``, 0.55 s of every probe
    process (each worker of a parallel probe pays it), more than all its matchings of
    clusters to classes; ``tests/test_metrics.py`` checks both against each other and
    against every permutation of small matrices. Up to ``SMALL_MATCHING`` classes it
    takes 2-20 ms a matching; :func:`match_clusters` leaves larger ones to scipy
    (0.6 s at 200 classes here against 1 ms).
    """
    matrix = np.asarray(weights, dtype=np.float64)
    transposed = matrix.shape[0] > matrix.shape[1]
    cost = -(matrix.T if transposed else matrix)  # rows ≤ columns, minimised
    n, m = cost.shape
    # Column 0 is a virtual start; owner[j] is the row (1-based) matched to column j.
    row_potential, column_potential = np.zeros(n + 1), np.zeros(m + 1)
    owner = np.zeros(m + 1, np.int64)
    came_from = np.zeros(m + 1, np.int64)
    for row in range(1, n + 1):
        owner[0], column = row, 0
        slack = np.full(m + 1, np.inf)
        reached = np.zeros(m + 1, bool)
        while True:
            reached[column] = True
            current = owner[column]
            free = ~reached[1:]
            reduced = cost[current - 1] - row_potential[current] - column_potential[1:]
            closer = free & (reduced < slack[1:])
            slack[1:][closer] = reduced[closer]
            came_from[1:][closer] = column
            candidates = np.where(free, slack[1:], np.inf)
            nearest = int(np.argmin(candidates)) + 1
            delta = candidates[nearest - 1]
            row_potential[owner[reached]] += delta  # distinct rows: one per reached column
            column_potential[reached] -= delta
            slack[1:][free] -= delta
            column = nearest
            if owner[column] == 0:
                break
        while column:  # flip the matching along the path back to the virtual column
            previous = came_from[column]
            owner[column] = owner[previous]
            column = previous
    columns = np.flatnonzero(owner[1:] > 0)
    rows = owner[1:][columns] - 1
    if transposed:
        rows, columns = columns, rows
    order = np.argsort(rows)
    return rows[order].astype(np.int64), columns[order].astype(np.int64)


def match_clusters(y_true: ArrayLike, clusters: ArrayLike) -> NDArray[np.int64]:
    """Relabel cluster ids with the classes of a one-to-one (Hungarian) matching, ``[N]``.

    The matching maximises the number of agreeing images. Clusters left unmatched (more
    clusters than classes) get label ``-1`` and count as errors.
    """
    t, c = paired_labels(y_true, clusters)
    classes, cluster_ids = np.unique(t), np.unique(c)
    table = confusion_counts(c, t, labels=np.union1d(cluster_ids, classes).tolist())
    order = np.union1d(cluster_ids, classes)
    rows = np.searchsorted(order, cluster_ids)
    cols = np.searchsorted(order, classes)
    sub = table[np.ix_(rows, cols)]
    if min(sub.shape) <= SMALL_MATCHING:
        r, k = best_matching(sub)
    else:
        from scipy.optimize import linear_sum_assignment

        r, k = linear_sum_assignment(sub, maximize=True)
    mapping = {int(cluster_ids[i]): int(classes[j]) for i, j in zip(r, k, strict=True)}
    return np.array([mapping.get(int(v), -1) for v in c], dtype=np.int64)


def _contingency(t: NDArray[np.int64], c: NDArray[np.int64]) -> NDArray[np.float64]:
    """Counts of (class, cluster) pairs, ``[classes, clusters]``."""
    _, t_idx = np.unique(t, return_inverse=True)
    _, c_idx = np.unique(c, return_inverse=True)
    table = np.zeros((t_idx.max() + 1, c_idx.max() + 1))
    np.add.at(table, (t_idx, c_idx), 1.0)
    return table


def adjusted_rand_index(y_true: ArrayLike, clusters: ArrayLike) -> float:
    """Hubert and Arabie's ARI from the pair counts (1 for identical partitions)."""
    table = _contingency(*paired_labels(y_true, clusters))
    n = table.sum()
    squares = float((table**2).sum())
    # Pairs of images: together in both partitions, in the clusters only, in the classes only.
    both = squares - n
    clusters_only = float(table.sum(axis=0) @ table.sum(axis=0)) - squares
    classes_only = float(table.sum(axis=1) @ table.sum(axis=1)) - squares
    neither = n * n - clusters_only - classes_only - squares
    if clusters_only == 0 and classes_only == 0:
        return 1.0
    return float(
        2.0
        * (both * neither - classes_only * clusters_only)
        / (
            (both + classes_only) * (classes_only + neither)
            + (both + clusters_only) * (clusters_only + neither)
        )
    )


def _entropy(counts: NDArray[np.float64]) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_information(y_true: ArrayLike, clusters: ArrayLike) -> float:
    """Mutual information over the arithmetic mean of the two entropies (sklearn's default)."""
    table = _contingency(*paired_labels(y_true, clusters))
    if table.shape[0] == table.shape[1] == 1:
        return 1.0  # one class, one cluster: the same partition
    n = table.sum()
    rows, cols = table.sum(axis=1, keepdims=True), table.sum(axis=0, keepdims=True)
    nz = table > 0
    mi = float((table[nz] / n * np.log(table[nz] * n / (rows @ cols)[nz])).sum())
    if mi <= 0.0:
        return 0.0
    mean_entropy = (_entropy(rows.ravel()) + _entropy(cols.ravel())) / 2.0
    return mi / max(mean_entropy, float(np.finfo(np.float64).eps))


def clustering_metrics(y_true: ArrayLike, clusters: ArrayLike) -> dict[str, float]:
    """Hungarian-matched ``accuracy``/``balanced_accuracy``/``macro_f1``, plus ``nmi``, ``ari``."""
    t, c = paired_labels(y_true, clusters)
    matched = match_clusters(t, c)
    result = classification_metrics(t, matched)
    result["nmi"] = normalized_mutual_information(t, c)
    result["ari"] = adjusted_rand_index(t, c)
    return result
