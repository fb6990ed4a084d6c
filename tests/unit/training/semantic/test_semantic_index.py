"""The semantic index: exact top-k, the HNSW index against it within the recall its settings
promise, a deterministic build, and the index round-tripping through its file."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from training.semantic.index import (
    IndexConfig,
    build_index,
    exact_top_k,
    index_recall,
    read_index,
    write_index,
)

DIM = 64


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def catalog() -> tuple[np.ndarray, np.ndarray]:
    """2000 item vectors in 40 topics (as sentence embeddings cluster) and 200 queries near them."""
    rng = np.random.default_rng(0)
    topics = rng.standard_normal((40, DIM))
    items = _unit(topics[rng.integers(0, 40, 2000)] + 0.6 * rng.standard_normal((2000, DIM)))
    queries = _unit(topics[rng.integers(0, 40, 200)] + 0.8 * rng.standard_normal((200, DIM)))
    return items, queries


def test_exact_top_k_is_the_sorted_inner_product(catalog: tuple[np.ndarray, np.ndarray]) -> None:
    items, queries = catalog
    scores, rows = exact_top_k(items, queries[:5], 10)
    full = queries[:5] @ items.T
    for q in range(5):
        assert rows[q].tolist() == np.argsort(-full[q], kind="stable")[:10].tolist()
        np.testing.assert_allclose(scores[q], full[q, rows[q]], rtol=1e-6)
        assert (np.diff(scores[q]) <= 0).all()


@pytest.mark.parametrize("k", [10, 50])
def test_the_hnsw_index_finds_what_exact_search_finds(
    catalog: tuple[np.ndarray, np.ndarray], k: int
) -> None:
    items, queries = catalog
    config = IndexConfig()  # what the build ships: HNSW32, efSearch 128
    index = build_index(items, config)
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT and index.ntotal == len(items)
    assert index.hnsw.efSearch == config.ef_search
    assert index_recall(index, items, queries, k) >= 0.95


def test_recall_of_an_exact_index_is_one_and_of_a_broken_one_is_low(
    catalog: tuple[np.ndarray, np.ndarray]
) -> None:
    items, queries = catalog
    flat = faiss.IndexFlatIP(DIM)
    flat.add(items)
    assert index_recall(flat, items, queries, 10) == pytest.approx(1.0)
    shuffled = faiss.IndexFlatIP(DIM)  # labels no longer the rows: answers point elsewhere
    shuffled.add(items[np.random.default_rng(1).permutation(len(items))])
    assert index_recall(shuffled, items, queries, 10) < 0.1


def test_the_build_is_deterministic_and_round_trips(
    catalog: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    items, queries = catalog
    first = write_index(build_index(items, IndexConfig(ef_search=64), threads=2), tmp_path / "a")
    second = write_index(build_index(items, IndexConfig(ef_search=64), threads=2), tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    loaded = read_index(first, ef_search=64)
    assert loaded.hnsw.efSearch == 64
    _, want = build_index(items, IndexConfig(ef_search=64)).search(queries, 10)
    _, got = loaded.search(queries, 10)
    np.testing.assert_array_equal(got, want)


def test_the_configuration_describes_itself_and_refuses_nonsense() -> None:
    params = IndexConfig(m=16, ef_search=200).params()
    assert params == {"type": "HNSW16,Flat", "m": 16, "ef_construction": 200, "ef_search": 200,
                      "metric": "inner_product"}
    with pytest.raises(ValueError, match="ef_search"):
        IndexConfig(ef_search=0)
