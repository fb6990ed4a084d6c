"""The relevance cache and the ranker's admission limit, alone and in the engine.

The engine runs on the tiny bundle's real catalog and tokenizer; the ranker is a deterministic
scorer behind the engine's ``InferClient`` protocol (a pair's score depends on its token ids only,
not on the batch it came in), so an answer with the cache can be compared with one without it.
The integration test ``tests/integration/transformers_pre/test_cache_and_overload.py`` does the
same with the real servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shopserve.artifacts import CATALOG_COMPONENT, RANKER_COMPONENT, RANKER_TOKENIZER_DIR
from shopserve.errors import UpstreamOverloaded, UpstreamUnavailable
from shopserve.protocol import INPUT_IDS, SCORE
from shopserve.text import PairTokenizer
from transformers_pre.catalog import Catalog
from transformers_pre.engine import (
    DegradationReason,
    Dependency,
    EngineConfig,
    SearchEngine,
    SearchRequest,
    SearchResult,
)
from transformers_pre.relevance import ConcurrencyLimit, RelevanceCache

# ------------------------------------------------------------------------------ the cache alone


def test_a_stored_score_is_read_back_and_counted() -> None:
    cache = RelevanceCache(10, "v1")
    cache.store("red shoe", np.array([3, 5]), np.array([0.5, -1.25], np.float32))
    scores, missing = cache.lookup("red shoe", np.array([5, 4, 3]))
    assert missing.tolist() == [False, True, False]
    assert scores[0] == np.float32(-1.25) and np.isnan(scores[1]) and scores[2] == np.float32(0.5)
    assert (cache.stats.hits, cache.stats.misses, len(cache)) == (2, 1, 2)


def test_another_query_or_ranker_version_reads_nothing() -> None:
    cache = RelevanceCache(10, "v1")
    cache.store("red shoe", np.array([3]), np.array([0.5], np.float32))
    assert cache.lookup("red shoes", np.array([3]))[1].tolist() == [True]
    # A cache of another ranker version over the same entries: the version is in every key.
    newer = RelevanceCache(10, "v2")
    newer._entries = cache._entries  # the same store, read with another version
    assert newer.lookup("red shoe", np.array([3]))[1].tolist() == [True]


def test_the_least_recently_used_entries_are_evicted_first() -> None:
    cache = RelevanceCache(3, "v1")
    cache.store("q", np.array([1, 2, 3]), np.array([1, 2, 3], np.float32))
    cache.lookup("q", np.array([1]))  # 1 is now the most recently used; 2 the least
    cache.store("q", np.array([4, 5]), np.array([4, 5], np.float32))
    assert len(cache) == 3 and cache.stats.evictions == 2
    _, missing = cache.lookup("q", np.array([1, 2, 3, 4, 5]))
    assert missing.tolist() == [False, True, True, False, False]


def test_the_cache_refuses_a_size_below_one_and_mismatched_scores() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        RelevanceCache(0, "v1")
    with pytest.raises(ValueError, match="2 rows but 1 scores"):
        RelevanceCache(5, "v1").store("q", np.array([1, 2]), np.array([1.0], np.float32))


def test_the_concurrency_limit_admits_up_to_its_limit_and_zero_admits_all() -> None:
    limit = ConcurrencyLimit(2)
    assert [limit.try_acquire() for _ in range(3)] == [True, True, False]
    assert (limit.in_flight, limit.rejected) == (2, 1)
    limit.release()
    assert limit.try_acquire()
    unlimited = ConcurrencyLimit(0)
    assert all(unlimited.try_acquire() for _ in range(1000))
    with pytest.raises(RuntimeError):
        ConcurrencyLimit(1).release()
    with pytest.raises(ValueError):
        ConcurrencyLimit(-1)


# ------------------------------------------------------------------------------ in the engine


class Ranker:
    """Scores each pair from its token ids (deterministic per pair, whatever the batch); records
    the pairs of every call; waits for ``gate`` when one is set."""

    name = "ranker"

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[int] = []
        self.gate: asyncio.Event | None = None
        self.error = error

    async def infer(self, inputs: Mapping[str, np.ndarray], parameters: Any = None,
                    request_id: str | None = None) -> dict[str, np.ndarray]:
        ids = inputs[INPUT_IDS]
        self.calls.append(int(ids.shape[0]))
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        # Padding ids are 0: the sum, so the score, does not depend on the batch's longest pair.
        return {SCORE: (np.sin(ids.astype(np.float64).sum(axis=1)) * 3).reshape(-1, 1)
                .astype(np.float32)}


class Recall:
    """MF candidates for a known shopper: the catalog's rows from ``offset`` on."""

    name = "recall"

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    async def infer(self, inputs: Mapping[str, np.ndarray], parameters: Any = None,
                    request_id: str | None = None) -> dict[str, np.ndarray]:
        offset = int(inputs["user_id"][0]) % 7
        ids = self.catalog.items.ids[offset:offset + 30]
        return {"item_ids": ids[None].astype(np.int64),
                "scores": np.linspace(1, 0, ids.size, dtype=np.float32)[None]}


