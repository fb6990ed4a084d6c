"""Monitoring of the search transformer: drift, the relevance cache and ranker admission, and the
log of degraded answers.

Drift: the bundle's reference, the live window, the gauges. The window
(:class:`shopserve.drift.DriftWindow`) is fed by the model after each request; the PSI
per signal is computed only when Prometheus scrapes ``/metrics``, by :class:`DriftCollector`, so a
request pays for a few bin look-ups and nothing else.

A bundle without a ``drift`` component (bundles packaged before drift monitoring) still serves:
drift is then unavailable, said once in the log and by ``shopserve_drift_reference_loaded 0``.

The relevance cache's counts (hits, misses, evictions, entries, errors) and the ranker's admission
(calls in flight, the limit) are read from the engine on scrape too, by :class:`EngineCollector`.

:class:`DegradationLog` keeps repeated upstream failures from flooding the log: per dependency,
the first degraded answer is logged in full, then one line per interval with the counts by
reason.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from shopserve import metric_names
from shopserve.artifacts import DRIFT_COMPONENT, DRIFT_REFERENCE_FILE, MANIFEST, load_component
from shopserve.drift import DriftReference, DriftWindow
from shopserve.errors import BundleError

if TYPE_CHECKING:
    from transformers_pre.engine import SearchEngine

log = logging.getLogger(__name__)



def load_window(bundle: Path, size: int, min_samples: int) -> DriftWindow | None:
    """The live window over the bundle's drift reference, or None when the bundle has none.

    A missing component is the normal state of an older bundle (logged at WARNING, once, here);
    a present but corrupt one is refused like any corrupt component.

    Raises:
        BundleError: the drift component fails its checksums or its reference does not parse.
    """
    folder = Path(bundle) / DRIFT_COMPONENT
    if not (folder / MANIFEST).is_file():
        log.warning("drift monitoring unavailable: bundle %s has no %s component (packaged before "
                    "drift references; add one with `shopserve monitor reference --bundle %s`)",
                    bundle, DRIFT_COMPONENT, bundle)
        return None
    manifest = load_component(folder, DRIFT_COMPONENT)
    try:
        reference = DriftReference.load(folder / DRIFT_REFERENCE_FILE)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{folder}: unreadable drift reference: {exc}") from exc
    log.info("drift reference %s: %s", manifest.version,
             ", ".join(f"{name} ({len(s.labels)} bins, {s.samples} samples)"
                       for name, s in reference.signals.items()))
    return DriftWindow(reference, size=size, min_samples=min_samples)


class DriftCollector(Collector):
    """Exports the window's PSI, sample counts and whether a reference is loaded, on scrape.

    Attributes:
        window: The live window; None while no reference is loaded.
    """

    def __init__(self) -> None:
        self.window: DriftWindow | None = None

    def describe(self) -> list[Metric]:
        """Nothing up front: registering must not compute anything."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The drift gauges, computed from the window now."""
        loaded = GaugeMetricFamily(metric_names.DRIFT_REFERENCE_LOADED,
                                   "1 when the bundle has a drift reference, 0 when drift is "
                                   "unavailable.")
        window = self.window
        loaded.add_metric([], 1.0 if window is not None else 0.0)
        yield loaded
        if window is None:
            return
        samples = GaugeMetricFamily(metric_names.DRIFT_WINDOW_SAMPLES,
                                    "Observations in the live drift window.", labels=["signal"])
        for signal, count in window.samples().items():
            samples.add_metric([signal], float(count))
        yield samples
        psi = GaugeMetricFamily(metric_names.DRIFT_PSI,
                                "Population stability index of the live window against the "
                                "bundle's reference (<0.1 stable, 0.1-0.25 moderate, >0.25 drift); "
                                "absent until the window holds drift_min_samples observations.",
                                labels=["signal"])
        for signal, value in window.psi().items():
            if value is not None:
                psi.add_metric([signal], value)
        yield psi


#: The process's drift collector; the model sets its window when it loads.
DRIFT = DriftCollector()
REGISTRY.register(DRIFT)


