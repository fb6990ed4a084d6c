"""``shopserve monitor``: a compact live view of the stack from its Prometheus metrics.

``shopserve monitor [--host URL] [--recall URL] [--ranker URL] [--interval S] [--once]`` scrapes the
search transformer's ``/metrics`` (and mf-recall's, and Triton's metrics port) and prints: request
rate, 5xx share and degraded share; latency percentiles per stage; PSI per drift signal with its
reading; recall and ranker throughput and latency; loaded versions. The first frame covers
everything since each server started; the next ones the last interval (histogram and counter
deltas between scrapes), redrawn in place. ``--once`` prints the first frame and exits (scripts,
tests). A server that does not answer is shown as unreachable; the rest still renders.

``shopserve monitor reference --bundle DIR`` records the drift reference of an existing bundle
(:func:`pipeline.lifecycle.drift_reference.record_reference`), for bundles packaged before drift monitoring.

Names come from :mod:`shopserve.metric_names` and :mod:`shopserve.drift`; percentiles are computed
from histogram buckets as PromQL's ``histogram_quantile`` does (linear within a bucket).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from shopserve import metric_names as mn
from shopserve.drift import SIGNALS, status

DEFAULT_SEARCH = "http://127.0.0.1:8080"
DEFAULT_RECALL = "http://127.0.0.1:8090"
DEFAULT_RANKER = "http://127.0.0.1:8002"
QUANTILES = (0.5, 0.95, 0.99)
#: Stage rows in request order; the end-to-end row comes last.
STAGE_ORDER = ("normalise", "filter", "lexical", "recall", "tokenise", "rank", "blend")
PROCESS_START = "process_start_time_seconds"

Labels = tuple[tuple[str, str], ...]


# --------------------------------------------------------------------------------- scraping


@dataclass
class Scrape:
    """One scrape of one server.

    Attributes:
        url: The metrics URL.
        at: Wall-clock time of the scrape.
        samples: (sample name, sorted labels) -> value; None when the server did not answer.
        error: Why it did not answer.
    """

    url: str
    at: float
    samples: dict[tuple[str, Labels], float] | None
    error: str = ""

    def select(self, name: str, **match: str) -> list[tuple[dict[str, str], float]]:
        """Samples named ``name`` whose labels include ``match``."""
        out = []
        # The parser names every counter sample ``*_total``; Triton's counters lack the suffix.
        names = {name, f"{name}_total"}
        for (sample, labels), value in (self.samples or {}).items():
            if sample not in names:
                continue
            as_dict = dict(labels)
            if all(as_dict.get(k) == v for k, v in match.items()):
                out.append((as_dict, value))
        return out

    def total(self, name: str, **match: str) -> float:
        """Sum of the matching samples (0 when none)."""
        return sum(v for _, v in self.select(name, **match))


def parse(text: str) -> dict[tuple[str, Labels], float]:
    """Prometheus text exposition -> (sample name, sorted labels) -> value."""
    samples: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def scrape(url: str, timeout: float = 2.0) -> Scrape:
    """Scrape ``url`` (``.../metrics``); a failure is recorded, not raised."""
    now = time.time()
    try:
        response = httpx.get(url, timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        return Scrape(url, now, None, type(exc).__name__)
    return Scrape(url, now, parse(response.text))


def metrics_url(base: str) -> str:
    """``base`` with ``/metrics`` appended unless it names a path already."""
    base = base.rstrip("/")
    return base if base.endswith("/metrics") else f"{base}/metrics"


# --------------------------------------------------------------------------------- arithmetic


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q`` quantile from cumulative bucket counts (upper bound -> count), as PromQL does.

    Linear interpolation inside the bucket holding the rank; the lowest bucket starts at 0; a rank
    in the ``+Inf`` bucket answers the highest finite bound. None when there are no observations.
    """
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return previous_bound
            if count == previous_count:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (
                count - previous_count)
        previous_bound, previous_count = bound, count
    return previous_bound


