"""Cosine top-k neighbours over millions of embeddings, in bounded memory.

Every neighbour search in featkit (the k-NN protocol, retrieval, duplicates) goes
through :class:`NeighborIndex`. Rows are L2-normalised float32 vectors, so inner
product is cosine similarity. The index is exact (``faiss.IndexFlatIP``, searched in
query blocks) at every size unless an approximate kind is asked for by name: an
approximate index changes the numbers a k-NN evaluation reports, so it is never chosen
silently (``kind="auto"`` is kept as another name for ``"exact"``).

Memory model: the index holds the database once as float32 (``N × D × 4`` bytes,
allocated once at its final size; IVF adds 8 bytes per row for ids, and 8 more while
it is built). Everything else is bounded by ``block_rows``: the database is read,
converted and normalised one slice at a time (an ``h5py`` dataset is never loaded
whole, float16 rows become float32 a block at a time), queries are searched one block
at a time, and the results are ``q × k``. Nothing is ever ``N × N`` or ``q × N``.

Approximate indexes and their settings (faiss names in brackets):

``ivf`` (``IndexIVFFlat``)
    k-means partitions the rows into ``nlist`` lists (default: the power of two
    nearest ``sqrt(N)``, at most ``N / 39`` so every centroid has the 39 training
    points faiss asks for); a query scans the ``nprobe`` nearest lists (default
    ``max(1, nlist // 16)``, about 1/16 of the data). Search is list-major: the queries
    of a block that probe one list are scored against it with one matrix product
    (BLAS), which on CPUs is ~10× faster per row than faiss's query-by-query scan of
    the lists, and returns the same neighbours. The k-means is trained on
    ``train_rows`` rows (default ``min(N, 64 · nlist)``) read as evenly spread
    contiguous slices, so a store sorted by class still trains on every class.
    Documented figure: recall@20 ≥
    :data:`featkit.neighbors.recall.DOCUMENTED_IVF_RECALL` against exact search on the
    clustered synthetic set of ``tests/test_neighbors.py`` and ``benchmarks/scale.py``;
    measure it on your data with :func:`featkit.neighbors.recall.measure_recall`
    and raise ``nprobe`` if it is too low.
``hnsw`` (``IndexHNSWFlat``)
    a graph index with ``hnsw_m`` links per node (default 32), built with
    ``ef_construction`` (default 80) and searched with ``ef_search`` (default 128,
    raised to ``k`` when smaller). No training, faster queries than IVF, but a slow
    single-threaded-ish build and about ``hnsw_m · 8`` extra bytes per row.

Example::

    index = NeighborIndex().fit(train_features)          # exact at every size
    sims, idx = index.search(test_features, k=20)        # [q, 20] float32, int64
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal, cast

import numpy as np

from featkit.errors import FeatkitError
from featkit.neighbors.blocks import (
    MatrixLike,
    best_k,
    descending,
    normalize_rows,
    row_blocks,
    spread_sample,
)
from featkit.progress import SILENT, Progress

IndexKind = Literal["auto", "exact", "ivf", "hnsw"]
KINDS: tuple[str, ...] = ("auto", "exact", "ivf", "hnsw")

#: Queries per IVF search block (its candidate buffer is block × nprobe × k).
IVF_QUERY_BLOCK = 4096

#: faiss warns (on stderr) when a centroid gets fewer training points than this.
_MIN_POINTS_PER_CENTROID = 39


def resolve_kind(kind: str, n_rows: int) -> str:
    """The index kind used for ``n_rows`` rows: ``"auto"`` is exact at every size."""
    if kind not in KINDS:
        raise FeatkitError(f"index kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    return "exact" if kind == "auto" else kind


def default_nlist(n_rows: int) -> int:
    """Inverted lists for ``n_rows`` rows: the power of two nearest sqrt(N), ≤ N / 39."""
    nlist = 2 ** round(math.log2(max(1.0, math.sqrt(n_rows))))
    return int(max(1, min(nlist, n_rows // _MIN_POINTS_PER_CENTROID)))


class NeighborIndex:
    """Cosine top-k over L2-normalised float32 rows; exact, IVF or HNSW (see the module doc).

    ``__init__`` only stores settings; :meth:`fit` builds the index from a matrix-like
    (numpy array or ``h5py.Dataset``) read in blocks; :meth:`add` appends more rows;
    :meth:`search` returns ``(sims [q, k] float32, idx [q, k] int64)`` with rows sorted
    by decreasing similarity. An approximate index returns ``idx = -1`` (and
    ``sims = -inf``) when the probed lists hold fewer than ``k`` rows.

    Learned state: ``kind_`` (the resolved kind), ``index_`` (the faiss index),
    ``n_rows_``, ``dim_``, and for IVF ``nlist_`` and ``nprobe_``.
    """

    def __init__(
        self,
        kind: str = "exact",
        *,
        nlist: int | None = None,
        nprobe: int | None = None,
        train_rows: int | None = None,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 128,
        block_rows: int = 32_768,
        seed: int = 0,
    ) -> None:
        self.kind = kind
        self.nlist = nlist
        self.nprobe = nprobe
        self.train_rows = train_rows
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.block_rows = block_rows
        self.seed = seed

    def __getstate__(self) -> dict[str, Any]:
        # faiss indexes do not pickle; their serialised bytes do (N × D × 4 of them).
        import faiss

        state = self.__dict__.copy()
        state.pop("_list_views", None)
        state["_lists_of"] = -1
        if "index_" in state:
            state["index_"] = faiss.serialize_index(self.index_)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        import faiss

        if "index_" in state:
            state["index_"] = faiss.deserialize_index(state["index_"])
        self.__dict__.update(state)

    # -- building ---------------------------------------------------------------------

    def fit(self, data: MatrixLike, *, progress: Progress = SILENT) -> NeighborIndex:
        """Build the index over every row of ``data`` [N, D], read ``block_rows`` at a time."""
        import faiss

        shape = tuple(int(s) for s in data.shape)
        if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
            raise FeatkitError(f"features: expected a non-empty 2-D array [rows, dim], got {shape}")
        n, dim = shape
        kind = resolve_kind(self.kind, n)
        if self.block_rows < 1:
            raise FeatkitError(f"block_rows: expected a positive integer, got {self.block_rows}")
        self.kind_ = kind
        self.dim_ = dim
        self.n_rows_ = 0
        self._lists_of = -1  # views of a previous fit's lists point into freed memory
        self.index_: Any
        if kind == "ivf":
            self.index_ = self._trained_ivf(data, n, dim)
            return self._fill_ivf(data, progress)
        if kind == "exact":
            self.index_ = faiss.IndexFlatIP(dim)
            storage = self.index_
        else:
            if self.hnsw_m < 2:
                raise FeatkitError(f"hnsw_m: expected an integer ≥ 2, got {self.hnsw_m}")
            self.index_ = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index_.hnsw.efConstruction = self.ef_construction
            storage = faiss.downcast_index(self.index_.storage)
        # Reserve the row buffer: appended blocks would grow it by doubling, and each
        # reallocation holds old and new buffers at once (up to 3× the features).
        storage.codes.resize(n * dim * 4)
        storage.codes.resize(0)  # std::vector keeps its capacity
        return self.add(data, progress=progress)

    def _fill_ivf(self, data: MatrixLike, progress: Progress) -> NeighborIndex:
        """Add every row to the trained IVF index with each list allocated once.

        Pass 1 assigns rows to lists (8 bytes per row kept); the lists are then sized
        exactly and pass 2 reads the blocks again and appends them with the stored
        assignment. Growing the lists row by row instead would leave them up to 2×
        over-allocated.
        """
        import faiss

        n = int(data.shape[0])
        assign = np.empty(n, dtype=np.int64)
        task = progress.task("index (ivf: assign, add)", 2 * n)
        try:
            start = 0
            for block in row_blocks(data, self.block_rows):
                x = normalize_rows(block)
                _, nearest = self.index_.quantizer.search(x, 1)
                assign[start : start + x.shape[0]] = nearest[:, 0]
                start += x.shape[0]
                task.advance(x.shape[0])
            invlists = self.index_.invlists
            for lst, size in enumerate(np.bincount(assign, minlength=self.nlist_)):
                invlists.resize(lst, int(size))
                invlists.resize(lst, 0)  # capacity stays
            start = 0
            for block in row_blocks(data, self.block_rows):
                x = normalize_rows(block)
                lists = np.ascontiguousarray(assign[start : start + x.shape[0]])
                self.index_.add_core(x.shape[0], faiss.swig_ptr(x), None, faiss.swig_ptr(lists))
                start += x.shape[0]
                self.n_rows_ = start
                task.advance(x.shape[0])
        finally:
            task.close()
        return self

    def _trained_ivf(self, data: MatrixLike, n: int, dim: int) -> Any:
        import faiss

        nlist = self.nlist if self.nlist is not None else default_nlist(n)
        if not 1 <= nlist <= n:
            raise FeatkitError(f"nlist: expected an integer in [1, {n}] (rows), got {nlist}")
        nprobe = self.nprobe if self.nprobe is not None else max(1, nlist // 16)
        if not 1 <= nprobe <= nlist:
            raise FeatkitError(f"nprobe: expected an integer in [1, nlist={nlist}], got {nprobe}")
        train_rows = self.train_rows if self.train_rows is not None else 64 * nlist
        # Fewer than 39 points per centroid makes faiss print a warning: never ask for it.
        train_rows = min(n, max(train_rows, _MIN_POINTS_PER_CENTROID * nlist))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = self.seed
        index.cp.spherical = True
        index.train(normalize_rows(spread_sample(data, train_rows)))
        index.nprobe = nprobe
        self.nlist_ = nlist
        self.nprobe_ = nprobe
        return index

    def add(
        self, data: MatrixLike | Iterable[np.ndarray], *, progress: Progress = SILENT
    ) -> NeighborIndex:
        """Append rows (a matrix-like read in blocks, or an iterable of [b, D] blocks).

        New rows get the next ids (``n_rows_``, ``n_rows_ + 1``, …).
        """
        if not hasattr(self, "index_"):
            raise FeatkitError(
                "NeighborIndex.add: expected a fitted index, call fit(features) first"
            )
        blocks: Iterable[np.ndarray]
        if hasattr(data, "shape") and hasattr(data, "__getitem__"):
            matrix = cast(MatrixLike, data)
            blocks, total = row_blocks(matrix, self.block_rows), int(matrix.shape[0])
        else:
            blocks, total = cast("Iterable[np.ndarray]", data), None
        task = progress.task(f"index ({self.kind_})", total)
        try:
            for block in blocks:
                x = normalize_rows(block)
                if x.shape[1] != self.dim_:
                    raise FeatkitError(
                        f"features: expected {self.dim_} columns (the index's), got {x.shape[1]}"
                    )
                self.index_.add(x)
                self.n_rows_ += x.shape[0]
                task.advance(x.shape[0])
        finally:
            task.close()
        return self

    # -- searching --------------------------------------------------------------------

    def search(
        self, queries: MatrixLike, k: int, *, progress: Progress = SILENT
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` cosine neighbours of each query: ``(sims [q, k] float32, idx [q, k] int64)``.

        Queries are normalised here and searched ``block_rows`` at a time.
        """
        if not hasattr(self, "index_"):
            raise FeatkitError("NeighborIndex.search: expected a fitted index, call fit() first")
        shape = tuple(int(s) for s in queries.shape)
        if len(shape) != 2 or shape[1] != self.dim_:
            raise FeatkitError(
                f"queries: expected a 2-D array [rows, {self.dim_}], got shape {shape}"
            )
        if not 1 <= k <= self.n_rows_:
            raise FeatkitError(
                f"k: expected an integer in [1, {self.n_rows_}] (the indexed rows), got {k}"
            )
        if self.kind_ == "hnsw":
            # efSearch below k cannot return k neighbours.
            self.index_.hnsw.efSearch = max(self.ef_search, k)
        sims = np.empty((shape[0], k), dtype=np.float32)
        idx = np.empty((shape[0], k), dtype=np.int64)
        search = self._search_ivf if self.kind_ == "ivf" else self.index_.search
        # IVF keeps nprobe·k candidates per query: a smaller block bounds that buffer.
        block_rows = min(self.block_rows, IVF_QUERY_BLOCK) if self.kind_ == "ivf" else None
        task = progress.task(f"search ({self.kind_})", shape[0])
        try:
            start = 0
            for block in row_blocks(queries, block_rows or self.block_rows):
                stop = start + block.shape[0]
                sims[start:stop], idx[start:stop] = search(normalize_rows(block), k)
                task.advance(block.shape[0])
                start = stop
        finally:
            task.close()
        return sims, idx

    def _lists(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Zero-copy views (vectors [n_l, D] float32, ids [n_l] int64) of the IVF lists."""
        import faiss

        if getattr(self, "_lists_of", -1) != self.n_rows_:  # rebuilt after every add
            invlists = self.index_.invlists
            views = []
            for lst in range(self.nlist_):
                n = invlists.list_size(lst)
                if n == 0:
                    views.append((np.zeros((0, self.dim_), np.float32), np.zeros(0, np.int64)))
                    continue
                codes = faiss.rev_swig_ptr(invlists.get_codes(lst), n * self.dim_ * 4)
                ids = faiss.rev_swig_ptr(invlists.get_ids(lst), n)
                views.append((codes.view(np.float32).reshape(n, self.dim_), ids))
            self._list_views, self._lists_of = views, self.n_rows_
        return self._list_views

    def _search_ivf(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss's IVF search reorganised by list: one BLAS product per (list, its queries)."""
        import faiss

        lists = self._lists()
        nq, nprobe = queries.shape[0], self.nprobe_
        _, probe = self.index_.quantizer.search(queries, nprobe)  # [nq, nprobe] list ids
        cand_s = np.full((nq, nprobe * k), -np.inf, dtype=np.float32)
        cand_i = np.full((nq, nprobe * k), -1, dtype=np.int64)
        pairs = np.argsort(probe.ravel(), kind="stable")  # (query, slot) pairs grouped by list
        listed = probe.ravel()[pairs]
        starts = np.flatnonzero(np.r_[True, np.diff(listed) != 0])
        for lo, hi in zip(starts, np.r_[starts[1:], listed.size], strict=True):
            lst = int(listed[lo])
            if lst < 0:  # faiss pads with -1 when there are fewer than nprobe lists
                continue
            vectors, ids = lists[lst]
            if vectors.shape[0] == 0:
                continue
            rows, slots = pairs[lo:hi] // nprobe, pairs[lo:hi] % nprobe
            kk = min(k, vectors.shape[0])
            s, i = faiss.knn(queries[rows], vectors, kk, metric=faiss.METRIC_INNER_PRODUCT)
            cols = slots[:, None] * k + np.arange(kk)
            cand_s[rows[:, None], cols] = s
            cand_i[rows[:, None], cols] = ids[i]
        if nprobe > 1:
            cand_s, cand_i = best_k(cand_s, cand_i, k)
        return descending(cand_s[:, :k], cand_i[:, :k])
