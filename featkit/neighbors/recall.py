"""How close an approximate index comes to exact search: recall@k, and the synthetic
clustered sets on which the documented IVF recall is measured."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from featkit.errors import FeatkitError
from featkit.progress import SILENT, Progress

if TYPE_CHECKING:
    from featkit.neighbors.blocks import MatrixLike
    from featkit.neighbors.search import NeighborIndex

#: recall@20 that the default IVF settings reach on the clustered synthetic sets of
#: the tests and the benchmark (measured values are in docs/performance.md).
DOCUMENTED_IVF_RECALL = 0.95


def recall_at_k(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k (both [q, k]; ``-1`` never counts).

    This is the usual "k-recall@k" of ANN benchmarks: 1.0 when the approximate index
    returns the same k rows as exact search, in any order.
    """
    if approx_idx.shape != exact_idx.shape or approx_idx.ndim != 2:
        raise FeatkitError(
            f"recall: expected two [q, k] arrays of one shape, got {approx_idx.shape} "
            f"and {exact_idx.shape}"
        )
    q, k = exact_idx.shape
    if q == 0 or k == 0:
        raise FeatkitError(f"recall: expected at least one query and k ≥ 1, got shape {(q, k)}")
    # Sort both rows and count common members with one vectorised membership test per row.
    a = np.sort(approx_idx, axis=1)
    e = np.sort(exact_idx, axis=1)
    hits = 0
    for row_a, row_e in zip(a, e, strict=True):
        hits += int(np.isin(row_a[row_a >= 0], row_e, assume_unique=False).sum())
    return hits / (q * k)


def measure_recall(
    approx: NeighborIndex,
    exact: NeighborIndex,
    queries: MatrixLike,
    k: int = 20,
    *,
    progress: Progress = SILENT,
) -> float:
    """recall@k of ``approx`` against ``exact`` (both fitted on the same rows) on ``queries``."""
    if approx.n_rows_ != exact.n_rows_:
        raise FeatkitError(
            f"recall: expected two indexes over the same rows, got {approx.n_rows_} "
            f"and {exact.n_rows_} rows"
        )
    _, approx_idx = approx.search(queries, k, progress=progress)
    _, exact_idx = exact.search(queries, k, progress=progress)
    return recall_at_k(approx_idx, exact_idx)


def clustered_embeddings(
    n: int,
    dim: int,
    *,
    n_clusters: int = 1000,
    noise: float = 1.0,
    seed: int = 0,
    start: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic embeddings shaped like a labelled image set: ``(x [n, dim] float32, y [n])``.

    Rows are ``centre[y] + noise · ε`` with ``n_clusters`` Gaussian centres (drawn from
    ``seed``) and ``ε ~ N(0, I)``; with ``noise = 1`` a row's cosine to its centre is
    about 0.7, as for images and their class mean in DINO features. ``start`` seeds
    the rows, so a large set is written block by block (``start`` = the block's first
    row) without holding it. These are the sets the documented recall refers to.
    """
    centres = np.random.default_rng(seed).standard_normal((n_clusters, dim), dtype=np.float32)
    rng = np.random.default_rng((seed, start))
    labels = rng.integers(0, n_clusters, n)
    x = centres[labels]
    x += np.float32(noise) * rng.standard_normal((n, dim), dtype=np.float32)
    return x, labels