def _delta(cur: float, prev: float | None) -> float:
    # A counter that went down means the server restarted: count from zero.
    if prev is None or cur < prev:
        return cur
    return cur - prev


def _by_label(scrape: Scrape, name: str, label: str, **match: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for labels, value in scrape.select(name, **match):
        out[labels.get(label, "")] += value
    return dict(out)


def _buckets(scrape: Scrape, name: str, group: str | None) -> dict[str, dict[float, float]]:
    out: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for labels, value in scrape.select(f"{name}_bucket"):
        out[labels.get(group, "") if group else ""][float(labels["le"])] += value
    return {k: dict(v) for k, v in out.items()}


def _diff_buckets(cur: dict[str, dict[float, float]], prev: dict[str, dict[float, float]] | None
                  ) -> dict[str, dict[float, float]]:
    if prev is None:
        return cur
    return {key: {le: _delta(c, (prev.get(key) or {}).get(le)) for le, c in b.items()}
            for key, b in cur.items()}


def _diff(cur: Mapping[str, float], prev: Mapping[str, float] | None) -> dict[str, float]:
    return {k: _delta(v, None if prev is None else prev.get(k)) for k, v in cur.items()}


# --------------------------------------------------------------------------------- the view


@dataclass
class View:
    """What one frame shows (numbers only; :func:`render` turns it into text).

    Attributes:
        window: Seconds the rates and percentiles cover.
        since_start: Whether they cover everything since the servers started.
        search: The transformer's scrape.
        recall: mf-recall's scrape.
        ranker: Triton's scrape.
        rows_per_s: Answered rows per second, by mode.
        error_share: Share of search requests answered with 5xx (None without requests).
        degraded_share: Degraded rows per answered row, by stage (and ``all``).
        stages: Stage -> (p50, p95, p99) seconds; ``request`` is end to end.
        stage_counts: Observations per stage in the window.
        drift_loaded: Whether the transformer has a drift reference (None: not exported).
        drift: Signal -> (PSI or None, samples).
        recall_per_s: Recall requests per second.
        recall_quantiles: Top-k search (p50, p95, p99) seconds.
        ranker_per_s: Triton successful inferences per second.
        ranker_ms: Mean request, queue and compute milliseconds per inference (Triton).
        ranker_batch: Mean requests per model execution (dynamic batching).
        versions: component -> "version (variant)".
    """

    window: float
    since_start: bool
    search: Scrape
    recall: Scrape | None = None
    ranker: Scrape | None = None
    rows_per_s: dict[str, float] = field(default_factory=dict)
    error_share: float | None = None
    degraded_share: dict[str, float] = field(default_factory=dict)
    stages: dict[str, tuple[float | None, ...]] = field(default_factory=dict)
    stage_counts: dict[str, float] = field(default_factory=dict)
    drift_loaded: bool | None = None
    drift: dict[str, tuple[float | None, int]] = field(default_factory=dict)
    recall_per_s: float | None = None
    recall_quantiles: tuple[float | None, ...] = ()
    ranker_per_s: float | None = None
    ranker_ms: dict[str, float] = field(default_factory=dict)
    ranker_batch: float | None = None
    versions: dict[str, str] = field(default_factory=dict)


def _window(cur: Scrape, prev: Scrape | None) -> tuple[float, bool]:
    if prev is not None and prev.samples is not None:
        return max(cur.at - prev.at, 1e-9), False
    start = cur.total(PROCESS_START)
    return (max(cur.at - start, 1e-9) if start else float("nan")), True


def build_view(search: Scrape, recall: Scrape | None = None, ranker: Scrape | None = None,
               previous: View | None = None) -> View:
    """The frame for the latest scrapes, as deltas against ``previous`` when given."""
    prev_search = previous.search if previous else None
    if prev_search is not None and prev_search.samples is None:
        prev_search = None
    window, since_start = _window(search, prev_search)
    view = View(window, since_start, search, recall, ranker)
    if search.samples is not None:
        _search_view(view, search, prev_search, window)
    if recall is not None and recall.samples is not None:
        prev = previous.recall if previous and previous.recall and previous.recall.samples else None
        w, _ = _window(recall, prev)
        requests = _diff(_by_label(recall, mn.RECALL_REQUESTS_TOTAL, "mode"),
                         _by_label(prev, mn.RECALL_REQUESTS_TOTAL, "mode") if prev else None)
        view.recall_per_s = sum(requests.values()) / w if w == w else None
        buckets = _diff_buckets(_buckets(recall, mn.RECALL_SEARCH_SECONDS, None),
                                _buckets(prev, mn.RECALL_SEARCH_SECONDS, None) if prev else None)
        view.recall_quantiles = tuple(histogram_quantile(q, buckets.get("", {})) for q in QUANTILES)
        for labels, _ in recall.select(mn.MODEL_INFO):
            view.versions[labels.get("component", "recall")] = (
                f"{labels.get('version', '?')} ({labels.get('variant', labels.get('index', '?'))})")
    if ranker is not None and ranker.samples is not None:
        _ranker_view(view, ranker, previous.ranker if previous else None)
    return view


def _search_view(view: View, cur: Scrape, prev: Scrape | None, window: float) -> None:
    rows = _diff(_by_label(cur, mn.SEARCH_ROWS_TOTAL, "mode"),
                 _by_label(prev, mn.SEARCH_ROWS_TOTAL, "mode") if prev else None)
    if window == window:  # not nan: rates need a known window
        view.rows_per_s = {mode: n / window for mode, n in rows.items()}
    codes = _diff(_by_label(cur, mn.REQUESTS_TOTAL, "code", model="search"),
                  _by_label(prev, mn.REQUESTS_TOTAL, "code", model="search") if prev else None)
    answered = sum(codes.values())
    if answered:
        view.error_share = sum(n for c, n in codes.items() if c.startswith("5")) / answered
    degraded = _diff(_by_label(cur, mn.SEARCH_DEGRADED_TOTAL, "stage"),
                     _by_label(prev, mn.SEARCH_DEGRADED_TOTAL, "stage") if prev else None)
    total_rows = sum(rows.values())
    if total_rows:
        view.degraded_share = {stage: n / total_rows for stage, n in degraded.items()}
        # A row may degrade in two stages; "all" counts stages, an upper bound on rows.
        view.degraded_share["all"] = sum(degraded.values()) / total_rows
    stage_buckets = _diff_buckets(_buckets(cur, mn.SEARCH_STAGE_SECONDS, "stage"),
                                  _buckets(prev, mn.SEARCH_STAGE_SECONDS, "stage") if prev else None)
    request = _diff_buckets(_buckets(cur, mn.SEARCH_REQUEST_SECONDS, None),
                            _buckets(prev, mn.SEARCH_REQUEST_SECONDS, None) if prev else None)
    for stage, buckets in [*sorted(stage_buckets.items(), key=lambda kv: _stage_rank(kv[0])),
                           *(("request", b) for b in request.values())]:
        view.stages[stage] = tuple(histogram_quantile(q, buckets) for q in QUANTILES)
        view.stage_counts[stage] = max(buckets.values()) if buckets else 0.0
    loaded = cur.select(mn.DRIFT_REFERENCE_LOADED)
    view.drift_loaded = bool(loaded[0][1]) if loaded else None
    psi = _by_label(cur, mn.DRIFT_PSI, "signal")
    samples = _by_label(cur, mn.DRIFT_WINDOW_SAMPLES, "signal")
    for signal in [*SIGNALS, *sorted(set(samples) - set(SIGNALS))]:
        if signal in samples or signal in psi:
            view.drift[signal] = (psi.get(signal), int(samples.get(signal, 0)))
    for labels, _ in cur.select(mn.MODEL_INFO):
        view.versions[labels.get("component", "?")] = (
            f"{labels.get('version', '?')} ({labels.get('variant', labels.get('index', '?'))})")


def _stage_rank(stage: str) -> int:
    return STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)


