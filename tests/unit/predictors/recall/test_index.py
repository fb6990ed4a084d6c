"""The top-k index contract, shared by the exact, HNSW and IVF kinds.

Every kind runs the same table: a checkerboard-style oracle whose planted item must come first,
batch equals single, exclusion, padding, save/load, and recall against the exact index.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from predictors.recall.index import (
    MIN_SHARD_ROWS,
    ExactIndex,
    FaissIndex,
    IndexConfig,
    TopKIndex,
    build_index,
    exclusion_csr,
    load_index,
    recall_at_k,
    topk_rows,
)

N_ITEMS = 5_000
DIM = 32
K = 20

CONFIGS = {
    "exact": IndexConfig("exact"),
    "hnsw": IndexConfig("hnsw", m=32, ef_construction=80, ef_search=128),
    "hnsw-l2": IndexConfig("hnsw", m=32, ef_construction=80, ef_search=128, mips_to_l2=True),
    "ivf": IndexConfig("ivf", nlist=64, nprobe=16),
    "ivf-l2": IndexConfig("ivf", nlist=64, nprobe=16, mips_to_l2=True),
}
KINDS = list(CONFIGS)


def clustered(n: int, d: int, seed: int, n_clusters: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Items around Gaussian cluster centres with varying norms, and queries near the centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)) / np.sqrt(d)
    assign = rng.integers(0, n_clusters, n)
    items = centres[assign] + 0.5 * rng.standard_normal((n, d)) / np.sqrt(d)
    items *= rng.lognormal(0.0, 0.3, n)[:, None]
    queries = centres[rng.integers(0, n_clusters, 200)]
    queries = queries + 0.3 * rng.standard_normal(queries.shape) / np.sqrt(d)
    return items.astype(np.float32), queries.astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered(N_ITEMS, DIM, seed=7)


@pytest.fixture(scope="module")
def exact(data: tuple[np.ndarray, np.ndarray]) -> ExactIndex:
    return ExactIndex(data[0])


_BUILT: dict[str, ExactIndex | FaissIndex] = {}


def built(kind: str, items: np.ndarray) -> ExactIndex | FaissIndex:
    """Each kind is built once per session (HNSW takes about a second)."""
    if kind not in _BUILT:
        _BUILT[kind] = build_index(items, CONFIGS[kind])
    return _BUILT[kind]


@pytest.fixture(scope="module", params=KINDS)
def index(request: pytest.FixtureRequest, data: tuple[np.ndarray, np.ndarray]
          ) -> ExactIndex | FaissIndex:
    return built(request.param, data[0])


@pytest.fixture(scope="module")
def planted(data: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Items that win their own direction by a clear margin, and whose runner-up beats the third.

    No float ties between the winner and the runner-up, so approximate indexes can be held to it.
    """
    items, _ = data
    self_scores = items @ items.T
    top3 = -np.sort(-self_scores, axis=1)[:, :3]
    wins = (self_scores.argmax(axis=1) == np.arange(N_ITEMS)) & (top3[:, 0] - top3[:, 1] > 1e-3)
    wins &= top3[:, 1] - top3[:, 2] > 1e-3
    targets = np.flatnonzero(wins)[:20]
    assert targets.size == 20
    return targets


def test_every_kind_meets_the_contract(index: ExactIndex | FaissIndex) -> None:
    assert isinstance(index, TopKIndex)
    assert (index.size, index.dim) == (N_ITEMS, DIM)


def test_result_shapes_dtypes_and_order(index: ExactIndex | FaissIndex,
                                        data: tuple[np.ndarray, np.ndarray]) -> None:
    rows, scores = index.search(data[1][:5], K)
    assert rows.shape == scores.shape == (5, K)
    assert rows.dtype == np.int64 and scores.dtype == np.float32
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_scores_are_inner_products(index: ExactIndex | FaissIndex,
                                   data: tuple[np.ndarray, np.ndarray]) -> None:
    items, queries = data
    rows, scores = index.search(queries[:10], K)
    expected = np.einsum("bkd,bd->bk", items[rows], queries[:10])
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)


def test_oracle_planted_item_comes_first_then_second_best(
        index: ExactIndex | FaissIndex, data: tuple[np.ndarray, np.ndarray],
        planted: np.ndarray) -> None:
    """Query = 3 x a planted item: it must come first; with it excluded, the runner-up."""
    items, targets = data[0], planted
    queries = 3.0 * items[targets]
    rows, _ = index.search(queries, K)
    np.testing.assert_array_equal(rows[:, 0], targets)

    full = queries @ items.T
    full[np.arange(len(targets)), targets] = -np.inf
    runner_up = full.argmax(axis=1)
    rows, _ = index.search(queries, K, [np.array([t]) for t in targets])
    np.testing.assert_array_equal(rows[:, 0], runner_up)
    assert not np.any(rows == targets[:, None])


