"""``search``: the KServe adapter of the transformer.

Decodes and validates the v2 request (400 naming the field, REST and gRPC alike), runs
:class:`~transformers_pre.engine.SearchEngine` for every row concurrently, and encodes the ranked
lists with ``degraded`` and ``stage_ms`` in the response parameters. Counts each degradation and
times each stage in Prometheus; logs degraded answers through
:class:`~transformers_pre.monitoring.DegradationLog` (the first in full, then counts per interval)
and never what a shopper typed.

Response parameters are v2 scalars so REST and gRPC carry the same thing: ``degraded`` is a
comma-separated list of stage names (empty when nothing degraded), ``degraded_reasons`` a JSON
object of the reason per degraded stage (``{"ranker": "timeout"}``; ``{}`` when nothing degraded),
``stage_ms`` a JSON object of milliseconds per stage (the slowest row's, when the batch has
several). The request parameter ``allow_degraded`` false turns a degradation into the
dependency's error (503, or 504 for a timeout).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
from kserve.protocol.infer_type import InferRequest, InferResponse
from prometheus_client import Counter, Histogram

from shopserve import metric_names
from shopserve.artifacts import (
    CATALOG_COMPONENT,
    MANIFEST,
    MAX_SEQUENCE_LENGTH,
    RANKER_COMPONENT,
    RANKER_TOKENIZER_DIR,
    SEMANTIC_COMPONENT,
    SEQUENCE_COMPONENT,
    load_component,
)
from shopserve.errors import BundleError, InferenceFailed, InvalidInput
from shopserve.protocol import (
    ALLOW_DEGRADED,
    ANONYMOUS_USER,
    CATEGORY,
    DEGRADED,
    DEGRADED_REASONS,
    EXCLUDE_PURCHASED,
    EXPLAIN,
    EXPLANATIONS,
    ITEM_IDS,
    MAX_PRICE,
    MIN_PRICE,
    QUERY,
    RECENT_ITEMS,
    SCORES,
    SEARCH,
    STAGE_MS,
    TITLES,
    TOP_N,
    USER_ID,
    parameter,
)
from shopserve.serving import MODEL_INFO, ContractModel, decode_inputs, encode_response, request_parameters
from shopserve.settings import SearchSettings
from shopserve.text import PairTokenizer, normalise_query
from transformers_pre.blend import Source
from transformers_pre.catalog import Catalog
from transformers_pre.engine import (
    STAGES,
    DegradationReason,
    Dependency,
    EngineConfig,
    SearchEngine,
    SearchRequest,
    SearchResult,
    Stage,
)
from transformers_pre.monitoring import DRIFT, ENGINE, DegradationLog, load_window
from transformers_pre.semantic import SemanticIndex
from transformers_pre.session import SessionModel
from transformers_pre.upstream import Upstream

log = logging.getLogger(__name__)

#: How long ``stop()`` waits for searches in flight before closing the upstream channels (the
#: servers' own grace period, ``shopserve.serving.serve``).
DRAIN_TIMEOUT_S = 10.0

STAGE_SECONDS = Histogram(
    metric_names.SEARCH_STAGE_SECONDS, "Time per request stage of the search transformer.",
    ["stage"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5),
)
REQUEST_SECONDS = Histogram(
    metric_names.SEARCH_REQUEST_SECONDS, "End-to-end time of a search request.", ["mode"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5),
)
REQUESTS = Counter(metric_names.SEARCH_ROWS_TOTAL, "Request rows answered, by mode.", ["mode"])
BATCH_SIZE = Histogram(
    metric_names.SEARCH_BATCH_SIZE, "Rows (queries) per search request.",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
RANKER_BATCH_SIZE = Histogram(
    metric_names.SEARCH_RANKER_BATCH_SIZE, "(query, title) pairs per ranker call.",
    buckets=(1, 5, 10, 20, 50, 100, 200, 500),
)
FAULTS_INJECTED = Counter(
    metric_names.SEARCH_FAULTS_INJECTED_TOTAL,
    "Faults injected on purpose (settings fault_delay_ms, fault_error_ratio), by kind.", ["kind"],
)
UNKNOWN_RECENT_ITEMS = Counter(
    metric_names.SEARCH_UNKNOWN_RECENT_ITEMS_TOTAL,
    "Ids in recent_items that the catalog does not know (ignored; the request is answered).",
)
DEGRADED_TOTAL = Counter(
    metric_names.SEARCH_DEGRADED_TOTAL,
    "Request rows answered without a failing dependency, by stage and reason.",
    ["stage", "reason"],
)


class SearchModel(ContractModel):
    """The ``search`` transformer as a KServe model."""

    def __init__(self, settings: SearchSettings) -> None:
        super().__init__(SEARCH, settings.model_name)
        self.settings = settings
        # Not ``self.engine``: KServe reads a truthy ``engine`` as "start_engine()/stop_engine()
        # this model" (an LLM engine), a flag it sets to False in BaseKServeModel.
        self.search_engine: SearchEngine | None = None
        self.upstreams: tuple[Upstream, ...] = ()
        self._closing: asyncio.Task[None] | None = None
        self._in_flight = 0
        self.degradation_log = DegradationLog(log, settings.failure_log_interval_ms / 1000)

    def load(self) -> bool:
        """Load the catalog and the ranker's tokenizer; open (lazy) upstream channels."""
        s = self.settings
        bundle = Path(s.bundle_dir)
        try:
            catalog = Catalog.load(bundle / CATALOG_COMPONENT)
            ranker = load_component(bundle / RANKER_COMPONENT, RANKER_COMPONENT,
                                    only=f"{RANKER_TOKENIZER_DIR}/")
            tokenizer = PairTokenizer.from_dir(bundle / RANKER_COMPONENT / RANKER_TOKENIZER_DIR)
            max_length = int(ranker.params[MAX_SEQUENCE_LENGTH])
            DRIFT.window = load_window(bundle, s.drift_window, s.drift_min_samples)
        except (BundleError, OSError, KeyError, ValueError) as exc:
            raise BundleError(f"cannot serve search from bundle {bundle}: {exc}") from exc
        session_model = self._load_session_model(bundle, catalog)
        semantic_index = self._load_semantic_index(bundle, catalog)
        config = EngineConfig.from_settings(s, max_length)
        breaker = {"breaker_failures": s.breaker_failures,
                   "breaker_cooldown_s": s.breaker_cooldown_ms / 1000}
        recall_upstream = Upstream(Dependency.RECALL, s.recall_host, s.recall_model,
                                   s.recall_timeout_ms / 1000, s.upstream_retries, **breaker)
        ranker_upstream = Upstream(Dependency.RANKER, s.ranker_host, s.ranker_model,
                                   s.ranker_timeout_ms / 1000, s.upstream_retries, **breaker)
        sequence_upstream = None
        if session_model is not None:
            sequence_upstream = Upstream(Dependency.SEQUENCE, s.sequence_host, s.sequence_model,
                                         s.sequence_timeout_ms / 1000, s.upstream_retries,
                                         **breaker)
        semantic_upstream = None
        if semantic_index is not None:
            semantic_upstream = Upstream(Dependency.SEMANTIC, s.semantic_host, s.semantic_model,
                                         s.semantic_timeout_ms / 1000, s.upstream_retries,
                                         **breaker)
        self.upstreams = tuple(u for u in (recall_upstream, ranker_upstream, sequence_upstream,
                                           semantic_upstream) if u is not None)
        self.search_engine = SearchEngine(catalog, tokenizer, recall_upstream, ranker_upstream,
                                          config, sequence_upstream, session_model,
                                          ranker_version=ranker.version,
                                          semantic=semantic_upstream,
                                          semantic_index=semantic_index)
        ENGINE.engine = self.search_engine
        self.categories = frozenset(np.unique(catalog.categories).tolist())
        version = catalog.manifest.version if catalog.manifest else "unknown"
        MODEL_INFO.labels("search", self.name, version, "bm25").set(1)
        # Triton labels its metrics with the repository's version folder (always 1): the bundle
        # version of the ranker is reported here, from the manifest the tokenizer came with.
        MODEL_INFO.labels("ranker", s.ranker_model, ranker.version,
                          str(ranker.params.get("variant", "unknown"))).set(1)
        if s.fault_delay_ms or s.fault_error_ratio:
            # Loud on purpose: fault injection belongs to rehearsals and chaos tests only.
            log.warning("FAULT INJECTION ON: +%.0f ms per request, %.0f%% of requests fail",
                        s.fault_delay_ms, 100 * s.fault_error_ratio)
        if s.query_rewrite and not catalog.has_synonyms:
            log.warning("the catalog component has no mined synonyms (a bundle older than query "
                        "rewriting): spelling correction only")
        log.info("search ready: %d items, ranker %s (max_length %d, version %s, %s calls at "
                 "once, relevance cache %s), recall %s, sequence %s, semantic %s, %d query synonyms",
                 len(catalog), s.ranker_host, max_length, ranker.version,
                 s.ranker_max_concurrency or "unlimited",
                 f"{s.relevance_cache_entries} entries" if s.relevance_cache_enabled else "off",
                 s.recall_host, s.sequence_host if session_model is not None else "off",
                 s.semantic_host if semantic_index is not None else "off",
                 len(catalog.rewriter.synonyms))
        self.ready = True
        return self.ready

    def _load_session_model(self, bundle: Path, catalog: Catalog) -> SessionModel | None:
        """The bundle's sequence component, or None when it has none or the model is off."""
        folder = bundle / SEQUENCE_COMPONENT
        if not self.settings.sequence_enabled:
            return None
        if not (folder / MANIFEST).is_file():
            log.info("the bundle has no sequence model: recommendations from MF and popularity")
            return None
        session_model = SessionModel.load(folder, catalog.items)
        if session_model.manifest is not None:
            MODEL_INFO.labels("sequence", self.settings.sequence_model,
                              session_model.manifest.version,
                              str(session_model.manifest.params.get("variant", "sasrec"))).set(1)
        return session_model

    def _load_semantic_index(self, bundle: Path, catalog: Catalog) -> SemanticIndex | None:
        """The bundle's semantic component, or None when it has none or the path is off."""
        folder = bundle / SEMANTIC_COMPONENT
        if not self.settings.semantic_enabled:
            return None
        if not (folder / MANIFEST).is_file():
            log.info("the bundle has no semantic component: candidates from BM25 and MF only")
            return None
        index = SemanticIndex.load(folder, catalog.items)
        if index.manifest is not None:
            MODEL_INFO.labels("semantic", self.settings.semantic_model, index.manifest.version,
                              "bi-encoder").set(1)
        return index

    def stop(self) -> None:
        """KServe's teardown hook: not ready any more; the upstream gRPC channels are closed once
        the searches in flight have finished (at most :data:`DRAIN_TIMEOUT_S` later).

        ``ModelServer.stop`` (its SIGTERM/SIGINT handler) starts the servers' shutdown and unloads
        every model at once, while REST and gRPC are still draining: closing the channels then
        would cancel the upstream calls of requests already accepted. So the close waits for the
        in-flight count to reach zero, on the serving loop; with no loop running it happens now.
        """
        super().stop()
        self.degradation_log.flush()
        upstreams, self.upstreams = self.upstreams, ()
        if not upstreams:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(self.close_upstreams(upstreams))
            return
        self._closing = loop.create_task(self._close_when_idle(upstreams))

    async def _close_when_idle(self, upstreams: tuple[Upstream, ...]) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self._in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.close_upstreams(upstreams)

    @staticmethod
    async def close_upstreams(upstreams: tuple[Upstream, ...]) -> None:
        """Close the channels of ``upstreams``; one that fails to close does not keep the others
        open."""
        results = await asyncio.gather(*(u.close() for u in upstreams), return_exceptions=True)
        for upstream, result in zip(upstreams, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("closing the %s channel (%s) failed: %s", upstream.name,
                            upstream.host, result)
        log.info("search stopped: upstream channels closed (%s)",
                 ", ".join(u.name for u in upstreams))

    async def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        """Answer one v2 request: a ranked list per query row."""
        self._in_flight += 1
        try:
            return await self._predict(payload, headers)
        finally:
            self._in_flight -= 1

    async def _predict(self, payload: InferRequest, headers: dict[str, str] | None) -> InferResponse:
        engine = self.search_engine
        payload = self.v2_request(payload, engine is not None)
        start = time.perf_counter()
        request_id = (headers or {}).get("x-request-id") or payload.id or None
        requests, normalise_ms = self._decode(payload, request_id)
        await self._inject_faults()
        assert engine is not None
        results = await asyncio.gather(
            *(engine.search(r, {Stage.NORMALISE: normalise_ms}) for r in requests))
        mode = "search" if any(r.query for r in requests) else "recommend"
        self._observe(requests, results)
        self._record_drift(requests, results)
        REQUEST_SECONDS.labels(mode).observe(time.perf_counter() - start)
        return self._encode(payload, requests, results)

    async def _inject_faults(self) -> None:
        """Apply the fault-injection settings (canary rehearsals, chaos tests) to a valid request."""
        s = self.settings
        if s.fault_delay_ms:
            FAULTS_INJECTED.labels("delay").inc()
            await asyncio.sleep(s.fault_delay_ms / 1000.0)
        if s.fault_error_ratio and random.random() < s.fault_error_ratio:
            FAULTS_INJECTED.labels("error").inc()
            raise InferenceFailed(f"injected failure (fault_error_ratio={s.fault_error_ratio}): "
                                  "fault injection for a rehearsal or chaos test")

    # ------------------------------------------------------------------------------- decoding

    def _decode(self, payload: InferRequest, request_id: str | None
                ) -> tuple[list[SearchRequest], float]:
        s = self.settings
        inputs = decode_inputs(payload, self.contract)
        queries = inputs[QUERY]
        batch = queries.shape[0]
        if batch == 0:
            raise InvalidInput(f"input '{QUERY}': empty batch")
        if batch > s.max_batch:
            raise InvalidInput(f"input '{QUERY}': batch of {batch} exceeds the limit {s.max_batch}")
        users = inputs.get(USER_ID)
        if users is None:
            users = np.full(batch, ANONYMOUS_USER, dtype=np.int64)
        elif users.shape[0] != batch:
            raise InvalidInput(f"input '{USER_ID}': batch of {users.shape[0]} differs from "
                               f"'{QUERY}' batch of {batch}")
        params = request_parameters(payload)
        top_n = parameter(params, TOP_N, int, s.default_top_n, 1, s.max_top_n)
        category = parameter(params, CATEGORY, str, None)
        if category is not None and category not in self.categories:
            raise InvalidInput(f"parameter '{CATEGORY}': unknown category {category!r}; "
                               f"known: {', '.join(sorted(self.categories))}")
        min_price = parameter(params, MIN_PRICE, float, None, 0.0)
        max_price = parameter(params, MAX_PRICE, float, None, 0.0)
        if min_price is not None and max_price is not None and min_price > max_price:
            raise InvalidInput(f"parameter '{MIN_PRICE}' ({min_price}) exceeds "
                               f"'{MAX_PRICE}' ({max_price})")
        exclude = parameter(params, EXCLUDE_PURCHASED, bool, False)
        allow_degraded = parameter(params, ALLOW_DEGRADED, bool, True)
        explain = parameter(params, EXPLAIN, bool, False)
        recent = self._recent_rows(inputs.get(RECENT_ITEMS), batch)

        start = time.perf_counter()
        texts = [self._query_text(raw, row) for row, raw in enumerate(queries.tolist())]
        normalise_ms = (time.perf_counter() - start) * 1000.0
        requests = [
            SearchRequest(query=text, user_id=int(user), top_n=top_n, category=category,
                          min_price=min_price, max_price=max_price, exclude_purchased=exclude,
                          request_id=request_id, allow_degraded=allow_degraded,
                          recent=rows, explain=explain)
            for text, user, rows in zip(texts, users.tolist(), recent, strict=True)
        ]
        return requests, normalise_ms

    def _recent_rows(self, recent: np.ndarray | None, batch: int) -> list[tuple[int, ...]]:
        """Catalog rows of each request row's recent items, newest last; -1 is padding, ids the
        catalog does not know are dropped and counted."""
        if recent is None:
            return [()] * batch
        if recent.shape[0] != batch:
            raise InvalidInput(f"input '{RECENT_ITEMS}': batch of {recent.shape[0]} differs from "
                               f"'{QUERY}' batch of {batch}")
        if recent.shape[1] > self.settings.max_recent_items:
            raise InvalidInput(f"input '{RECENT_ITEMS}': {recent.shape[1]} items per row, the "
                               f"limit is {self.settings.max_recent_items}")
        if recent.size and int(recent.min()) < -1:
            raise InvalidInput(f"input '{RECENT_ITEMS}': ids must be >= 0, or -1 for padding; got "
                               f"{int(recent.min())}")
        assert self.search_engine is not None
        rows = self.search_engine.catalog.rows(recent.reshape(-1)).reshape(recent.shape)
        unknown = int(((rows < 0) & (recent >= 0)).sum())
        if unknown:
            UNKNOWN_RECENT_ITEMS.inc(unknown)
        return [tuple(int(r) for r in row[row >= 0]) for row in rows]

    def _query_text(self, raw: bytes, row: int) -> str:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"input '{QUERY}': row {row} is not valid UTF-8") from None
        text = normalise_query(text)
        if len(text) > self.settings.max_query_chars:
            raise InvalidInput(f"input '{QUERY}': row {row} has {len(text)} characters, the limit "
                               f"is {self.settings.max_query_chars}")
        return text

    # ------------------------------------------------------------------------------- encoding

    def _encode(self, payload: InferRequest, requests: list[SearchRequest],
                results: list[SearchResult]) -> InferResponse:
        assert self.search_engine is not None
        top_n = requests[0].top_n
        batch = len(results)
        item_ids = np.full((batch, top_n), -1, dtype=np.int64)
        scores = np.zeros((batch, top_n), dtype=np.float32)
        titles = np.full((batch, top_n), b"", dtype=object)
        explain = requests[0].explain
        explanations = np.full((batch, top_n), b"", dtype=object)
        catalog = self.search_engine.catalog
        for i, result in enumerate(results):
            n = result.rows.shape[0]
            item_ids[i, :n] = catalog.items.ids[result.rows]
            scores[i, :n] = result.scores
            titles[i, :n] = [t.encode("utf-8") for t in catalog.titles[result.rows].tolist()]
            if explain:
                explanations[i, :n] = _explanations(result)
        degraded = sorted({stage for r in results for stage in r.degraded})
        reasons = {stage: str(DegradationReason.of(exc))
                   for r in results for stage, exc in r.failures.items()}
        stage_ms = {stage: round(max(r.stage_ms.get(stage, 0.0) for r in results), 3)
                    for stage in STAGES if any(stage in r.stage_ms for r in results)}
        outputs = {ITEM_IDS: item_ids, SCORES: scores, TITLES: titles}
        if explain:
            outputs[EXPLANATIONS] = explanations
        return encode_response(
            payload, self.contract, outputs,
            {DEGRADED: ",".join(degraded),
             DEGRADED_REASONS: json.dumps(dict(sorted(reasons.items()))),
             STAGE_MS: json.dumps(stage_ms)},
        )

    def _record_drift(self, requests: list[SearchRequest], results: list[SearchResult]) -> None:
        window = DRIFT.window
        if window is None or self.search_engine is None:
            return
        users = np.fromiter((r.user_id for r in requests), np.int64, len(requests))
        known = (self.search_engine.catalog.users.index(users) >= 0).tolist()
        for req, result, is_known in zip(requests, results, known, strict=True):
            window.record(req.query, is_known, result.relevance)

    def _observe(self, requests: list[SearchRequest], results: list[SearchResult]) -> None:
        BATCH_SIZE.observe(len(requests))
        for req, result in zip(requests, results, strict=True):
            REQUESTS.labels("search" if req.query else "recommend").inc()
            if result.ranker_pairs:
                RANKER_BATCH_SIZE.observe(result.ranker_pairs)
            for stage, ms in result.stage_ms.items():
                STAGE_SECONDS.labels(stage).observe(ms / 1000.0)
            for stage, exc in result.failures.items():
                reason = DegradationReason.of(exc)
                DEGRADED_TOTAL.labels(stage, reason).inc()
                self.degradation_log.record(stage, reason, exc, req.request_id)


def _explanations(result: SearchResult) -> list[bytes]:
    """One JSON object per result: where it came from and the weighted terms of its score."""
    out = []
    for j in range(result.rows.shape[0]):
        terms = {name: round(float(part[j]), 6) for name, part in result.parts.items()}
        sources = Source(int(result.sources[j])).names() if result.sources.size else []
        out.append(json.dumps({"sources": sources, **terms,
                               "score": round(float(result.scores[j]), 6)}).encode())
    return out