@pytest.fixture(scope="module")
def parts(tiny_bundle: Path) -> tuple[Catalog, PairTokenizer]:
    catalog = Catalog.load(tiny_bundle / CATALOG_COMPONENT)
    tokenizer = PairTokenizer.from_dir(tiny_bundle / RANKER_COMPONENT / RANKER_TOKENIZER_DIR)
    return catalog, tokenizer


def _engine(parts: tuple[Catalog, PairTokenizer], ranker: Ranker, *, entries: int = 0,
            limit: int = 0, version: str = "v1") -> SearchEngine:
    catalog, tokenizer = parts
    config = EngineConfig(max_length=32, rank_candidates=20, relevance_cache_entries=entries,
                          ranker_max_concurrency=limit)
    return SearchEngine(catalog, tokenizer, Recall(catalog), ranker, config,
                        ranker_version=version)


def _queries(catalog: Catalog) -> list[str]:
    return [" ".join(str(catalog.titles[i]).split()[:2]) for i in range(0, 40, 4)]


def _search(engine: SearchEngine, query: str, user: int = -1, **kw: Any) -> SearchResult:
    return asyncio.run(engine.search(SearchRequest(query, user, top_n=10, explain=True, **kw)))


def _same(a: SearchResult, b: SearchResult) -> None:
    assert a.rows.tolist() == b.rows.tolist()
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.relevance is not None and b.relevance is not None
    np.testing.assert_array_equal(a.relevance, b.relevance)
    assert a.parts.keys() == b.parts.keys()
    for name in a.parts:
        np.testing.assert_array_equal(a.parts[name], b.parts[name])


def test_answers_with_the_cache_equal_answers_without_it(
        parts: tuple[Catalog, PairTokenizer]) -> None:
    catalog, _ = parts
    users = [-1, int(catalog.users.ids[0]), int(catalog.users.ids[1])]
    plain = _engine(parts, Ranker())
    cached = _engine(parts, Ranker(), entries=10_000)
    # Twice over: the first round fills the cache (partly: shoppers share a query's lexical
    # candidates but not their MF ones), the second is answered from it.
    for _ in range(2):
        for query in _queries(catalog):
            for user in users:
                _same(_search(cached, query, user), _search(plain, query, user))
    stats = cached.relevance_cache.stats  # type: ignore[union-attr]
    assert stats.hits > stats.misses > 0
    assert sum(cached.ranker.calls) == stats.misses  # type: ignore[attr-defined]


def test_only_the_misses_are_sent_in_one_call_and_a_full_hit_sends_nothing(
        parts: tuple[Catalog, PairTokenizer]) -> None:
    catalog, _ = parts
    ranker = Ranker()
    engine = _engine(parts, ranker, entries=10_000)
    query = _queries(catalog)[0]
    first = _search(engine, query)
    assert ranker.calls == [first.ranker_pairs] and first.cached_pairs == 0
    again = _search(engine, query)
    assert ranker.calls == [first.ranker_pairs]  # no second call
    assert (again.ranker_pairs, again.cached_pairs) == (0, first.ranker_pairs)
    assert again.degraded == [] and again.stage_ms.get("rank") is None
    # A known shopper's shortlist adds MF candidates: only those go to the ranker, in one call.
    mixed = _search(engine, query, int(catalog.users.ids[0]))
    assert len(ranker.calls) == 2 and ranker.calls[1] == mixed.ranker_pairs
    assert mixed.cached_pairs > 0 and mixed.ranker_pairs > 0


def test_a_new_ranker_version_reads_no_old_score(parts: tuple[Catalog, PairTokenizer]) -> None:
    catalog, _ = parts
    old = _engine(parts, Ranker(), entries=100, version="v1")
    new = _engine(parts, Ranker(), entries=100, version="v2")
    new.relevance_cache._entries = old.relevance_cache._entries  # type: ignore[union-attr]
    query = _queries(catalog)[1]
    _search(old, query)
    assert _search(new, query).cached_pairs == 0


def test_a_small_cache_evicts_and_still_answers_the_same(
        parts: tuple[Catalog, PairTokenizer]) -> None:
    catalog, _ = parts
    plain = _engine(parts, Ranker())
    small = _engine(parts, Ranker(), entries=25)
    for query in _queries(catalog) * 2:
        _same(_search(small, query), _search(plain, query))
    cache = small.relevance_cache
    assert cache is not None and len(cache) <= 25 and cache.stats.evictions > 0