def test_batch_equals_single(index: ExactIndex | FaissIndex,
                             data: tuple[np.ndarray, np.ndarray]) -> None:
    queries = data[1][:12]
    rng = np.random.default_rng(3)
    exclude = [rng.choice(N_ITEMS, size=int(rng.integers(0, 60)), replace=False)
               for _ in range(len(queries))]
    for excl in (None, exclude):
        rows, scores = index.search(queries, K, excl)
        for i, q in enumerate(queries):
            single = index.search(q[None, :], K, None if excl is None else [excl[i]])
            np.testing.assert_array_equal(single[0][0], rows[i])
            if isinstance(index, ExactIndex):
                # gemv at batch 1, gemm otherwise: the sums round differently in the last bit.
                np.testing.assert_allclose(single[1][0], scores[i], rtol=1e-6)
            else:
                np.testing.assert_array_equal(single[1][0], scores[i])


@pytest.mark.parametrize("as_csr", [False, True], ids=["list", "csr"])
def test_exclusion_is_never_returned(index: ExactIndex | FaissIndex,
                                     data: tuple[np.ndarray, np.ndarray],
                                     exact: ExactIndex, as_csr: bool) -> None:
    queries = data[1][:16]
    top, _ = exact.search(queries, 50)
    # Exclude each query's own best 30 (the hard case) plus random rows.
    rng = np.random.default_rng(5)
    exclude = [np.union1d(top[i, :30], rng.choice(N_ITEMS, 100, replace=False))
               for i in range(len(queries))]
    arg: sp.csr_matrix | list[np.ndarray] = exclude
    if as_csr:
        r = np.repeat(np.arange(len(queries)), [e.size for e in exclude])
        arg = sp.csr_matrix((np.ones(r.size), (r, np.concatenate(exclude))),
                            shape=(len(queries), N_ITEMS))
    rows, _ = index.search(queries, K, arg)
    for i, e in enumerate(exclude):
        assert not np.isin(rows[i], e).any()
        assert np.all(rows[i] >= 0)


def test_heavy_exclusion_uses_the_selector_path(data: tuple[np.ndarray, np.ndarray]) -> None:
    """Over max_overfetch excluded rows: searched with an IDSelector, still never returned."""
    items, queries = data
    for kind in ("hnsw", "ivf"):
        base = built(kind, items)
        assert isinstance(base, FaissIndex)
        index = FaissIndex(base.index, replace(base.config, max_overfetch=10), DIM)
        exclude = [np.arange(0, N_ITEMS, 2), np.array([1, 3]), np.arange(1, 400, 2)]
        rows, _ = index.search(queries[:3], K, exclude)
        for i, e in enumerate(exclude):
            assert not np.isin(rows[i], e).any()
        np.testing.assert_array_equal(rows[0], index.search(queries[:1], K, exclude[:1])[0][0])


def test_pads_with_minus_one_when_k_exceeds_eligible(
        index: ExactIndex | FaissIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
    items, queries = data
    keep = np.array([10, 20, 30])
    exclude = [np.setdiff1d(np.arange(N_ITEMS), keep)]
    rows, scores = index.search(queries[:1], 5, exclude)
    found = rows[0][rows[0] >= 0]
    assert set(found) <= set(keep)
    assert np.all(rows[0][found.size:] == -1)
    assert np.all(np.isneginf(scores[0][found.size:]))
    if isinstance(index, ExactIndex):
        assert found.size == 3


def test_exact_pads_when_k_exceeds_catalog() -> None:
    items = np.eye(4, dtype=np.float32)
    rows, scores = ExactIndex(items).search(np.array([[0, 1, 2, 3]], np.float32), 6)
    np.testing.assert_array_equal(rows[0], [3, 2, 1, 0, -1, -1])
    np.testing.assert_array_equal(scores[0], [3, 2, 1, 0, -np.inf, -np.inf])


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_pads_when_k_exceeds_catalog_for_every_kind(kind: str) -> None:
    items = clustered(30, DIM, seed=3)[0]
    config = replace(CONFIGS[kind], nlist=4, nprobe=4)
    rows, scores = build_index(items, config).search(items[:2], 50)
    assert np.all(rows[:, 30:] == -1) and np.all(np.isneginf(scores[:, 30:]))
    for row in rows:
        assert sorted(row[:30]) == list(range(30))


def test_save_load_round_trip(index: ExactIndex | FaissIndex, tmp_path: Path,
                              data: tuple[np.ndarray, np.ndarray]) -> None:
    config = index.config if isinstance(index, FaissIndex) else IndexConfig("exact")
    index.save(tmp_path)
    assert not list(tmp_path.glob("*.pkl"))
    loaded = load_index(tmp_path, config)
    queries = data[1][:20]
    exclude = [np.arange(i, i + 5) for i in range(len(queries))]
    for excl in (None, exclude):
        a, b = index.search(queries, K, excl), loaded.search(queries, K, excl)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_load_refuses_another_kind(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    ExactIndex(data[0][:100]).save(tmp_path)
    with pytest.raises(ValueError, match="exact"):
        load_index(tmp_path, IndexConfig("hnsw"))


def test_load_applies_search_time_params(tmp_path: Path,
                                         data: tuple[np.ndarray, np.ndarray]) -> None:
    build_index(data[0], CONFIGS["ivf"]).save(tmp_path)
    loaded = load_index(tmp_path, IndexConfig("ivf", nlist=1, nprobe=3))
    assert isinstance(loaded, FaissIndex)
    assert loaded.config.nprobe == 3 and loaded.config.nlist == 64


def test_wrappers_with_other_settings_can_share_one_faiss_index(
        data: tuple[np.ndarray, np.ndarray], exact: ExactIndex) -> None:
    items, queries = data
    base = built("ivf", items)
    assert isinstance(base, FaissIndex)
    every_list = FaissIndex(base.index, replace(base.config, nprobe=64), DIM)
    FaissIndex(base.index, replace(base.config, nprobe=1), DIM)  # later, narrower wrapper
    truth, _ = exact.search(queries, K)
    assert recall_at_k(every_list.search(queries, K)[0], truth) == 1.0  # all lists = exact


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "exact"])
def test_recall_against_exact(kind: str, data: tuple[np.ndarray, np.ndarray],
                              exact: ExactIndex) -> None:
    items, queries = data
    index = built(kind, items)
    truth, _ = exact.search(queries, K)
    found, _ = index.search(queries, K)
    assert recall_at_k(found, truth) >= 0.9