def _ranker_view(view: View, cur: Scrape, prev: Scrape | None) -> None:
    if prev is not None and prev.samples is None:
        prev = None
    window, _ = _window(cur, prev)

    def delta(name: str) -> float:
        return _delta(cur.total(name), prev.total(name) if prev else None)

    success = delta(mn.TRITON_REQUEST_SUCCESS)
    if prev is not None:
        view.ranker_per_s = success / window
    executions = delta(mn.TRITON_EXEC_COUNT)
    if success:
        view.ranker_ms = {
            "request": delta(mn.TRITON_REQUEST_DURATION_US) / success / 1000.0,
            "queue": delta(mn.TRITON_QUEUE_DURATION_US) / success / 1000.0,
            "compute": delta(mn.TRITON_COMPUTE_INFER_DURATION_US) / success / 1000.0,
        }
    if executions:
        view.ranker_batch = success / executions
    view.ranker_ms.setdefault("count", success)


# --------------------------------------------------------------------------------- rendering


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


def render(view: View, width: int = 78) -> str:
    """The frame as plain text."""
    lines: list[str] = []
    span = ("since start" if view.since_start else "last") + (
        f" {view.window:.0f}s" if view.window == view.window else "")
    lines.append(f"shopserve monitor  {time.strftime('%H:%M:%S')}  ({span})")
    lines.append("-" * width)
    search = view.search
    if search.samples is None:
        lines.append(f"search   {search.url}  unreachable ({search.error})")
    else:
        total = sum(view.rows_per_s.values())
        modes = ", ".join(f"{m} {r:.1f}" for m, r in sorted(view.rows_per_s.items()))
        degraded = ", ".join(f"{s} {_pct(v)}" for s, v in sorted(view.degraded_share.items())
                             if s != "all" and v > 0)
        lines.append(f"search   {total:.1f} rows/s ({modes or 'no traffic'})  5xx "
                     f"{_pct(view.error_share)}  degraded {_pct(view.degraded_share.get('all'))}"
                     + (f" ({degraded})" if degraded else ""))
        lines.append("")
        lines.append(f"{'stage':<12}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'count':>9}")
        for stage, quantiles in view.stages.items():
            lines.append(f"{stage:<12}" + "".join(f"{_ms(q):>9}" for q in quantiles)
                         + f"{view.stage_counts.get(stage, 0):>9.0f}")
        if not view.stages:
            lines.append("(no requests yet)")
        lines.append("")
        if view.drift_loaded is False:
            lines.append("drift    unavailable: the bundle has no drift reference")
        elif view.drift_loaded is None:
            lines.append("drift    not exported by this server")
        else:
            lines.append(f"{'drift signal':<16}{'PSI':>8}  {'status':<10}{'samples':>8}")
            for signal, (value, samples) in view.drift.items():
                shown = f"{value:.3f}" if value is not None else "-"
                word = status(value) if value is not None else "warming up"
                lines.append(f"{signal:<16}{shown:>8}  {word:<10}{samples:>8}")
    lines.append("")
    if view.recall is not None:
        if view.recall.samples is None:
            lines.append(f"recall   {view.recall.url}  unreachable ({view.recall.error})")
        else:
            rate = "-" if view.recall_per_s is None else f"{view.recall_per_s:.1f}"
            q = view.recall_quantiles or (None, None, None)
            lines.append(f"recall   {rate} req/s  top-k p50 {_ms(q[0])} ms  p99 {_ms(q[2])} ms")
    if view.ranker is not None:
        if view.ranker.samples is None:
            lines.append(f"ranker   {view.ranker.url}  unreachable ({view.ranker.error})")
        else:
            rate = "-" if view.ranker_per_s is None else f"{view.ranker_per_s:.1f}"
            ms = view.ranker_ms
            timing = (f"mean {ms['request']:.1f} ms (queue {ms['queue']:.1f}, compute "
                      f"{ms['compute']:.1f})" if "request" in ms else "no inferences")
            batch = "-" if view.ranker_batch is None else f"{view.ranker_batch:.2f}"
            lines.append(f"ranker   {rate} inf/s  {timing}  batch {batch}")
    if view.versions:
        lines.append("versions " + "  ".join(f"{c} {v}" for c, v in sorted(view.versions.items())))
    return "\n".join(lines)


