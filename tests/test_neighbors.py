"""NeighborIndex: exact search is brute force; the approximate ones meet their recall."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import faiss
import h5py
import numpy as np
import pytest

from featkit.errors import FeatkitError
from featkit.neighbors.blocks import normalize_rows, spread_sample
from featkit.neighbors.recall import (
    DOCUMENTED_IVF_RECALL,
    clustered_embeddings,
    measure_recall,
    recall_at_k,
)
from featkit.neighbors.search import NeighborIndex, default_nlist, resolve_kind


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # The box is shared: OpenMP spin-waits make many small faiss calls crawl on a busy CPU.
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def brute_force(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k in float64 numpy: the independent truth."""
    db = database / np.linalg.norm(database, axis=1, keepdims=True)
    qs = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = qs.astype(np.float64) @ db.astype(np.float64).T
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, axis=1), idx


@pytest.fixture(scope="module")
def random_set() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((700, 24)) * 3.0, rng.standard_normal((57, 24))


def test_exact_equals_brute_force_in_blocks(random_set: tuple[np.ndarray, np.ndarray]) -> None:
    database, queries = random_set
    # Blocks of 64 rows: the database arrives in 11 slices and queries in 1 + a remainder.
    index = NeighborIndex("exact", block_rows=64).fit(database)
    sims, idx = index.search(queries, k=9)
    want_sims, want_idx = brute_force(database, queries, 9)
    assert index.kind_ == "exact" and index.n_rows_ == 700
    assert sims.dtype == np.float32 and idx.dtype == np.int64 and sims.shape == (57, 9)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)
    assert np.all(np.diff(sims, axis=1) <= 0)  # sorted by decreasing similarity


def test_an_hdf5_float16_dataset_is_read_in_slices(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.standard_normal((300, 16)).astype(np.float16)
    with h5py.File(tmp_path / "f.h5", "w") as h5:
        h5.create_dataset("cls", data=data, chunks=(50, 16))
    with h5py.File(tmp_path / "f.h5", "r") as h5:
        index = NeighborIndex("exact", block_rows=100).fit(h5["cls"])
        sims, idx = index.search(h5["cls"], k=1)
    assert np.array_equal(idx[:, 0], np.arange(300))  # every row is its own nearest
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)
    _, want = brute_force(data.astype(np.float32), data[:10].astype(np.float32), 5)
    np.testing.assert_array_equal(index.search(data[:10], k=5)[1], want)


def test_add_appends_rows_with_the_next_ids(random_set: tuple[np.ndarray, np.ndarray]) -> None:
    database, queries = random_set
    index = NeighborIndex("exact").fit(database[:400])
    index.add(iter([database[400:550], database[550:]]))
    _, idx = index.search(queries, k=7)
    np.testing.assert_array_equal(idx, brute_force(database, queries, 7)[1])


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray, NeighborIndex]:
    # The documented synthetic set at test size: 100 classes, intra-class cosine ~0.5.
    x, _ = clustered_embeddings(20_000, 32, n_clusters=100, seed=0)
    q, _ = clustered_embeddings(500, 32, n_clusters=100, seed=0, start=10**9)
    return x, q, NeighborIndex("exact").fit(x)


def test_ivf_meets_its_documented_recall(
    clustered: tuple[np.ndarray, np.ndarray, NeighborIndex],
) -> None:
    x, q, exact = clustered
    ivf = NeighborIndex("ivf").fit(x)
    assert (ivf.nlist_, ivf.nprobe_) == (128, 8)  # defaults: ~sqrt(N) lists, 1/16 probed
    recall = measure_recall(ivf, exact, q, k=20)
    assert recall >= DOCUMENTED_IVF_RECALL
    # Probing every list is exhaustive: exact search again.
    everything = NeighborIndex("ivf", nprobe=128).fit(x)
    assert measure_recall(everything, exact, q, k=20) == 1.0
    # One list of 128 is visibly approximate: the measure is not vacuous.
    assert measure_recall(NeighborIndex("ivf", nprobe=1).fit(x), exact, q, k=20) < 0.9