def test_exact_matches_full_sort(data: tuple[np.ndarray, np.ndarray], exact: ExactIndex) -> None:
    items, queries = data
    full = queries @ items.T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :K]
    np.testing.assert_array_equal(exact.search(queries, K)[0], expected)


def test_exact_sharded_scoring_equals_one_thread_also_concurrently() -> None:
    """Shards scored by the caller and a helper thread give the one-thread result bit for bit."""
    rng = np.random.default_rng(11)
    items = rng.standard_normal((4 * MIN_SHARD_ROWS + 123, 8)).astype(np.float32)
    queries = rng.standard_normal((16, 8)).astype(np.float32)
    one, sharded = ExactIndex(items, threads=1), ExactIndex(items, threads=2)
    assert sharded.threads == 2
    expected = [one.search(q[None, :], K) for q in queries]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda q: sharded.search(q[None, :], K), queries))
    for (ei, es), (gi, gs) in zip(expected, got, strict=True):
        np.testing.assert_array_equal(ei, gi)
        np.testing.assert_array_equal(es, gs)


@pytest.mark.parametrize(("n", "k"), [(100_000, 100), (100_000, 1), (3_000, 7), (50, 50)])
def test_topk_rows_matches_argsort_with_ties(n: int, k: int) -> None:
    rng = np.random.default_rng(n + k)
    scores = rng.integers(0, 50, (3, n)).astype(np.float32)  # many ties
    scores[1, ::3] = -np.inf
    rows, vals = topk_rows(scores, k)
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    expected_vals = np.take_along_axis(scores, expected, axis=1)
    expected[np.isneginf(expected_vals)] = -1  # excluded items come back as padding
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_array_equal(vals, expected_vals)


@pytest.mark.parametrize("n", [99_999, 4_097])
def test_topk_rows_matches_argsort_on_floats(n: int) -> None:
    rng = np.random.default_rng(n)
    scores = rng.standard_normal((4, n)).astype(np.float32)
    scores[2, rng.choice(n, n // 2, replace=False)] = -np.inf
    for k in (1, 10, 100):
        rows, vals = topk_rows(scores, k)
        expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(rows, expected)
        np.testing.assert_array_equal(vals, np.take_along_axis(scores, expected, axis=1))


def test_topk_rows_mostly_excluded_row() -> None:
    scores = np.full((2, 10_000), -np.inf, np.float32)
    scores[0, [5, 9000]] = [1.0, 2.0]
    rows, vals = topk_rows(scores, 4)
    np.testing.assert_array_equal(rows, [[9000, 5, -1, -1], [-1, -1, -1, -1]])
    assert np.isneginf(vals[0, 2:]).all() and np.isneginf(vals[1]).all()


@pytest.mark.parametrize(
    ("exclude", "message"),
    [([np.array([0])], "entries"), ([np.array([N_ITEMS]), np.array([1])], "outside"),
     ([np.array([-1]), np.array([])], "outside")],
)
def test_bad_exclusion_is_refused(exclude: list[np.ndarray], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        exclusion_csr(exclude, 2, N_ITEMS)


@pytest.mark.parametrize(("queries", "k"), [(np.zeros((2, DIM + 1), np.float32), 3),
                                             (np.zeros((2, DIM), np.float32), 0)])
def test_bad_query_is_refused(exact: ExactIndex, queries: np.ndarray, k: int) -> None:
    with pytest.raises(ValueError):
        exact.search(queries, k)


def test_config_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        IndexConfig("annoy")  # type: ignore[arg-type]
