"""Rows in bounded memory: a matrix-like read one row block at a time, rows normalised
to unit length, evenly spread samples, and the running top-k merge of block results."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from featkit.errors import FeatkitError


class MatrixLike(Protocol):
    """A 2-D array read by row slices: a numpy array or an ``h5py.Dataset``."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, key: Any) -> Any: ...


def normalize_rows(block: np.ndarray) -> np.ndarray:
    """``block`` [b, D] (any float dtype) as float32 rows of unit L2 norm (zero rows stay 0)."""
    x = np.array(block, dtype=np.float32, copy=True, order="C")
    if x.ndim != 2:
        raise FeatkitError(f"features: expected a 2-D array [rows, dim], got shape {x.shape}")
    squares = np.einsum("ij,ij->i", x, x)  # a NaN or inf anywhere in a row shows up here
    if not np.isfinite(squares).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        if bad.size:
            raise FeatkitError(
                f"features: expected finite values, got NaN/inf in {bad.size} row(s) of this "
                f"block (first at block row {int(bad[0])}); leave failed images out"
            )
        wide = x.astype(np.float64)  # finite values whose squares overflow float32
        squares = np.einsum("ij,ij->i", wide, wide)
    norms = np.sqrt(squares).astype(np.float32)[:, None]
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def row_blocks(data: MatrixLike, block_rows: int) -> Iterable[np.ndarray]:
    """Consecutive row slices of ``data``: HDF5 reads contiguous hyperslabs, never index lists."""
    n = int(data.shape[0])
    for start in range(0, n, block_rows):
        yield np.asarray(data[start : min(n, start + block_rows)])


def spread_sample(data: MatrixLike, n_sample: int, n_chunks: int = 64) -> np.ndarray:
    """``n_sample`` rows of ``data`` read as ``n_chunks`` evenly spaced contiguous slices.

    Stores are sorted by path, hence usually by class: a prefix would train k-means on
    a few classes only, while a fancy index of random rows is slow on HDF5.
    """
    n = int(data.shape[0])
    if n_sample >= n:
        return np.asarray(data[:])
    n_chunks = max(1, min(n_chunks, n_sample))
    starts = np.linspace(0, n, n_chunks, endpoint=False).astype(np.int64)
    sizes = np.full(n_chunks, n_sample // n_chunks)
    sizes[: n_sample % n_chunks] += 1
    return np.concatenate(
        [np.asarray(data[int(s) : int(s) + int(m)]) for s, m in zip(starts, sizes, strict=True)]
    )


def best_k(sims: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest similarities of each row (unordered) with their ids."""
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return np.take_along_axis(sims, top, axis=1), np.take_along_axis(idx, top, axis=1)


def descending(sims: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row sorted by similarity, highest first (stable: ties keep their order)."""
    order = np.argsort(-sims, axis=1, kind="stable")
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(idx, order, axis=1)