def test_list_major_ivf_search_matches_faiss(
    clustered: tuple[np.ndarray, np.ndarray, NeighborIndex],
) -> None:
    x, q, _ = clustered
    ivf = NeighborIndex("ivf", nlist=64, nprobe=5, block_rows=128).fit(x)
    sims, idx = ivf.search(q, k=15)
    want_sims, want_idx = ivf.index_.search(normalize_rows(q), 15)
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)
    assert recall_at_k(idx, want_idx) == 1.0


def test_refitting_replaces_the_lists(
    clustered: tuple[np.ndarray, np.ndarray, NeighborIndex],
) -> None:
    x, q, _ = clustered
    ivf = NeighborIndex("ivf", nlist=16, nprobe=16)
    ivf.fit(x[:3000]).search(q, k=5)  # caches views of the first fit's lists
    _, idx = ivf.fit(x[3000:6000]).search(q, k=5)
    np.testing.assert_array_equal(idx, brute_force(x[3000:6000], q, 5)[1])


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_a_fitted_index_pickles(kind: str) -> None:
    x, _ = clustered_embeddings(600, 8, n_clusters=6)
    index = NeighborIndex(kind, nlist=8, nprobe=2).fit(x)
    before = index.search(x[:20], k=4)
    again = pickle.loads(pickle.dumps(index))
    assert again.kind_ == kind and again.n_rows_ == 600
    for got, want in zip(again.search(x[:20], k=4), before, strict=True):
        np.testing.assert_array_equal(got, want)


def test_hnsw_recall(clustered: tuple[np.ndarray, np.ndarray, NeighborIndex]) -> None:
    x, q, exact = clustered
    hnsw = NeighborIndex("hnsw", hnsw_m=16, ef_construction=40).fit(x[:5000])
    assert measure_recall(hnsw, NeighborIndex("exact").fit(x[:5000]), q, k=20) >= 0.95
    assert hnsw.kind_ == "hnsw" and exact.kind_ == "exact"


def test_exact_at_every_size_unless_an_approximate_index_is_named() -> None:
    """``auto`` (and the default) never becomes IVF, however many rows."""
    assert resolve_kind("auto", 10**9) == "exact"
    assert resolve_kind("hnsw", 10) == "hnsw"
    assert NeighborIndex().kind == "exact"
    x, _ = clustered_embeddings(2000, 8, n_clusters=10)
    assert NeighborIndex("auto").fit(x).kind_ == "exact"
    assert NeighborIndex("ivf", nlist=16).fit(x).kind_ == "ivf"


def test_default_nlist_keeps_39_training_points_per_list() -> None:
    assert default_nlist(1_000_000) == 1024
    assert default_nlist(20_000) == 128
    assert default_nlist(100) == 2 and default_nlist(10) == 1
    assert all(default_nlist(n) * 39 <= max(n, 39) for n in (1, 50, 777, 10**5, 10**7))


def test_recall_at_k_by_hand() -> None:
    approx = np.array([[1, 2, 3], [4, 5, -1]])
    exact = np.array([[3, 2, 1], [4, 6, 7]])
    assert recall_at_k(approx, exact) == pytest.approx((3 + 1) / 6)


def test_spread_sample_reaches_every_class_of_a_sorted_store() -> None:
    labels = np.repeat(np.arange(20), 500)  # sorted by class, like a store sorted by path
    sample = spread_sample(labels[:, None], 400)
    assert sample.shape == (400, 1) and set(sample[:, 0]) == set(range(20))


