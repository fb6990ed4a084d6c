"""Prometheus metric and label names of every shopserve server, defined once.

The components create their metric objects from these names; tests, ``shopserve monitor`` and the
chart tests read them from here (the chart's PromQL cannot import Python, so ``tests/charts``
checks that every series the PrometheusRule and the dashboard query is named below).

Conventions (https://prometheus.io/docs/practices/naming/):

* every name starts with ``shopserve_`` and the component (``search``, ``recall``) when it is not
  shared by all servers;
* base units in the name: ``_seconds`` for durations (never milliseconds), no unit for counts of
  things (batch sizes are plain numbers of rows or pairs);
* counters end in ``_total``; latencies are histograms (``_bucket``, ``_sum``, ``_count``), so
  percentiles are computed at query time and aggregate across pods;
* labels: ``model`` (v2 model name), ``code`` (HTTP-equivalent status, REST and gRPC alike),
  ``stage`` (request stage), ``version`` (bundle version), ``signal`` (drift signal); an
  info-style gauge (``shopserve_model_info``, value 1) carries versions instead of every series.

Triton exports its own ``nv_inference_*`` metrics on its metrics port; their names are Triton's
and are listed here only so that readers (monitor, dashboard tests) spell them once. Its model
version is reported by the transformer from the ranker component's manifest
(``shopserve_model_info{component="ranker"}``), since Triton's version label is the repository's
version folder (always ``1``), not the bundle version.
"""

from __future__ import annotations

# ------------------------------------------------------------------------------ every KServe server

#: Counter{model, code}: inference requests answered, by HTTP-equivalent status code.
REQUESTS_TOTAL = "shopserve_requests_total"
#: Gauge{component, model, version, variant} = 1: what each server loaded.
MODEL_INFO = "shopserve_model_info"

# ------------------------------------------------------------------------------ search transformer

#: Histogram{stage}: seconds per request stage (see ``transformers_pre.engine.STAGES``).
SEARCH_STAGE_SECONDS = "shopserve_search_stage_seconds"
#: Histogram{mode}: end-to-end seconds of a search request (``search`` or ``recommend``).
SEARCH_REQUEST_SECONDS = "shopserve_search_request_seconds"
#: Counter{mode}: request rows answered.
SEARCH_ROWS_TOTAL = "shopserve_search_rows_total"
#: Counter{stage, reason}: rows answered without a failing dependency (``reason``: timeout, unavailable).
SEARCH_DEGRADED_TOTAL = "shopserve_search_degraded_total"
#: Counter{kind}: faults injected on purpose (rehearsals, chaos tests; ``kind``: delay, error).
SEARCH_FAULTS_INJECTED_TOTAL = "shopserve_search_faults_injected_total"
#: Histogram: rows (queries) per request.
SEARCH_BATCH_SIZE = "shopserve_search_batch_size"
#: Histogram: (query, title) pairs per ranker call, the batch Triton receives.
SEARCH_RANKER_BATCH_SIZE = "shopserve_search_ranker_batch_size"
#: Counter: ids in a request's ``recent_items`` the catalog does not know (ignored).
SEARCH_UNKNOWN_RECENT_ITEMS_TOTAL = "shopserve_search_unknown_recent_items_total"
#: Counter: shortlist pairs whose ranker score came from the relevance cache.
SEARCH_RELEVANCE_CACHE_HITS_TOTAL = "shopserve_search_relevance_cache_hits_total"
#: Counter: shortlist pairs looked up in the relevance cache and not found.
SEARCH_RELEVANCE_CACHE_MISSES_TOTAL = "shopserve_search_relevance_cache_misses_total"
#: Counter: relevance cache entries evicted (least recently used) to stay within its size.
SEARCH_RELEVANCE_CACHE_EVICTIONS_TOTAL = "shopserve_search_relevance_cache_evictions_total"
#: Gauge: entries in the relevance cache now.
SEARCH_RELEVANCE_CACHE_ENTRIES = "shopserve_search_relevance_cache_entries"
#: Counter: relevance cache failures (each answered as if the cache were off).
SEARCH_RELEVANCE_CACHE_ERRORS_TOTAL = "shopserve_search_relevance_cache_errors_total"
#: Gauge: ranker calls in flight now.
SEARCH_RANKER_IN_FLIGHT = "shopserve_search_ranker_in_flight"
#: Gauge: ranker calls admitted at once (``ranker_max_concurrency``; 0: no limit).
SEARCH_RANKER_MAX_CONCURRENCY = "shopserve_search_ranker_max_concurrency"