# --------------------------------------------------------------------------------- the command


def _scrape_all(urls: Iterable[str | None]) -> list[Scrape | None]:
    return [scrape(metrics_url(u)) if u else None for u in urls]


def run(search: str, recall: str | None, ranker: str | None, interval: float, once: bool,
        out: Callable[[str], None] = print, frames: int | None = None) -> int:
    """Scrape and render until interrupted (or once, or ``frames`` times).

    Returns:
        0, or 1 when ``once`` and the transformer did not answer.
    """
    previous: View | None = None
    shown = 0
    try:
        while True:
            s, r, k = _scrape_all((search, recall, ranker))
            assert s is not None
            view = build_view(s, r, k, previous)
            text = render(view)
            if once:
                out(text)
                return 0 if s.samples is not None else 1
            # Home the cursor and clear: redraw in place without scrolling.
            out("\x1b[H\x1b[2J" + text)
            previous = view
            shown += 1
            if frames is not None and shown >= frames:
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def _cmd_monitor(args: argparse.Namespace) -> int:
    if getattr(args, "monitor_action", None) == "reference":
        return _cmd_reference(args)
    return run(args.host, args.recall or None, args.ranker or None, args.interval, args.once,
               out=lambda text: print(text, flush=True))


def _cmd_reference(args: argparse.Namespace) -> int:
    from pipeline.lifecycle.drift_reference import record_reference

    start = time.perf_counter()
    manifest = record_reference(Path(args.bundle), samples=args.samples,
                                score_queries=args.score_queries)
    print(f"drift reference {manifest.version} written to {Path(args.bundle) / manifest.component} "
          f"in {time.perf_counter() - start:.1f}s")
    print(_reference_table(Path(args.bundle)))
    return 0


