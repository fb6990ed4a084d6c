"""The request path of one search or recommendation request (DESIGN.md, "The request path").

``SearchEngine.search`` runs, for one request row:

1. filter mask (category, price range, purchases to exclude, and what a negation in the query
   refuses: :func:`transformers_pre.rewrite.split_negation`);
2. lexical candidates (BM25 on the query's wanted words) and, concurrently, personalised
   candidates from ``mf-recall``, the query's embedding from ``query-encoder`` (semantic
   candidates: its nearest items in the bundle's index, :mod:`transformers_pre.semantic`) and,
   when the shopper sent recent items, the session from ``seq-recommender``;
3. the union of lexical, semantic and MF candidates, filtered, and its pre-ranking
   (:func:`transformers_pre.blend.first_stage`: lexical, semantic, personal, popularity and
   session evidence);
4. the best ``rank_candidates`` (the cascade's K) scored by ``bert-ranker``: the scores of
   (query, item) pairs seen before from the relevance cache (:mod:`transformers_pre.relevance`),
   the others tokenised and sent in one call, admitted only while fewer than
   ``ranker_max_concurrency`` calls are in flight (beyond it ranking is skipped at once, reason
   ``overload``);
5. the blend of relevance, lexical and semantic evidence (the semantic weight lowered as far as
   the best lexical hit covers the query: :func:`transformers_pre.blend.gate_semantic`),
   personalisation, popularity and session (the sequence model's score of each candidate after
   the recent items); top N.

Without a query it recommends: the sequence model's next items after the recent items and MF
candidates for a known shopper, popularity otherwise, backfilled with popular items when filters
leave too few; items just seen are left out. A failing dependency degrades the answer, it never
fails it: the stage is named in ``degraded`` with its :class:`DegradationReason`, and the caller
counts it. Only a request that says it takes no degraded answer (``allow_degraded`` false: an
offline evaluation, a canary analysis) fails instead, with the dependency's error: 504 for a
timeout, 503 otherwise.

Every result keeps its weighted score terms and the sources that found it, for ``explain``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from shopserve.errors import (
    CircuitOpen,
    ShopserveError,
    UpstreamOverloaded,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from shopserve.protocol import (
    ANONYMOUS_USER,
    EXCLUDE_SEEN,
    ITEM_IDS,
    ITEM_SEQUENCE,
    NEXT_ITEMS,
    NEXT_SCORES,
    QUERY_EMBEDDING,
    SCORE,
    SCORES,
    SESSION_EMBEDDING,
    TOP_K,
    USER_ID,
)
from shopserve.settings import SearchSettings
from shopserve.text import PairEncoder, PairTokenizer
from transformers_pre import blend
from transformers_pre.catalog import Catalog
from transformers_pre.relevance import ConcurrencyLimit, RelevanceCache
from transformers_pre.rewrite import split_negation
from transformers_pre.semantic import SemanticIndex
from transformers_pre.session import SessionModel

log = logging.getLogger(__name__)

#: The explanation term that keeps an unranked tail or a popularity backfill below the results
#: before it: the final score minus the sum of the weighted terms (0 for other results).
ADJUSTMENT = "adjustment"


class Stage(StrEnum):
    """A timed stage of a request: the keys of ``stage_ms`` and the ``stage`` label of the stage
    histogram. The values are in responses and metrics: renaming one breaks dashboards."""

    NORMALISE = "normalise"
    LEXICAL = "lexical"
    SEMANTIC = "semantic"
    RECALL = "recall"
    SEQUENCE = "sequence"
    FILTER = "filter"
    TOKENISE = "tokenise"
    RANK = "rank"
    BLEND = "blend"


#: Stages timed per request, in request order (exported as Prometheus histograms by the model).
STAGES = tuple(Stage)


class Dependency(StrEnum):
    """An upstream model a request degrades without: named in the response's ``degraded``, the
    ``stage`` label of the degradation counter, and its upstream's errors. Not to be confused
    with the model contracts ``shopserve.protocol.RECALL`` and ``RANKER``."""

    RECALL = "recall"
    RANKER = "ranker"
    SEQUENCE = "sequence"
    SEMANTIC = "semantic"


class DegradationReason(StrEnum):
    """Why a dependency was worked around: the ``reason`` label of the degradation counter and
    the values of the response's ``degraded_reasons``."""

    TIMEOUT = "timeout"
    """The call ran past its time budget."""
    UNAVAILABLE = "unavailable"
    """The call failed (connection refused or dropped, an error status)."""
    CIRCUIT_OPEN = "circuit_open"
    """No call was made: the dependency's circuit breaker is open after consecutive failures."""
    OVERLOAD = "overload"
    """No call was made: as many calls as the dependency is admitted are in flight (shedding
    load, not a failure of the dependency)."""

    @classmethod
    def of(cls, exc: ShopserveError) -> DegradationReason:
        """The reason a dependency's error stands for."""
        if isinstance(exc, UpstreamTimeout):
            return cls.TIMEOUT
        if isinstance(exc, CircuitOpen):
            return cls.CIRCUIT_OPEN
        if isinstance(exc, UpstreamOverloaded):
            return cls.OVERLOAD
        return cls.UNAVAILABLE