# ------------------------------------------------------------------------------ drift (transformer)

#: Gauge{signal}: population stability index of the live window against the bundle's reference.
DRIFT_PSI = "shopserve_drift_psi"
#: Gauge{signal}: observations in the live window (PSI is exported from ``drift_min_samples`` on).
DRIFT_WINDOW_SAMPLES = "shopserve_drift_window_samples"
#: Gauge: 1 when the bundle has a drift reference, 0 when drift is unavailable (older bundle).
DRIFT_REFERENCE_LOADED = "shopserve_drift_reference_loaded"

# ------------------------------------------------------------------------------ mf-recall

#: Counter{mode}: recall requests answered (``user_id`` or ``item_id``).
RECALL_REQUESTS_TOTAL = "shopserve_recall_requests_total"
#: Counter{mode}: rows answered with popularity because the user or item is unknown.
RECALL_POPULARITY_FALLBACK_TOTAL = "shopserve_recall_popularity_fallback_total"
#: Histogram{index}: seconds of the top-k search per request.
RECALL_SEARCH_SECONDS = "shopserve_recall_search_seconds"
#: Histogram: users or items per request.
RECALL_BATCH_SIZE = "shopserve_recall_batch_size"

# ------------------------------------------------------------------------------ Triton (its names)

#: Counter{model, version}: successful inference requests (Triton).
TRITON_REQUEST_SUCCESS = "nv_inference_request_success"
#: Counter{model, version}: failed inference requests (Triton).
TRITON_REQUEST_FAILURE = "nv_inference_request_failure"
#: Counter{model, version}: model executions; requests / executions is the mean dynamic batch.
TRITON_EXEC_COUNT = "nv_inference_exec_count"
#: Counter{model, version}: cumulative end-to-end request microseconds (Triton).
TRITON_REQUEST_DURATION_US = "nv_inference_request_duration_us"
#: Counter{model, version}: cumulative queue microseconds (Triton).
TRITON_QUEUE_DURATION_US = "nv_inference_queue_duration_us"
#: Counter{model, version}: cumulative compute microseconds (Triton).
TRITON_COMPUTE_INFER_DURATION_US = "nv_inference_compute_infer_duration_us"
#: Gauge{gpu_uuid}: GPU utilisation 0..1 (Triton, GPU only).
TRITON_GPU_UTILIZATION = "nv_gpu_utilization"

#: Every shopserve series name (without histogram suffixes), for tests.
SHOPSERVE_METRICS: tuple[str, ...] = (
    REQUESTS_TOTAL, MODEL_INFO,
    SEARCH_STAGE_SECONDS, SEARCH_REQUEST_SECONDS, SEARCH_ROWS_TOTAL, SEARCH_DEGRADED_TOTAL,
    SEARCH_FAULTS_INJECTED_TOTAL,
    SEARCH_BATCH_SIZE, SEARCH_RANKER_BATCH_SIZE, SEARCH_UNKNOWN_RECENT_ITEMS_TOTAL,
    SEARCH_RELEVANCE_CACHE_HITS_TOTAL, SEARCH_RELEVANCE_CACHE_MISSES_TOTAL,
    SEARCH_RELEVANCE_CACHE_EVICTIONS_TOTAL, SEARCH_RELEVANCE_CACHE_ENTRIES,
    SEARCH_RELEVANCE_CACHE_ERRORS_TOTAL, SEARCH_RANKER_IN_FLIGHT, SEARCH_RANKER_MAX_CONCURRENCY,
    DRIFT_PSI, DRIFT_WINDOW_SAMPLES, DRIFT_REFERENCE_LOADED,
    RECALL_REQUESTS_TOTAL, RECALL_POPULARITY_FALLBACK_TOTAL, RECALL_SEARCH_SECONDS,
    RECALL_BATCH_SIZE,
)
#: Triton's series the project reads.
TRITON_METRICS: tuple[str, ...] = (
    TRITON_REQUEST_SUCCESS, TRITON_REQUEST_FAILURE, TRITON_EXEC_COUNT, TRITON_REQUEST_DURATION_US,
    TRITON_QUEUE_DURATION_US, TRITON_COMPUTE_INFER_DURATION_US, TRITON_GPU_UTILIZATION,
)
