"""Clustering metrics for label-free protocols: Hungarian-matched accuracy, NMI and ARI.

NMI and ARI are computed from the class × cluster contingency table (as scikit-learn
defines them: arithmetic-mean normalisation, Hubert and Arabie's adjustment), with
numpy alone: importing scikit-learn costs a probe run more than all its clusterings.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from featkit.metrics import classification_metrics, confusion_counts, paired_labels


def match_clusters(y_true: ArrayLike, clusters: ArrayLike) -> NDArray[np.int64]:
    """Relabel cluster ids with the classes of a one-to-one (Hungarian) matching, ``[N]``.

    The matching maximises the number of agreeing images. Clusters left unmatched (more
    clusters than classes) get label ``-1`` and count as errors.
    """
    from scipy.optimize import linear_sum_assignment

    t, c = paired_labels(y_true, clusters)
    classes, cluster_ids = np.unique(t), np.unique(c)
    table = confusion_counts(c, t, labels=np.union1d(cluster_ids, classes).tolist())
    order = np.union1d(cluster_ids, classes)
    rows = np.searchsorted(order, cluster_ids)
    cols = np.searchsorted(order, classes)
    sub = table[np.ix_(rows, cols)]
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