def test_normalize_rows_keeps_zero_rows_and_refuses_nan() -> None:
    out = normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float16))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], atol=1e-3)
    assert out.dtype == np.float32
    # Squares of 1e30 overflow float32; the norm must not.
    huge = normalize_rows(np.array([[1e30, 1e30]], dtype=np.float32))
    np.testing.assert_allclose(huge, [[2**-0.5, 2**-0.5]], rtol=1e-6)
    with pytest.raises(FeatkitError, match="NaN"):
        normalize_rows(np.array([[1.0, np.nan]]))


@pytest.mark.parametrize(
    "build, call, word",
    [
        (lambda: NeighborIndex("flat"), lambda i: i.fit(np.ones((5, 2))), "kind"),
        (lambda: NeighborIndex(), lambda i: i.fit(np.ones(5)), "2-D"),
        (lambda: NeighborIndex(), lambda i: i.search(np.ones((1, 2)), 1), "fit"),
        (lambda: NeighborIndex().fit(np.eye(4)), lambda i: i.search(np.ones((1, 3)), 1), "4"),
        (lambda: NeighborIndex().fit(np.eye(4)), lambda i: i.search(np.eye(4), 5), "k"),
        (lambda: NeighborIndex("ivf", nlist=4, nprobe=9), lambda i: i.fit(np.eye(200)), "nprobe"),
        (lambda: NeighborIndex("ivf", nlist=500), lambda i: i.fit(np.eye(200)), "nlist"),
    ],
)
def test_mistakes_are_one_line_errors(build: object, call: object, word: str) -> None:
    with pytest.raises(FeatkitError, match=word):
        call(build())  # type: ignore[operator]


def test_no_faiss_warning_for_small_sets(capfd: pytest.CaptureFixture[str]) -> None:
    x, _ = clustered_embeddings(100, 8, n_clusters=5)
    NeighborIndex("ivf").fit(x)
    assert "WARNING" not in capfd.readouterr().err
    assert faiss.IndexFlatIP  # faiss imported: the warning would have come from it


def test_knn_records_its_index_and_an_approximate_index_s_recall() -> None:
    """The k-NN protocol is exact by default and says so; IVF reports what it missed."""
    from featkit.protocols import create_protocol

    x, y = clustered_embeddings(3000, 16, n_clusters=30, seed=3)
    exact = create_protocol("knn", k=10).fit(x, y)
    assert exact.fitted_params_ == {"index_kind": "exact", "k_used": 10}  # default "auto"
    ivf = create_protocol("knn", k=10, index="ivf").fit(x, y)
    params = ivf.fitted_params_
    assert params["index_kind"] == "ivf" and 0.0 < params["recall_at_k"] <= 1.0
    # the recorded recall is the one measure_recall gives on the same query rows
    queries = x[np.linspace(0, len(x) - 1, 1000).astype(int)]
    expected = measure_recall(ivf._index, NeighborIndex("exact").fit(x), queries, k=10)
    assert params["recall_at_k"] == pytest.approx(expected)


def test_streamed_exact_search_equals_brute_force_from_hdf5(tmp_path: Path) -> None:
    """Bounded-memory exact search reads the store in blocks and finds the true top-k."""
    from featkit.neighbors.exact import streamed_exact_search

    x, _ = clustered_embeddings(3000, 24, n_clusters=20, seed=7)
    q, _ = clustered_embeddings(50, 24, n_clusters=20, seed=7, start=99)
    with h5py.File(tmp_path / "db.h5", "w") as h5:
        h5["x"] = x.astype(np.float16)
    with h5py.File(tmp_path / "db.h5", "r") as h5:
        sims, idx = streamed_exact_search(h5["x"], q, 15, block_rows=700)
    db = h5py.File(tmp_path / "db.h5", "r")["x"][:].astype(np.float64)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    qq = q / np.linalg.norm(q, axis=1, keepdims=True)
    brute = qq @ db.T
    expected = np.sort(brute, axis=1)[:, ::-1][:, :15]
    np.testing.assert_allclose(sims, expected, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(brute, idx, axis=1), expected, atol=1e-5)
