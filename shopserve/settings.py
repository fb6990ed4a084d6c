"""Settings of each component: defaults < environment < the CLI flags the KServe controller injects.

One concept, three mechanical spellings: Helm ``recall.topK`` <-> env ``RECALL_TOP_K`` <-> field
``top_k``. Nothing is parsed at import time: a component's ``__main__`` calls :func:`load`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound="ServerSettings")

#: Default of ``max_request_bytes``: 1 MiB, far above a search or recall request (32 queries of
#: 256 characters, 256 ids) and far below a pod's memory.
DEFAULT_MAX_REQUEST_BYTES = 1 << 20

#: Flags the KServe controller passes to every container; unknown flags are ignored.
KSERVE_FLAGS: dict[str, type] = {
    "model_name": str,
    "predictor_host": str,
    "http_port": int,
    "grpc_port": int,
    "workers": int,
}


class ServerSettings(BaseSettings):
    """Settings every server shares."""

    model_config = SettingsConfigDict(extra="ignore", validate_default=True)

    model_name: str
    """Model name served on the v2 endpoints."""
    http_port: int = Field(ge=0, le=65535)
    """REST port: v2 endpoints and Prometheus ``/metrics``."""
    grpc_port: int = Field(ge=0, le=65535)
    """gRPC ``GRPCInferenceService`` port."""
    bind_host: str = "127.0.0.1"
    """Address to listen on: loopback on one machine; the chart sets ``0.0.0.0`` in pods."""
    workers: int = Field(default=1, ge=1)
    """uvicorn worker processes; each holds its own copy of the model."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level; payloads are never logged at INFO."""
    request_logs: bool = False
    """Log a line per request: uvicorn's access log and KServe's ``kserve.trace`` timing lines
    (REST middleware and model latency) and its gRPC method line. Off by default: under load they
    cost more than they tell (the stage histograms and ``stage_ms`` carry the timings)."""
    max_request_bytes: int = Field(default=DEFAULT_MAX_REQUEST_BYTES, ge=1024)
    """Largest request accepted, in bytes: a REST body over it is refused with 413 while it is
    read (before it is buffered), a gRPC message over it with ``RESOURCE_EXHAUSTED``."""


class RecallSettings(ServerSettings):
    """The MF recall predictor (``python -m predictors.recall``), env prefix ``RECALL_``."""

    model_config = SettingsConfigDict(env_prefix="RECALL_", extra="ignore", validate_default=True)

    model_name: str = "mf-recall"
    """Model name served on the v2 endpoints."""
    http_port: int = Field(default=8090, ge=0, le=65535)
    """REST port."""
    grpc_port: int = Field(default=8091, ge=0, le=65535)
    """gRPC port."""
    bundle_dir: Path = Path("artifacts/demo/recall")
    """Folder of the recall component of a bundle (KServe mounts ``storageUri`` at /mnt/models)."""
    index: Literal["exact", "hnsw", "ivf"] = "exact"
    """Top-k search: exact inner product (numpy) or approximate FAISS (HNSW or IVF)."""
    top_k: int = Field(default=200, ge=1)
    """Candidates returned when the request names no ``top_k``."""
    max_top_k: int = Field(default=1000, ge=1)
    """Largest ``top_k`` a request may ask for."""
    max_batch: int = Field(default=256, ge=1)
    """Largest number of users or items in one request."""
    hnsw_m: int = Field(default=32, ge=4)
    """HNSW graph degree (FAISS ``M``), used when ``index`` is ``hnsw``."""
    hnsw_ef_construction: int = Field(default=80, ge=8)
    """HNSW build-time beam width."""
    hnsw_ef_search: int = Field(default=128, ge=1)
    """HNSW query-time beam width: recall against latency."""
    ivf_nlist: int = Field(default=1024, ge=1)
    """IVF cell count, used when ``index`` is ``ivf``."""
    ivf_nprobe: int = Field(default=32, ge=1)
    """IVF cells visited per query."""
    mips_to_l2: bool = True
    """FAISS indexes search L2 over norm-augmented vectors instead of the inner product directly:
    better recall on MF factors, whose norms vary with popularity (bench/recall_index.py)."""
    search_threads: int = Field(default=1, ge=1)
    """BLAS/FAISS threads per search: 1 keeps per-request latency flat under concurrency."""


def cli_overrides(argv: Sequence[str] | None) -> dict[str, Any]:
    """The KServe-injected flags present in ``argv`` (``--model_name`` ...), unknown ones ignored."""
    parser = argparse.ArgumentParser(add_help=False)
    for name, kind in KSERVE_FLAGS.items():
        parser.add_argument(f"--{name}", type=kind, default=None)
    known, _ = parser.parse_known_args(list(argv or []))
    return {k: v for k, v in vars(known).items() if v is not None}


def load(cls: type[S], argv: Sequence[str] | None = None, **overrides: Any) -> S:
    """Settings from defaults, then env, then CLI flags, then explicit ``overrides``."""
    values = cli_overrides(argv)
    values.update(overrides)
    known = set(cls.model_fields)
    return cls(**{k: v for k, v in values.items() if k in known})


