"""Drift monitoring of the search transformer: the bundle's reference, the live window, the gauges.

The window (:class:`shopserve.drift.DriftWindow`) is fed by the model after each request; the PSI
per signal is computed only when Prometheus scrapes ``/metrics``, by :class:`DriftCollector`, so a
request pays for a few bin look-ups and nothing else.

A bundle without a ``drift`` component (bundles packaged before drift monitoring) still serves:
drift is then unavailable, said once in the log and by ``shopserve_drift_reference_loaded 0``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from shopserve import metric_names
from shopserve.artifacts import DRIFT_COMPONENT, DRIFT_REFERENCE_FILE, MANIFEST, load_component
from shopserve.drift import DriftReference, DriftWindow
from shopserve.errors import BundleError

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