class EngineCollector(Collector):
    """Exports the relevance cache's counts and the ranker's admission, read on scrape.

    The cache counts are absent while the cache is off; the admission gauges are always there once
    an engine is loaded.

    Attributes:
        engine: The serving engine; None until the model has loaded.
    """

    def __init__(self) -> None:
        self.engine: SearchEngine | None = None

    def describe(self) -> list[Metric]:
        """Nothing up front: registering must not read anything."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The cache and admission series, read from the engine now."""
        engine = self.engine
        if engine is None:
            return
        admission = engine.ranker_admission
        in_flight = GaugeMetricFamily(metric_names.SEARCH_RANKER_IN_FLIGHT,
                                      "Ranker calls in flight now.")
        in_flight.add_metric([], float(admission.in_flight))
        yield in_flight
        limit = GaugeMetricFamily(metric_names.SEARCH_RANKER_MAX_CONCURRENCY,
                                  "Ranker calls admitted at once (ranker_max_concurrency); 0: no "
                                  "limit. Searches beyond it degrade with reason overload.")
        limit.add_metric([], float(admission.limit))
        yield limit
        cache = engine.relevance_cache
        if cache is None:
            return
        names = metric_names
        counts = (
            (names.SEARCH_RELEVANCE_CACHE_HITS_TOTAL,
             "Shortlist pairs whose ranker score came from the relevance cache.", cache.stats.hits),
            (names.SEARCH_RELEVANCE_CACHE_MISSES_TOTAL,
             "Shortlist pairs looked up in the relevance cache and not found.", cache.stats.misses),
            (names.SEARCH_RELEVANCE_CACHE_EVICTIONS_TOTAL,
             "Relevance cache entries evicted (least recently used) to stay within "
             "relevance_cache_entries.", cache.stats.evictions),
            (names.SEARCH_RELEVANCE_CACHE_ERRORS_TOTAL,
             "Relevance cache failures, each answered as if the cache were off.",
             engine.cache_errors),
        )
        for name, documentation, value in counts:
            counter = CounterMetricFamily(name, documentation)
            counter.add_metric([], float(value))
            yield counter
        size = GaugeMetricFamily(metric_names.SEARCH_RELEVANCE_CACHE_ENTRIES,
                                 "(query, item) scores in the relevance cache now.")
        size.add_metric([], float(len(cache)))
        yield size


#: The process's engine collector; the model sets its engine when it loads.
ENGINE = EngineCollector()
REGISTRY.register(ENGINE)


@dataclass
class _Window:
    since: float | None = None
    counts: Counter[str] = field(default_factory=Counter)


class DegradationLog:
    """Logs degraded answers by dependency: the first in full, then counts per interval.

    After a quiet interval (no degraded answer of that dependency) the next one is logged in full
    again. The counts of an interval are logged by the first degraded answer after it ends (or by
    :meth:`flush`), so a burst that stops leaves its count in the log at the next failure or stop.

    Args:
        logger: Where the lines go (WARNING).
        interval_s: Length of an interval.
        clock: Monotonic seconds (a test's clock).
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s}")
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._windows: dict[str, _Window] = {}

    def record(self, stage: str, reason: str, error: object, request_id: str | None) -> None:
        """One degraded answer of ``stage`` (a dependency) for ``reason``, with its error."""
        now = self.clock()
        window = self._windows.setdefault(stage, _Window())
        if window.since is not None and now - window.since >= self.interval_s:
            had_more = self._flush(stage, window, now)
            if had_more:
                window.since, window.counts = now, Counter({reason: 1})
                return
            window.since = None
        if window.since is None:
            self.logger.warning("request %s degraded: %s: %s (%s); further degraded answers of %s "
                                "are counted and logged every %.0f s", request_id or "-", stage,
                                error, reason, stage, self.interval_s)
            window.since = now
            return
        window.counts[reason] += 1

    def flush(self) -> None:
        """Log the counts of every interval in progress (at shutdown)."""
        now = self.clock()
        for stage, window in self._windows.items():
            self._flush(stage, window, now)
            window.since, window.counts = None, Counter()

    def _flush(self, stage: str, window: _Window, now: float) -> bool:
        """Log ``window``'s counts if it has any; whether it had."""
        total = sum(window.counts.values())
        if not total:
            return False
        assert window.since is not None
        by_reason = ", ".join(f"{reason} {count}" for reason, count in window.counts.most_common())
        self.logger.warning("%s: %d more degraded answers (%s) in the last %.0f s", stage, total,
                            by_reason, now - window.since)
        return True
