"""Degraded answers in the log (first in full, then counts per interval) and the cache and
admission series read on scrape."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from shopserve.metric_names import (
    SEARCH_RANKER_IN_FLIGHT,
    SEARCH_RANKER_MAX_CONCURRENCY,
    SEARCH_RELEVANCE_CACHE_ENTRIES,
    SEARCH_RELEVANCE_CACHE_EVICTIONS_TOTAL,
    SEARCH_RELEVANCE_CACHE_HITS_TOTAL,
    SEARCH_RELEVANCE_CACHE_MISSES_TOTAL,
)
from transformers_pre.monitoring import DegradationLog, EngineCollector
from transformers_pre.relevance import ConcurrencyLimit, RelevanceCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> tuple[DegradationLog, Clock, list[str]]:
    logger = logging.getLogger("test.degradation")
    caplog.set_level(logging.INFO, logger="test.degradation")
    clock = Clock()
    lines: list[str] = []

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger.addHandler(Lines())
    return DegradationLog(logger, interval_s=10.0, clock=clock), clock, lines


def test_the_first_failure_in_full_then_one_line_of_counts_per_interval(
        logged: tuple[DegradationLog, Clock, list[str]]) -> None:
    log, clock, lines = logged
    log.record("ranker", "timeout", "ranker (h:1) gave no answer within 300 ms", "r1")
    for i in range(37):
        clock.now += 0.2
        log.record("ranker", "timeout" if i < 30 else "unavailable", "...", f"r{i}")
    assert lines == ["request r1 degraded: ranker: ranker (h:1) gave no answer within 300 ms "
                     "(timeout); further degraded answers of ranker are counted and logged every "
                     "10 s"]
    clock.now = 110.5
    log.record("ranker", "unavailable", "...", "r99")  # the interval is over: its counts go out
    assert lines[1] == "ranker: 37 more degraded answers (timeout 30, unavailable 7) in the last 10 s"
    assert len(lines) == 2
    clock.now += 3
    log.flush()  # at stop: the one counted since
    assert lines[2] == "ranker: 1 more degraded answers (unavailable 1) in the last 3 s"


def test_each_dependency_has_its_own_window_and_a_quiet_one_starts_over(
        logged: tuple[DegradationLog, Clock, list[str]]) -> None:
    log, clock, lines = logged
    log.record("ranker", "overload", "ranker skipped", "a")
    log.record("recall", "unavailable", "recall refused", "b")
    assert len(lines) == 2 and "recall refused" in lines[1]
    clock.now += 60  # quiet for longer than an interval: the next one is logged in full
    log.record("ranker", "timeout", "ranker late", "c")
    assert len(lines) == 3 and lines[2].startswith("request c degraded: ranker: ranker late")


def test_the_collector_reads_the_cache_and_admission_on_scrape() -> None:
    cache = RelevanceCache(2, "v1")
    cache.store("q", np.array([1, 2, 3]), np.array([1, 2, 3], np.float32))
    cache.lookup("q", np.array([2, 9]))
    admission = ConcurrencyLimit(4)
    admission.try_acquire()
    collector = EngineCollector()
    assert list(collector.collect()) == []  # nothing before the model loads
    collector.engine = SimpleNamespace(relevance_cache=cache, ranker_admission=admission,
                                       cache_errors=0)  # type: ignore[assignment]
    values = {s.name: s.value for m in collector.collect() for s in m.samples}
    assert values[SEARCH_RELEVANCE_CACHE_HITS_TOTAL] == 1 and values[SEARCH_RELEVANCE_CACHE_MISSES_TOTAL] == 1
    assert values[SEARCH_RELEVANCE_CACHE_EVICTIONS_TOTAL] == 1 and values[SEARCH_RELEVANCE_CACHE_ENTRIES] == 2
    assert values[SEARCH_RANKER_IN_FLIGHT] == 1 and values[SEARCH_RANKER_MAX_CONCURRENCY] == 4
    collector.engine.relevance_cache = None  # type: ignore[union-attr]
    names = {s.name for m in collector.collect() for s in m.samples}
    assert names == {SEARCH_RANKER_IN_FLIGHT, SEARCH_RANKER_MAX_CONCURRENCY}  # the cache is off