class InferClient(Protocol):
    """What the engine needs of an upstream model (see :class:`transformers_pre.upstream.Upstream`)."""

    name: str

    async def infer(
        self, inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any] | None = None,
        request_id: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Call the model."""
        ...


@dataclass(frozen=True)
class SearchRequest:
    """One validated request row.

    Attributes:
        query: Normalised query; empty for recommendations.
        user_id: Shopper id, -1 for anonymous.
        top_n: Results wanted.
        category: Only items of this category.
        min_price: Only items at or above this price.
        max_price: Only items at or below this price.
        exclude_purchased: Leave out items the user already bought.
        request_id: Forwarded upstream as ``x-request-id``.
        allow_degraded: False fails the request with the dependency's error (503, or 504 for a
            timeout) where it would otherwise answer degraded.
        recent: Catalog rows of the shopper's recent items in this session, newest last (the
            ones the catalog knows).
        explain: Keep each result's score terms and sources.
    """

    query: str
    user_id: int = ANONYMOUS_USER
    top_n: int = 10
    category: str | None = None
    min_price: float | None = None
    max_price: float | None = None
    exclude_purchased: bool = False
    request_id: str | None = None
    allow_degraded: bool = True
    recent: tuple[int, ...] = ()
    explain: bool = False


@dataclass
class SearchResult:
    """The answer for one row.

    Attributes:
        rows: Catalog rows, best first (at most ``top_n``).
        scores: Final blended score per row.
        degraded: Stages that failed and were worked around.
        failures: Exception per degraded stage (for metrics and logs; its reason:
            :meth:`DegradationReason.of`).
        stage_ms: Milliseconds spent per stage.
        relevance: The ranker's relevance of the ranked head of ``rows`` (for drift monitoring);
            None when nothing was ranked (ranker off or degraded, recommendations).
        ranker_pairs: (query, title) pairs sent to the ranker (0 when it was not called).
        cached_pairs: Pairs of the shortlist whose score came from the relevance cache.
        parts: Per result, each weighted score term (``blend.PARTS``) and ``adjustment``, what
            keeps an unranked tail or a backfill below the head (0 elsewhere); they sum to
            ``scores``. Filled only for ``explain``.
        sources: Per result, the :class:`~transformers_pre.blend.Source` flags that found it.
    """

    rows: np.ndarray
    scores: np.ndarray
    degraded: list[str] = field(default_factory=list)
    failures: dict[str, ShopserveError] = field(default_factory=dict)
    stage_ms: dict[str, float] = field(default_factory=dict)
    relevance: np.ndarray | None = None
    ranker_pairs: int = 0
    cached_pairs: int = 0
    parts: dict[str, np.ndarray] = field(default_factory=dict)
    sources: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint8))


@dataclass(frozen=True)
class EngineConfig:
    """Candidate counts, blend weights, relevance cache and ranker admission (from
    :class:`shopserve.settings.SearchSettings`).

    ``relevance_cache_entries`` 0 turns the cache off; ``ranker_max_concurrency`` 0 admits every
    ranker call.
    """

    lexical_candidates: int = 100
    recall_candidates: int = 100
    rank_candidates: int = 50
    sequence_candidates: int = 100
    semantic_candidates: int = 100
    query_rewrite: bool = True
    lexical_scale: str = "query"
    semantic_gate: float = 1.0
    query_negation: bool = True
    ranker_enabled: bool = True
    weights: blend.Weights = blend.Weights()
    max_length: int = 64
    relevance_cache_entries: int = 0
    ranker_max_concurrency: int = 0

    @classmethod
    def from_settings(cls, s: SearchSettings, max_length: int, **overrides: Any) -> EngineConfig:
        """The engine's configuration as deployed: from the transformer's settings.

        Args:
            s: Search settings.
            max_length: The ranker's longest sequence (its manifest's ``max_sequence_length``).
            **overrides: Fields to set otherwise (e.g. ``ranker_enabled=True``).
        """
        fields: dict[str, Any] = {
            "lexical_candidates": s.lexical_candidates, "recall_candidates": s.recall_candidates,
            "rank_candidates": s.rank_candidates, "ranker_enabled": s.ranker_enabled,
            "sequence_candidates": s.sequence_candidates,
            "semantic_candidates": s.semantic_candidates,
            "query_rewrite": s.query_rewrite, "lexical_scale": s.lexical_scale,
            "semantic_gate": s.semantic_gate, "query_negation": s.query_negation,
            "max_length": max_length,
            "relevance_cache_entries": (s.relevance_cache_entries
                                        if s.relevance_cache_enabled else 0),
            "ranker_max_concurrency": s.ranker_max_concurrency,
            "weights": blend.Weights(s.weight_relevance, s.weight_personal, s.weight_popularity,
                                     s.weight_lexical, s.weight_session, s.weight_semantic),
        }
        return cls(**{**fields, **overrides})


class _Timer:
    def __init__(self, into: dict[str, float], stage: str) -> None:
        self.into, self.stage = into, stage

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.into[self.stage] = self.into.get(self.stage, 0.0) + (
            time.perf_counter() - self.start) * 1000.0


@dataclass(frozen=True)
class Session:
    """The sequence model's answer for one shopper: its next items as catalog rows, their scores,
    and the session vector."""

    next_rows: np.ndarray
    next_scores: np.ndarray
    vector: np.ndarray


class SearchEngine:
    """Search and recommendation over a catalog, with recall, ranker and sequence model upstream.

    Args:
        catalog: Items, BM25 index, purchases.
        tokenizer: The ranker's tokenizer.
        recall: Client of ``mf-recall``.
        ranker: Client of ``bert-ranker``.
        config: Candidate counts, weights, max sequence length.
        sequence: Client of ``seq-recommender``; None without a sequence model (recent items then
            only leave what was just seen out of recommendations).
        session_model: The bundle's sequence component (rows <-> model indices, embeddings).
        ranker_version: The ranker's bundle version (its component manifest's), the first part of
            every relevance cache key.
        semantic: Client of ``query-encoder``; None without a semantic path.
        semantic_index: The bundle's semantic component (item embeddings, index, tokenizer).

    Attributes:
        relevance_cache: The cache of the ranker's scores; None when it is off.
        ranker_admission: The limit on ranker calls in flight.
        cache_errors: Failures of the cache (each one answered as if the cache were off).
    """

    def __init__(self, catalog: Catalog, tokenizer: PairTokenizer, recall: InferClient,
                 ranker: InferClient, config: EngineConfig, sequence: InferClient | None = None,
                 session_model: SessionModel | None = None, ranker_version: str = "unknown",
                 semantic: InferClient | None = None,
                 semantic_index: SemanticIndex | None = None) -> None:
        self.catalog = catalog
        # Titles tokenised once, on a thread of their own so that loading does not wait for them:
        # a request then tokenises only its query (shopserve.text.PairEncoder).
        self.pairs = PairEncoder(tokenizer, catalog.titles, config.max_length, background=True)
        self.recall = recall
        self.ranker = ranker
        self.config = config
        self.sequence = sequence if session_model is not None else None
        self.session_model = session_model
        self.semantic = semantic if semantic_index is not None else None
        self.semantic_index = semantic_index
        self.relevance_cache = (RelevanceCache(config.relevance_cache_entries, ranker_version)
                                if config.relevance_cache_entries else None)
        self.ranker_admission = ConcurrencyLimit(config.ranker_max_concurrency)
        self.cache_errors = 0

    async def search(self, req: SearchRequest, stage_ms: dict[str, float] | None = None
                     ) -> SearchResult:
        """Answer one request row (see module docstring)."""
        result = SearchResult(np.empty(0, np.int64), np.empty(0, np.float32),
                              stage_ms=dict(stage_ms or {}))
        timings = result.stage_ms
        with _Timer(timings, Stage.FILTER):
            exclude = (self.catalog.purchased_rows(req.user_id)
                       if req.exclude_purchased and req.user_id != ANONYMOUS_USER else None)
            lexical_query, refused = self._negation(req.query)
            if refused is not None:
                exclude = refused if exclude is None else np.union1d(exclude, refused)
            mask = self.catalog.filter_mask(req.category, req.min_price, req.max_price, exclude)
        tasks: list[asyncio.Future[Any]] = []
        recall_task = sequence_task = semantic_task = None
        if req.query and self.semantic is not None:
            semantic_task = asyncio.ensure_future(
                self._timed(timings, Stage.SEMANTIC, self._embed(req)))
            tasks.append(semantic_task)
        if req.user_id != ANONYMOUS_USER:
            recall_task = asyncio.ensure_future(
                self._timed(timings, Stage.RECALL, self._recall(req)))
            tasks.append(recall_task)
        if self.sequence is not None and self.session_model is not None and (
                self.session_model.knows_any(req.recent)):
            sequence_task = asyncio.ensure_future(
                self._timed(timings, Stage.SEQUENCE, self._sequence(req)))
            tasks.append(sequence_task)
        try:
            if not req.query:
                return await self._recommend(req, mask, recall_task, sequence_task, result)
            return await self._search(req, lexical_query, mask, recall_task, sequence_task,
                                      semantic_task, result)
        finally:
            for task in tasks:  # only left running when a request that allows no degradation failed
                task.cancel()

    def _negation(self, query: str) -> tuple[str, np.ndarray | None]:
        """The query BM25 searches and the rows the query's negation refuses
        (:func:`transformers_pre.rewrite.split_negation`): the words before the cue, and the rows
        whose title or attributes hold the refused words (None when it refuses nothing)."""
        if not query or not self.config.query_negation:
            return query, None
        negation = split_negation(query)
        if not negation.refused:
            return query, None
        return negation.positive, self.catalog.rows_with_all(negation.refused,
                                                             self.config.query_rewrite)

    async def _search(self, req: SearchRequest, lexical_query: str, mask: np.ndarray | None,
                      recall_task: asyncio.Future[Any] | None,
                      sequence_task: asyncio.Future[Any] | None,
                      semantic_task: asyncio.Future[Any] | None, result: SearchResult
                      ) -> SearchResult:
        timings = result.stage_ms
        w = self.config.weights
        with _Timer(timings, Stage.LEXICAL):
            hits = self.catalog.lexical_hits(
                lexical_query, self.config.lexical_candidates, mask, self.config.query_rewrite)
        mf_rows, mf_scores = await self._await_recall(req, recall_task, result)
        session = await self._await_sequence(req, sequence_task, result)
        query_vector = await self._await_semantic(req, semantic_task, result)
        with _Timer(timings, Stage.FILTER):
            if mask is not None and mf_rows.size:
                keep = mask[mf_rows]
                mf_rows, mf_scores = mf_rows[keep], mf_scores[keep]
            reference = hits.ideal if self.config.lexical_scale == "query" else 0.0
            candidates = blend.union(hits.rows, hits.scores, mf_rows, mf_scores,
                                     lexical_reference=reference)
            w = blend.gate_semantic(w, blend.lexical_coverage(hits.scores, reference),
                                    self.config.semantic_gate)
        if query_vector is not None:
            assert self.semantic_index is not None
            with _Timer(timings, Stage.SEMANTIC):
                sem_rows, _ = self.semantic_index.search(
                    query_vector, self.config.semantic_candidates, mask)
                candidates = blend.add_rows(candidates, sem_rows, blend.Source.SEMANTIC)
                candidates = candidates.with_semantic(
                    self.semantic_index.similarity(query_vector, candidates.rows))
        if not len(candidates):
            return result
        if session is not None:
            assert self.session_model is not None
            candidates = candidates.with_session(
                self.session_model.scores(session.vector, candidates.rows))
        popularity = self.catalog.popularity[candidates.rows]
        first = blend.first_stage(candidates, popularity, w)
        shortlist = blend.top_n(first, self.config.rank_candidates)
        relevance = await self._rank(req, candidates.rows[shortlist], result)
        with _Timer(timings, Stage.BLEND):
            ranked = candidates.take(shortlist)
            parts = blend.blend_parts(ranked, popularity[shortlist], w, relevance)
            scores = blend.total(parts)
            order = blend.top_n(scores, req.top_n)
            rows, final, sources = ranked.rows[order], scores[order], ranked.sources[order]
            kept = {name: part[order] for name, part in parts.items()}
            kept[ADJUSTMENT] = np.zeros(order.size, dtype=np.float32)
            if relevance is not None:
                result.relevance = relevance[order]
            if rows.size < req.top_n and len(candidates) > shortlist.size:
                # The unranked tail follows the ranked head, by first-stage score.
                rest = np.setdiff1d(np.arange(len(candidates)), shortlist, assume_unique=True)
                rest = rest[blend.top_n(first[rest], req.top_n - rows.size)]
                floor = float(final.min()) if final.size else 0.0
                tail = np.minimum(first[rest], np.nextafter(np.float32(floor), np.float32(-1)))
                tail = tail.astype(np.float32)
                rows = np.concatenate([rows, candidates.rows[rest]])
                final = np.concatenate([final, tail])
                sources = np.concatenate([sources, candidates.sources[rest]])
                if req.explain:
                    tail_parts = blend.first_stage_parts(candidates.take(rest), popularity[rest], w)
                    tail_parts[ADJUSTMENT] = tail - blend.total(tail_parts)
                    kept = {name: np.concatenate([kept[name], tail_parts[name]]) for name in kept}
            result.rows, result.scores, result.sources = rows, final, sources
            if req.explain:
                result.parts = kept
        return result

    async def _recommend(self, req: SearchRequest, mask: np.ndarray | None,
                         recall_task: asyncio.Future[Any] | None,
                         sequence_task: asyncio.Future[Any] | None, result: SearchResult
                         ) -> SearchResult:
        w = self.config.weights
        mf_rows, mf_scores = await self._await_recall(req, recall_task, result)
        session = await self._await_sequence(req, sequence_task, result)
        recent = np.asarray(req.recent, dtype=np.int64)
        with _Timer(result.stage_ms, Stage.FILTER):
            none = np.empty(0, np.int64)
            candidates = blend.union(none, np.empty(0, np.float32), mf_rows, mf_scores)
            if session is not None:
                candidates = blend.add_rows(
                    candidates, session.next_rows[: self.config.sequence_candidates],
                    blend.Source.SEQUENCE)
            keep = ~np.isin(candidates.rows, recent)  # what was just seen is not recommended
            if mask is not None:
                keep &= mask[candidates.rows]
            candidates = candidates.take(keep)
            if session is not None:
                assert self.session_model is not None
                candidates = candidates.with_session(
                    self.session_model.scores(session.vector, candidates.rows))
        with _Timer(result.stage_ms, Stage.BLEND):
            parts = blend.recommend_parts(candidates, self.catalog.popularity[candidates.rows], w)
            scores = blend.total(parts)
            order = blend.top_n(scores, req.top_n)
            rows, final, sources = candidates.rows[order], scores[order], candidates.sources[order]
            kept = {name: part[order] for name, part in parts.items()}
            kept[ADJUSTMENT] = np.zeros(order.size, dtype=np.float32)
            if rows.size < req.top_n:
                # Backfill with popular items (the whole answer for anonymous shoppers).
                popular = self.catalog.popular(req.top_n + rows.size + recent.size, mask)
                popular = popular[~np.isin(popular, rows) & ~np.isin(popular, recent)]
                popular = popular[: req.top_n - rows.size]
                floor = float(final.min()) if final.size else w.popularity
                prior = (w.popularity * self.catalog.popularity[popular]).astype(np.float32)
                tail = np.minimum(prior, np.nextafter(np.float32(floor), np.float32(-1)))
                tail = tail.astype(np.float32)
                rows = np.concatenate([rows, popular])
                final = np.concatenate([final, tail])
                sources = np.concatenate(
                    [sources, np.full(popular.size, blend.Source.POPULAR, dtype=np.uint8)])
                zero = np.zeros(popular.size, dtype=np.float32)
                backfill = {name: zero for name in kept}
                backfill["popularity"], backfill[ADJUSTMENT] = prior, tail - prior
                kept = {name: np.concatenate([kept[name], backfill[name]]) for name in kept}
            result.rows, result.scores, result.sources = rows, final, sources
            if req.explain:
                result.parts = kept
        return result

    async def _recall(self, req: SearchRequest) -> dict[str, np.ndarray]:
        return await self.recall.infer(
            {USER_ID: np.array([req.user_id], dtype=np.int64)},
            # Searching may return items seen before; recommending should show something new.
            {TOP_K: self.config.recall_candidates, EXCLUDE_SEEN: not req.query},
            req.request_id,
        )

    async def _await_recall(self, req: SearchRequest, task: asyncio.Future[Any] | None,
                            result: SearchResult) -> tuple[np.ndarray, np.ndarray]:
        empty = (np.empty(0, np.int64), np.empty(0, np.float32))
        if task is None:
            return empty
        try:
            outputs = await task
        except ShopserveError as exc:
            self._degrade(req, result, Dependency.RECALL, exc)
            return empty
        rows = self.catalog.rows(outputs[ITEM_IDS][0])
        scores = outputs[SCORES][0].astype(np.float32)
        keep = rows >= 0  # drops padding (-1) and items the catalog no longer has
        return rows[keep], scores[keep]

    async def _embed(self, req: SearchRequest) -> np.ndarray:
        """The query's embedding from ``query-encoder``, checked against the index's dimension
        (a mismatched encoder fails the stage, it is not searched with)."""
        assert self.semantic is not None and self.semantic_index is not None
        outputs = await self.semantic.infer(self.semantic_index.encode(req.query), None,
                                            req.request_id)
        vector = np.asarray(outputs[QUERY_EMBEDDING], dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.semantic_index.dim or not np.isfinite(vector).all():
            raise UpstreamUnavailable(
                f"{self.semantic.name}: {QUERY_EMBEDDING} of {vector.shape[0]} values (finite: "
                f"{bool(np.isfinite(vector).all())}), the semantic index takes "
                f"{self.semantic_index.dim}")
        return vector

    async def _await_semantic(self, req: SearchRequest, task: asyncio.Future[Any] | None,
                              result: SearchResult) -> np.ndarray | None:
        if task is None:
            return None
        try:
            vector: np.ndarray = await task
        except ShopserveError as exc:
            self._degrade(req, result, Dependency.SEMANTIC, exc)
            return None
        return vector

    async def _sequence(self, req: SearchRequest) -> dict[str, np.ndarray]:
        assert self.sequence is not None and self.session_model is not None
        return await self.sequence.infer(
            {ITEM_SEQUENCE: self.session_model.sequence(req.recent)}, None, req.request_id)

    async def _await_sequence(self, req: SearchRequest, task: asyncio.Future[Any] | None,
                              result: SearchResult) -> Session | None:
        if task is None:
            return None
        try:
            outputs = await task
        except ShopserveError as exc:
            self._degrade(req, result, Dependency.SEQUENCE, exc)
            return None
        assert self.session_model is not None
        rows, kept = self.session_model.rows(outputs[NEXT_ITEMS][0])
        scores = outputs[NEXT_SCORES][0].astype(np.float32)[kept]
        return Session(rows, scores, outputs[SESSION_EMBEDDING][0].astype(np.float32))

    async def _rank(self, req: SearchRequest, rows: np.ndarray, result: SearchResult
                    ) -> np.ndarray | None:
        """The ranker's relevance of ``rows`` (sigmoid of its scores), None when degraded.

        Cached pairs are not sent again; the misses go in one call, admitted only below the
        concurrency limit. The scores are merged in ``rows`` order, so the answer is the one the
        ranker would give for all of them.
        """
        if not self.config.ranker_enabled:
            return None
        scores, missing = self._cached(req.query, rows)
        result.cached_pairs = int(rows.size - missing.sum())
        if missing.any():
            if not self.ranker_admission.try_acquire():
                self._degrade(req, result, Dependency.RANKER, UpstreamOverloaded(
                    f"{self.ranker.name} skipped: {self.ranker_admission.limit} calls in flight "
                    "(ranker_max_concurrency)"))
                return None
            try:
                misses = rows[missing]
                with _Timer(result.stage_ms, Stage.TOKENISE):
                    batch = self.pairs.encode(req.query, misses)
                result.ranker_pairs = int(misses.size)
                outputs = await self._timed(result.stage_ms, Stage.RANK,
                                            self.ranker.infer(batch, None, req.request_id))
            except ShopserveError as exc:
                self._degrade(req, result, Dependency.RANKER, exc)
                return None
            finally:
                self.ranker_admission.release()
            fresh = outputs[SCORE].reshape(-1).astype(np.float32)
            scores[missing] = fresh
            self._keep(req.query, misses, fresh)
        return blend.sigmoid(scores)

    def _cached(self, query: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cached raw scores (NaN where missing) and the mask of misses; all misses when the
        cache is off or fails (a cache bug costs ranker calls, never an answer)."""
        cache = self.relevance_cache
        if cache is not None:
            try:
                return cache.lookup(query, rows)
            except Exception:  # noqa: BLE001 - degrade to no cache, counted and logged
                self._cache_failed("look-up")
        return np.full(rows.size, np.nan, np.float32), np.ones(rows.size, dtype=bool)

    def _keep(self, query: str, rows: np.ndarray, scores: np.ndarray) -> None:
        cache = self.relevance_cache
        if cache is None:
            return
        try:
            cache.store(query, rows, scores)
        except Exception:  # noqa: BLE001 - degrade to no cache, counted and logged
            self._cache_failed("store")

    def _cache_failed(self, what: str) -> None:
        self.cache_errors += 1
        if self.cache_errors == 1:
            log.exception("relevance cache %s failed: answering without it (counted in "
                          "shopserve_search_relevance_cache_errors_total; later failures at DEBUG)",
                          what)
        else:
            log.debug("relevance cache %s failed", what, exc_info=True)

    @staticmethod
    def _degrade(req: SearchRequest, result: SearchResult, stage: str, exc: ShopserveError
                 ) -> None:
        if not req.allow_degraded:
            raise exc
        if stage not in result.degraded:
            result.degraded.append(stage)
        result.failures[stage] = exc

    @staticmethod
    async def _timed(into: dict[str, float], stage: str, call: Awaitable[Any]) -> Any:
        start = time.perf_counter()
        try:
            return await call
        finally:
            into[stage] = into.get(stage, 0.0) + (time.perf_counter() - start) * 1000.0