def _reference_table(bundle: Path) -> str:
    from shopserve.artifacts import DRIFT_COMPONENT, DRIFT_REFERENCE_FILE
    from shopserve.drift import DriftReference

    reference = DriftReference.load(bundle / DRIFT_COMPONENT / DRIFT_REFERENCE_FILE)
    lines = []
    for name, signal in reference.signals.items():
        bins = ", ".join(f"{label} {share:.2f}" for label, share in
                         zip(signal.labels, signal.shares, strict=True))
        lines.append(f"  {name} ({signal.samples} samples): {bins}")
    return "\n".join(lines)


def register(sub: Any) -> None:
    """Add ``monitor`` (and ``monitor reference``) to the ``shopserve`` command."""
    monitor = sub.add_parser("monitor", help="live view of the stack's metrics (rates, latency "
                             "per stage, degraded share, drift)")
    monitor.add_argument("--host", default=DEFAULT_SEARCH,
                         help=f"the search transformer's base URL (default {DEFAULT_SEARCH})")
    monitor.add_argument("--recall", default=DEFAULT_RECALL,
                         help=f"mf-recall's base URL, '' to skip (default {DEFAULT_RECALL})")
    monitor.add_argument("--ranker", default=DEFAULT_RANKER,
                         help=f"Triton's metrics URL, '' to skip (default {DEFAULT_RANKER})")
    monitor.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    monitor.add_argument("--once", action="store_true",
                         help="print one frame (everything since start) and exit")
    monitor.set_defaults(func=_cmd_monitor)
    actions = monitor.add_subparsers(dest="monitor_action", required=False)
    reference = actions.add_parser(
        "reference", help="record the drift reference of an existing bundle (its drift/ component)")
    reference.add_argument("--bundle", type=Path, default=Path("artifacts/demo"))
    reference.add_argument("--samples", type=int, default=5000,
                           help="query-log rows drawn by traffic share for the query signals")
    reference.add_argument("--score-queries", type=int, default=400,
                           help="held-out queries drawn for the ranker scores")
    reference.set_defaults(func=_cmd_monitor)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="shopserve")
    register(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args()
    sys.exit(parsed.func(parsed))