class SearchSettings(ServerSettings):
    """The search transformer (``python -m transformers_pre``), env prefix ``SEARCH_``.

    The KServe controller passes the ranker's address as ``--predictor_host``; it sets
    ``ranker_host``.
    """

    model_config = SettingsConfigDict(env_prefix="SEARCH_", extra="ignore", validate_default=True)

    model_name: str = "search"
    """Model name served on the v2 endpoints."""
    http_port: int = Field(default=8080, ge=0, le=65535)
    """REST port."""
    grpc_port: int = Field(default=8081, ge=0, le=65535)
    """gRPC port."""
    bundle_dir: Path = Path("artifacts/demo")
    """Bundle folder holding the ``catalog`` and ``ranker`` (tokenizer) components."""
    recall_host: str = "127.0.0.1:8091"
    """``host:port`` of the ``mf-recall`` predictor's v2 gRPC endpoint."""
    recall_model: str = "mf-recall"
    """Model name of the recall predictor."""
    ranker_host: str = "127.0.0.1:8001"
    """``host:port`` of the ranker's (Triton) v2 gRPC endpoint; ``--predictor_host`` sets it."""
    ranker_model: str = "bert-ranker"
    """Model name of the ranker."""
    sequence_host: str = "127.0.0.1:8001"
    """``host:port`` of the sequence recommender's v2 gRPC endpoint (locally the ranker's Triton,
    which serves both models)."""
    sequence_model: str = "seq-recommender"
    """Model name of the sequence recommender."""
    semantic_host: str = "127.0.0.1:8001"
    """``host:port`` of the query encoder's v2 gRPC endpoint: in a cluster the ``query-encoder``
    InferenceService (Triton, on the bundle's ``semantic`` component); locally the ranker's
    Triton, which serves it beside ``bert-ranker``."""
    semantic_model: str = "query-encoder"
    """Model name of the query encoder (the semantic path's bi-encoder)."""
    recall_timeout_ms: float = Field(default=100.0, gt=0)
    """Time budget of one recall call, retries included."""
    ranker_timeout_ms: float = Field(default=300.0, gt=0)
    """Time budget of one ranker call, retries included; past it the answer degrades."""
    sequence_timeout_ms: float = Field(default=100.0, gt=0)
    """Time budget of one sequence-model call, retries included; past it the answer degrades (MF
    and popularity, no session signal)."""
    semantic_timeout_ms: float = Field(default=50.0, gt=0)
    """Time budget of one query-encoder call, retries included; past it the answer degrades
    (``degraded: semantic``: candidates from BM25 and MF only)."""
    upstream_retries: int = Field(default=1, ge=0, le=5)
    """Retries of an upstream call, only on connection errors and UNAVAILABLE (503)."""
    breaker_failures: int = Field(default=3, ge=1)
    """Consecutive failed calls (timeouts, errors) of one upstream that open its circuit breaker:
    while open, calls to it are skipped and answers degrade at once (reason ``circuit_open``)."""
    breaker_cooldown_ms: float = Field(default=1000.0, gt=0)
    """How long an open circuit skips its upstream before one call tries it again."""
    ranker_max_concurrency: int = Field(default=4, ge=0)
    """Ranker calls admitted at once per transformer process (0: no limit). A search beyond it
    skips ranking at once (``degraded: ranker``, reason ``overload``; 503 when the request allows
    no degraded answer) instead of queueing past the ranker budget. Set it to what the ranker
    finishes within ``ranker_timeout_ms``: about budget / time of one call x the ranker's parallel
    instances, divided among the transformer processes that share it. The default 4 fits the
    local CPU ranker (one instance, 50 pairs in 60-75 ms on 2 cores, a 300 ms budget); a GPU
    ranker takes far more."""
    relevance_cache_enabled: bool = True
    """Keep the ranker's score of each (query, item) pair it scored, in memory, so a repeated
    pair is not sent again. Scores do not depend on the shopper; entries are keyed by the ranker's
    bundle version, so a new ranker never reads an old one's scores. Off: every pair goes to the
    ranker."""
    relevance_cache_entries: int = Field(default=100_000, ge=1)
    """Most (query, item) scores the relevance cache holds; the least recently used go first.
    About 250 bytes each (100,000: about 25 MB per process, 2,000 queries of 50 pairs)."""
    failure_log_interval_ms: float = Field(default=10_000.0, gt=0)
    """Degraded answers are logged by dependency: the first in full, then one line per interval
    with the counts by reason (``ranker: 37 more degraded answers (timeout 30, unavailable 7) in
    the last 10 s``)."""
    lexical_candidates: int = Field(default=100, ge=1)
    """BM25 candidates per query."""
    recall_candidates: int = Field(default=100, ge=1)
    """MF candidates per request."""
    rank_candidates: int = Field(default=20, ge=1)
    """The cascade's K: candidates sent to the ranker, the best of the union by pre-ranking score
    (the rest keep that score, below the ranked ones). 20 is the smallest K whose NDCG@10 is
    within 0.005 of K = 50 on the demo bundle's held-out queries (``make evaluate-stack``)."""
    sequence_candidates: int = Field(default=100, ge=1)
    """Next items of the sequence model a recommendation takes as candidates."""
    semantic_candidates: int = Field(default=100, ge=1)
    """Nearest items of the semantic path per query (its FAISS index over item embeddings)."""
    semantic_enabled: bool = True
    """Find candidates by meaning too (when the bundle has a ``semantic`` component): the query's
    embedding from ``query-encoder`` and its nearest items. Off: BM25 and MF only (not a
    degradation). A bundle without the component searches without it either way."""
    sequence_enabled: bool = True
    """Ask the sequence model when a request has recent items (and the bundle has the model); off,
    recent items only leave what was just seen out of recommendations (not a degradation)."""
    max_recent_items: int = Field(default=50, ge=1)
    """Longest ``recent_items`` row accepted (the model reads its newest ``sequence_length``)."""
    query_rewrite: bool = True
    """Correct spelling and map mined synonyms to catalog terms before BM25 (exact terms untouched)."""
    query_negation: bool = True
    """Read a negation (``sneakers not leather``, ``mug without handle``): BM25 searches the words
    before the cue, and items whose title or attributes hold the words after it are left out of every source's
    candidates, as a filter is."""
    lexical_scale: Literal["query", "best"] = "query"
    """How BM25 scores are brought to [0, 1] for the pre-ranking and the blend: ``query`` divides
    by the query's ideal score (what a title holding each of its tokens once would score; a token
    the catalog does not use counts as a typical one), so a title matching one filler word of a
    described need scores little beside the semantic path; ``best`` divides by the request's
    best BM25 score (the best hit scores 1 however little of the query it matches)."""
    semantic_gate: float = Field(default=1.0, ge=0.0, le=1.0)
    """How far a search's semantic weight falls as words alone answer it: ``weight_semantic *
    (1 - semantic_gate * coverage)``, coverage being the share of the query's ideal BM25 score its
    best lexical hit reaches (``lexical_scale: query`` only). 1: a query a title matches in full
    keeps its lexical order, a described need gets the whole weight; 0: a constant weight."""
    ranker_enabled: bool = True
    """Score the shortlist with the ranker; off blends BM25 and MF only (not a degradation)."""
    weight_relevance: float = 1.0
    """Blend weight of the ranker's relevance (or BM25 when the ranker is down)."""
    weight_lexical: float = 1.0
    """Blend weight of the scaled BM25 score beside the ranker's relevance (not added when the
    ranker is unavailable: BM25 then is the relevance)."""
    weight_personal: float = 0.1
    """Blend weight of the MF personalisation score."""
    weight_popularity: float = 0.05
    """Blend weight of the popularity prior."""
    weight_session: float = 0.2
    """Blend weight of the sequence model's score of an item after the shopper's recent items."""
    weight_semantic: float = 0.5
    """Blend weight of the query's cosine similarity to an item (bi-encoder embeddings, min-max
    scaled over the candidates), in the pre-ranking and the final score."""
    default_top_n: int = Field(default=10, ge=1)
    """Results returned when the request names no ``top_n``."""
    max_top_n: int = Field(default=100, ge=1)
    """Largest ``top_n`` a request may ask for."""
    max_query_chars: int = Field(default=256, ge=1)
    """Longest query accepted (after normalisation), in characters."""
    max_batch: int = Field(default=32, ge=1)
    """Largest number of queries in one request."""
    drift_window: int = Field(default=2000, ge=10)
    """Drift monitoring: observations kept per signal in the live window (a row adds one query
    length and user, each query term, and the ranker score of each returned result)."""
    drift_min_samples: int = Field(default=200, ge=1)
    """Drift monitoring: observations a signal needs before its PSI is exported (fewer give a
    noisy PSI, about ``(bins - 1) / samples`` without any drift)."""
    fault_delay_ms: float = Field(default=0.0, ge=0)
    """Fault injection, for canary rehearsals and chaos tests: added to every request's latency.
    0 (the default) injects nothing; a non-zero value is logged at start-up."""
    fault_error_ratio: float = Field(default=0.0, ge=0, le=1)
    """Fault injection, for canary rehearsals and chaos tests: share of requests answered with a
    500 ``InferenceFailed`` that says it was injected (counted in ``shopserve_requests_total``)."""


def load_search(argv: Sequence[str] | None = None, **overrides: Any) -> SearchSettings:
    """Search settings; ``--predictor_host`` (injected by KServe) names the ranker."""
    cli = cli_overrides(argv)
    if "predictor_host" in cli and "ranker_host" not in overrides:
        overrides["ranker_host"] = cli["predictor_host"]
    return load(SearchSettings, argv, **overrides)
