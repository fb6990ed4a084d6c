"""The request path of one search or recommendation request (DESIGN.md, "The request path").

``SearchEngine.search`` runs, for one request row:

1. filter mask (category, price range, purchases to exclude);
2. lexical candidates (BM25) and, concurrently, personalised candidates from ``mf-recall``;
3. the union of both, filtered;
4. tokenised (query, title) pairs of the best ``rank_candidates`` scored by ``bert-ranker``;
5. the blend of relevance, personalisation and popularity; top N.

Without a query it recommends: MF candidates for a known user, popularity otherwise, backfilled
with popular items when filters leave too few. A failing dependency degrades the answer, it never
fails it: the stage is named in ``degraded`` with its :class:`DegradationReason`, and the caller
counts it. Only a request that says it takes no degraded answer (``allow_degraded`` false: an
offline evaluation, a canary analysis) fails instead, with the dependency's error: 504 for a
timeout, 503 otherwise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from shopserve.errors import CircuitOpen, ShopserveError, UpstreamTimeout
from shopserve.protocol import ANONYMOUS_USER, EXCLUDE_SEEN, ITEM_IDS, SCORE, SCORES, TOP_K, USER_ID
from shopserve.settings import SearchSettings
from shopserve.text import PairEncoder, PairTokenizer
from transformers_pre import blend
from transformers_pre.catalog import Catalog


class Stage(StrEnum):
    """A timed stage of a request: the keys of ``stage_ms`` and the ``stage`` label of the stage
    histogram. The values are in responses and metrics: renaming one breaks dashboards."""

    NORMALISE = "normalise"
    LEXICAL = "lexical"
    RECALL = "recall"
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


class DegradationReason(StrEnum):
    """Why a dependency was worked around: the ``reason`` label of the degradation counter and
    the values of the response's ``degraded_reasons``."""

    TIMEOUT = "timeout"
    """The call ran past its time budget."""
    UNAVAILABLE = "unavailable"
    """The call failed (connection refused or dropped, an error status)."""
    CIRCUIT_OPEN = "circuit_open"
    """No call was made: the dependency's circuit breaker is open after consecutive failures."""

    @classmethod
    def of(cls, exc: ShopserveError) -> DegradationReason:
        """The reason a dependency's error stands for."""
        if isinstance(exc, UpstreamTimeout):
            return cls.TIMEOUT
        if isinstance(exc, CircuitOpen):
            return cls.CIRCUIT_OPEN
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
    """

    rows: np.ndarray
    scores: np.ndarray
    degraded: list[str] = field(default_factory=list)
    failures: dict[str, ShopserveError] = field(default_factory=dict)
    stage_ms: dict[str, float] = field(default_factory=dict)
    relevance: np.ndarray | None = None
    ranker_pairs: int = 0


@dataclass(frozen=True)
class EngineConfig:
    """Candidate counts and blend weights (from :class:`shopserve.settings.SearchSettings`)."""

    lexical_candidates: int = 100
    recall_candidates: int = 100
    rank_candidates: int = 50
    query_rewrite: bool = True
    ranker_enabled: bool = True
    weights: blend.Weights = blend.Weights()
    max_length: int = 64

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
            "query_rewrite": s.query_rewrite, "max_length": max_length,
            "weights": blend.Weights(s.weight_relevance, s.weight_personal, s.weight_popularity,
                                     s.weight_lexical),
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


class SearchEngine:
    """Search and recommendation over a catalog, with recall and ranker upstream.

    Args:
        catalog: Items, BM25 index, purchases.
        tokenizer: The ranker's tokenizer.
        recall: Client of ``mf-recall``.
        ranker: Client of ``bert-ranker``.
        config: Candidate counts, weights, max sequence length.
    """

    def __init__(self, catalog: Catalog, tokenizer: PairTokenizer, recall: InferClient,
                 ranker: InferClient, config: EngineConfig) -> None:
        self.catalog = catalog
        # Titles tokenised once: a request tokenises only its query (shopserve.text.PairEncoder).
        self.pairs = PairEncoder(tokenizer, catalog.titles, config.max_length)
        self.recall = recall
        self.ranker = ranker
        self.config = config

    async def search(self, req: SearchRequest, stage_ms: dict[str, float] | None = None
                     ) -> SearchResult:
        """Answer one request row (see module docstring)."""
        result = SearchResult(np.empty(0, np.int64), np.empty(0, np.float32),
                              stage_ms=dict(stage_ms or {}))
        timings = result.stage_ms
        with _Timer(timings, Stage.FILTER):
            exclude = (self.catalog.purchased_rows(req.user_id)
                       if req.exclude_purchased and req.user_id != ANONYMOUS_USER else None)
            mask = self.catalog.filter_mask(req.category, req.min_price, req.max_price, exclude)
        known_user = req.user_id != ANONYMOUS_USER
        recall_task = (asyncio.ensure_future(self._timed(timings, Stage.RECALL, self._recall(req)))
                       if known_user else None)
        if not req.query:
            return await self._recommend(req, mask, recall_task, result)

        with _Timer(timings, Stage.LEXICAL):
            lex_rows, lex_scores = self.catalog.lexical(
                req.query, self.config.lexical_candidates, mask, self.config.query_rewrite)
        mf_rows, mf_scores = await self._await_recall(req, recall_task, result)
        with _Timer(timings, Stage.FILTER):
            if mask is not None and mf_rows.size:
                keep = mask[mf_rows]
                mf_rows, mf_scores = mf_rows[keep], mf_scores[keep]
            candidates = blend.union(lex_rows, lex_scores, mf_rows, mf_scores)
        if not len(candidates):
            return result
        popularity = self.catalog.popularity[candidates.rows]
        first = blend.first_stage(candidates, popularity, self.config.weights)
        shortlist = blend.top_n(first, self.config.rank_candidates)
        relevance = await self._rank(req, candidates.rows[shortlist], result)
        with _Timer(timings, Stage.BLEND):
            ranked = candidates.take(shortlist)
            scores = blend.blend(ranked, popularity[shortlist], self.config.weights, relevance)
            order = blend.top_n(scores, req.top_n)
            rows, final = ranked.rows[order], scores[order]
            if relevance is not None:
                result.relevance = relevance[order]
            if rows.size < req.top_n and len(candidates) > shortlist.size:
                # The unranked tail follows the ranked head, by first-stage score.
                rest = np.setdiff1d(np.arange(len(candidates)), shortlist, assume_unique=True)
                rest = rest[blend.top_n(first[rest], req.top_n - rows.size)]
                floor = float(final.min()) if final.size else 0.0
                tail = np.minimum(first[rest], np.nextafter(np.float32(floor), np.float32(-1)))
                rows = np.concatenate([rows, candidates.rows[rest]])
                final = np.concatenate([final, tail.astype(np.float32)])
            result.rows, result.scores = rows, final
        return result

    async def _recommend(self, req: SearchRequest, mask: np.ndarray | None,
                         recall_task: asyncio.Future[Any] | None, result: SearchResult
                         ) -> SearchResult:
        mf_rows, mf_scores = await self._await_recall(req, recall_task, result)
        with _Timer(result.stage_ms, Stage.FILTER):
            if mask is not None and mf_rows.size:
                keep = mask[mf_rows]
                mf_rows, mf_scores = mf_rows[keep], mf_scores[keep]
        with _Timer(result.stage_ms, Stage.BLEND):
            w = self.config.weights
            scores = (w.personal * blend.scale_min_max(mf_scores)
                      + w.popularity * self.catalog.popularity[mf_rows]).astype(np.float32)
            order = blend.top_n(scores, req.top_n)
            rows, final = mf_rows[order], scores[order]
            if rows.size < req.top_n:
                # Backfill with popular items (the whole answer for anonymous shoppers).
                popular = self.catalog.popular(req.top_n + rows.size, mask)
                popular = popular[~np.isin(popular, rows)][: req.top_n - rows.size]
                floor = float(final.min()) if final.size else w.popularity
                tail = np.minimum(w.popularity * self.catalog.popularity[popular],
                                  np.nextafter(np.float32(floor), np.float32(-1)))
                rows = np.concatenate([rows, popular])
                final = np.concatenate([final, tail.astype(np.float32)])
            result.rows, result.scores = rows, final
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

    async def _rank(self, req: SearchRequest, rows: np.ndarray, result: SearchResult
                    ) -> np.ndarray | None:
        if not self.config.ranker_enabled:
            return None
        with _Timer(result.stage_ms, Stage.TOKENISE):
            batch = self.pairs.encode(req.query, rows)
        result.ranker_pairs = int(rows.size)
        try:
            outputs = await self._timed(result.stage_ms, Stage.RANK,
                                        self.ranker.infer(batch, None, req.request_id))
        except ShopserveError as exc:
            self._degrade(req, result, Dependency.RANKER, exc)
            return None
        return blend.sigmoid(outputs[SCORE].reshape(-1).astype(np.float32))

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