def test_a_failing_ranker_degrades_and_caches_nothing(
        parts: tuple[Catalog, PairTokenizer]) -> None:
    catalog, _ = parts
    engine = _engine(parts, Ranker(UpstreamUnavailable("ranker refused")), entries=100)
    result = _search(engine, _queries(catalog)[0])
    assert result.degraded == [Dependency.RANKER] and result.relevance is None
    assert len(engine.relevance_cache) == 0  # type: ignore[arg-type]
    assert engine.ranker_admission.in_flight == 0  # the slot was given back


class BrokenCache(RelevanceCache):
    def lookup(self, query: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise KeyError("a bug")

    def store(self, query: str, rows: np.ndarray, scores: np.ndarray) -> None:
        raise MemoryError


def test_a_cache_bug_costs_ranker_calls_never_an_answer(
        parts: tuple[Catalog, PairTokenizer]) -> None:
    catalog, _ = parts
    plain = _engine(parts, Ranker())
    engine = _engine(parts, Ranker(), entries=100)
    engine.relevance_cache = BrokenCache(100, "v1")
    query = _queries(catalog)[2]
    result = _search(engine, query)
    _same(result, _search(plain, query))
    assert result.degraded == [] and engine.cache_errors == 2  # the look-up and the store


# ------------------------------------------------------------------------------ admission


async def _concurrently(engine: SearchEngine, ranker: Ranker, queries: list[str],
                        allow_degraded: bool = True) -> list[SearchResult | BaseException]:
    ranker.gate = asyncio.Event()
    tasks = [asyncio.ensure_future(engine.search(
        SearchRequest(q, top_n=5, allow_degraded=allow_degraded))) for q in queries]
    for _ in range(5):  # every search reaches its ranker call (or is turned away)
        await asyncio.sleep(0)
    ranker.gate.set()
    return list(await asyncio.gather(*tasks, return_exceptions=True))


def test_searches_beyond_the_limit_skip_ranking_with_reason_overload(
        parts: tuple[Catalog, PairTokenizer]) -> None:
    catalog, _ = parts
    ranker = Ranker()
    engine = _engine(parts, ranker, limit=2)
    results = asyncio.run(_concurrently(engine, ranker, _queries(catalog)[:5]))
    assert all(isinstance(r, SearchResult) for r in results)
    ranked = [r for r in results if isinstance(r, SearchResult) and not r.degraded]
    shed = [r for r in results if isinstance(r, SearchResult) and r.degraded]
    assert len(ranked) == 2 and len(ranker.calls) == 2
    assert len(shed) == 3
    for r in shed:
        assert r.degraded == [Dependency.RANKER] and r.rows.size > 0  # BM25's answer
        assert DegradationReason.of(r.failures[Dependency.RANKER]) is DegradationReason.OVERLOAD
        assert r.ranker_pairs == 0 and "tokenise" not in r.stage_ms  # skipped at once
    assert engine.ranker_admission.in_flight == 0 and engine.ranker_admission.rejected == 3


def test_no_limit_admits_every_call(parts: tuple[Catalog, PairTokenizer]) -> None:
    catalog, _ = parts
    ranker = Ranker()
    engine = _engine(parts, ranker, limit=0)
    results = asyncio.run(_concurrently(engine, ranker, _queries(catalog)[:5]))
    assert all(isinstance(r, SearchResult) and not r.degraded for r in results)
    assert len(ranker.calls) == 5


def test_a_strict_request_beyond_the_limit_fails_with_overloaded(
        parts: tuple[Catalog, PairTokenizer]) -> None:
    catalog, _ = parts
    ranker = Ranker()
    engine = _engine(parts, ranker, limit=1)
    results = asyncio.run(_concurrently(engine, ranker, _queries(catalog)[:3],
                                        allow_degraded=False))
    assert isinstance(results[0], SearchResult) and not results[0].degraded
    assert all(isinstance(r, UpstreamOverloaded) for r in results[1:])
    assert int(results[1].http_status) == 503  # type: ignore[union-attr]


def test_a_fully_cached_search_needs_no_slot(parts: tuple[Catalog, PairTokenizer]) -> None:
    catalog, _ = parts
    ranker = Ranker()
    engine = _engine(parts, ranker, entries=10_000, limit=1)
    query = _queries(catalog)[3]
    _search(engine, query)  # fills the cache
    # One slot, taken by a search of another query: the cached one is still ranked.
    results = asyncio.run(_concurrently(engine, ranker, [_queries(catalog)[4], query]))
    assert all(isinstance(r, SearchResult) and not r.degraded for r in results)
    assert results[1].cached_pairs > 0 and results[1].ranker_pairs == 0  # type: ignore[union-attr]
