"""The load benchmarks read what a run did from the servers' own counters: the transformer's
Prometheus series and Triton's statistics extension, as differences of two reads."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

from bench import serving_load
from bench.serving_load import SearchCounters, TritonBatches, scrape_search, triton_batches
from shopserve import metric_names


class _Cache:
    """A collector like the transformer's: counters built at scrape time."""

    def __init__(self) -> None:
        self.hits, self.misses = 0, 0

    def collect(self):  # noqa: ANN201 - prometheus_client's collector protocol
        for name, value in ((metric_names.SEARCH_RELEVANCE_CACHE_HITS_TOTAL, self.hits),
                            (metric_names.SEARCH_RELEVANCE_CACHE_MISSES_TOTAL, self.misses)):
            family = CounterMetricFamily(name, "doc")
            family.add_metric([], value)
            yield family


@pytest.fixture
def registry() -> tuple[CollectorRegistry, dict]:
    reg = CollectorRegistry()
    series = {
        "rows": Counter(metric_names.SEARCH_ROWS_TOTAL, "rows", ["mode"], registry=reg),
        "degraded": Counter(metric_names.SEARCH_DEGRADED_TOTAL, "degraded", ["stage", "reason"],
                            registry=reg),
        "pairs": Histogram(metric_names.SEARCH_RANKER_BATCH_SIZE, "pairs", registry=reg,
                           buckets=(10, 50)),
        "cache": _Cache(),
    }
    reg.register(series["cache"])
    return reg, series


def _serve(monkeypatch: pytest.MonkeyPatch, text: str | dict) -> None:
    def get(url: str, timeout: float) -> httpx.Response:
        if isinstance(text, dict):
            return httpx.Response(200, json=text)
        return httpx.Response(200, text=text)
    monkeypatch.setattr(serving_load.httpx, "get", get)


def test_search_counters_are_differences_of_two_scrapes(
        registry: tuple[CollectorRegistry, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    reg, s = registry
    s["rows"].labels("search").inc(3)
    _serve(monkeypatch, generate_latest(reg).decode())
    before = scrape_search("http://search")
    s["rows"].labels("search").inc(10)
    s["rows"].labels("recommend").inc(2)
    s["degraded"].labels("ranker", "overload").inc(3)
    s["degraded"].labels("ranker", "timeout").inc(1)
    s["degraded"].labels("recall", "unavailable").inc(1)
    for pairs in (50, 20, 30):
        s["pairs"].observe(pairs)
    s["cache"].hits, s["cache"].misses = 150, 100
    _serve(monkeypatch, generate_latest(reg).decode())
    run = scrape_search("http://search") - before
    assert run.searches == 10 and run.rows["recommend"] == 2
    assert run.ranker_degraded() == {"overload": 3, "timeout": 1}
    assert run.ranked == 6
    assert (run.ranker_calls, run.ranker_pairs, run.pairs_per_search) == (3, 100, 10.0)
    assert run.cache_hit_ratio == pytest.approx(0.6)


def test_without_cache_series_the_hit_ratio_is_not_a_number() -> None:
    ratio = SearchCounters().cache_hit_ratio
    assert ratio != ratio


def test_triton_batches_count_requests_executions_and_sizes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def stats(requests: int, executions: int, sizes: dict[int, int]) -> dict:
        return {"model_stats": [{
            "name": "bert-ranker", "execution_count": executions,
            "inference_stats": {"success": {"count": requests, "ns": 1}},
            "batch_stats": [{"batch_size": size, "compute_infer": {"count": n, "ns": 1}}
                            for size, n in sizes.items()]}]}

    _serve(monkeypatch, stats(10, 10, {50: 10}))
    before = triton_batches("http://triton")
    _serve(monkeypatch, stats(40, 25, {50: 20, 100: 5}))
    run = triton_batches("http://triton") - before
    assert (run.requests, run.executions) == (30, 15)
    assert run.requests_per_execution == 2.0
    assert run.by_size == {50: 10, 100: 5} and run.sizes() == "50x10, 100x5"
    assert TritonBatches().requests_per_execution != TritonBatches().requests_per_execution
