"""Exact cosine top-k that streams the database instead of holding it (for sets larger
than memory; :class:`featkit.neighbors.search.NeighborIndex` holds its rows)."""

from __future__ import annotations

import numpy as np

from featkit.errors import FeatkitError
from featkit.neighbors.blocks import MatrixLike, best_k, descending, normalize_rows, row_blocks
from featkit.progress import SILENT, Progress


def streamed_exact_search(
    database: MatrixLike,
    queries: MatrixLike,
    k: int,
    *,
    block_rows: int = 65_536,
    progress: Progress = SILENT,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-``k`` without holding the database: ``(sims [q, k], idx [q, k])``.

    The database (an array or ``h5py.Dataset`` [N, D]) is read ``block_rows`` rows at a
    time; each block is searched with faiss's BLAS kernel (``faiss.knn``) and merged into
    the running top-``k``. Memory is the queries, one block and ``q × k`` results,
    whatever ``N`` is; the same neighbours as :class:`NeighborIndex` ``"exact"`` (ties
    aside), at the cost of reading the database once per call instead of holding it.
    """
    import faiss

    n, dim = (int(s) for s in database.shape)
    q = normalize_rows(np.asarray(queries[:]))
    if q.shape[1] != dim:
        raise FeatkitError(f"queries: expected {dim} columns (the database's), got {q.shape[1]}")
    if not 1 <= k <= n:
        raise FeatkitError(f"k: expected an integer in [1, {n}] (the database rows), got {k}")
    best_s = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
    best_i = np.full((q.shape[0], k), -1, dtype=np.int64)
    task = progress.task("search (streamed exact)", n)
    try:
        start = 0
        for block in row_blocks(database, block_rows):
            x = normalize_rows(block)
            kk = min(k, x.shape[0])
            s, i = faiss.knn(q, x, kk, metric=faiss.METRIC_INNER_PRODUCT)
            best_s, best_i = best_k(
                np.concatenate([best_s, s], axis=1), np.concatenate([best_i, i + start], axis=1), k
            )
            start += x.shape[0]
            task.advance(x.shape[0])
    finally:
        task.close()
    return descending(best_s, best_i)
