"""``shopserve soak``: the supervised local stack under a steady load for minutes.

Starts the stack of ``shopserve up`` on a bundle (free ports, supervised), measures its capacity
unless ``--rate`` is given, then sends the v2 traffic mix at half that capacity (or ``--rate``;
open loop, every request recorded, :class:`pipeline.observe.harness.SteadyLoad`): first for
``--warmup-seconds`` of warm-up, outside the tables, then for ``--minutes``. Prints one row per
minute (requests, failures, refused connections, degraded share, p99 of the 200 answers) as it
goes, a total, and each serving process's resident memory after the warm-up and at the end of
every minute, with its growth: memory is judged from a start taken once caches, pools and arenas
have had traffic, as soak tests do.

Capacity is the highest open-loop rate of the same traffic mix at which no request fails and at
most ``--max-degraded`` percent of the answers are degraded (a degraded answer skipped a stage, so
counting it would overrate the stack): probes of ``--capacity-probe-seconds`` each, doubling from
``--capacity-start`` and then bisected (:func:`pipeline.observe.harness.highest_rate`), at most
``--capacity-max-probes`` of them, after ``--capacity-warmup-seconds`` of unjudged traffic; every
probe is printed.

Exit code 1 when any request failed or was refused, the supervisor gave up on a component, or a
process's memory grew by more than ``--max-rss-growth`` percent; 2 when the stack does not start or
no probed rate met the objective.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtest.traffic import TrafficMix
from pipeline.local import parse_env
from pipeline.observe.harness import (
    PROCESSES,
    Record,
    SteadyLoad,
    add_stack_flags,
    cpu_model,
    highest_rate,
    percentile,
    rss_mb,
    supervised_stack,
)

#: Seconds after a minute ends before its row is printed (answers still on their way).
GRACE_S = 2.0
#: Seconds between the polls of a capacity probe's answers (a clear miss ends it early).
PROBE_POLL_S = 0.5
#: Seconds of rest after a probe, for queues to drain before the next.
PROBE_REST_S = 1.0
#: Fewest requests a probe sends: a slow rate's probe lasts longer rather than judge a handful.
PROBE_MIN_REQUESTS = 20


@dataclass(frozen=True)
class Interval:
    """What one stretch of the soak saw.

    Attributes:
        label: Its span, e.g. ``0-1``.
        requests: Requests sent in it.
        failed: Requests not answered 200 that were not refused.
        refused: Requests whose connection was refused.
        degraded: 200 answers with any degradation.
        p99_ms: 99th percentile latency of the 200 answers.
    """

    label: str
    requests: int
    failed: int
    refused: int
    degraded: int
    p99_ms: float

    @property
    def degraded_share(self) -> float:
        """Degraded answers over requests (0 when there were none)."""
        return self.degraded / self.requests if self.requests else 0.0


def interval(label: str, records: Sequence[Record], start: float, end: float) -> Interval:
    """The :class:`Interval` of the requests sent in ``[start, end)``."""
    window = [r for r in records if start <= r.start < end]
    return Interval(label, len(window), sum(r.failed for r in window),
                    sum(r.refused for r in window), sum(r.ok and bool(r.degraded) for r in window),
                    percentile([r.latency_s * 1000 for r in window if r.ok], 0.99))


def minute_bounds(total_s: float) -> list[tuple[float, float]]:
    """Offsets (seconds) of each minute of a run of ``total_s``; the last may be shorter."""
    count = max(1, math.ceil(total_s / 60.0 - 1e-9))
    return [(60.0 * i, min(total_s, 60.0 * (i + 1))) for i in range(count)]


def growth(start: float | None, end: float | None) -> str:
    """Growth from ``start`` to ``end`` as a percentage, ``-`` when either is missing."""
    if not start or end is None:
        return "-"
    return f"{(end - start) / start:+.1%}"


def growth_share(start: float | None, end: float | None) -> float | None:
    """Growth from ``start`` to ``end`` as a share (0.1 = +10%); None when either is missing."""
    if not start or end is None:
        return None
    return (end - start) / start


def _minute(b: float) -> str:
    return f"{b / 60:.2g}" if b % 60 else f"{b / 60:g}"


def _label(a: float, b: float) -> str:
    return f"{a / 60:g}-{_minute(b)}"


def meets_objective(row: Interval, max_degraded: float) -> bool:
    """Whether a probe's requests met the capacity objective: some were sent, none failed or was
    refused, and at most ``max_degraded`` (a share) of them came back degraded."""
    return (row.requests > 0 and not row.failed and not row.refused
            and row.degraded <= max_degraded * row.requests)


def probe(url: str, mix: TrafficMix, rate: float, seconds: float, max_degraded: float,
          timeout_s: float, seed: int) -> tuple[Interval, bool]:
    """Offer ``rate`` req/s of the traffic mix for ``seconds`` (longer when that would send fewer
    than :data:`PROBE_MIN_REQUESTS`); what the requests got, and whether it was cut short.

    The probe ends early once the objective is missed for sure (a failure, or more degraded
    answers than ``max_degraded`` of all the requests it will send), so a rate far over capacity
    costs little time.
    """
    seconds = max(seconds, PROBE_MIN_REQUESTS / rate)
    load = SteadyLoad(url, mix, rate, timeout_s=timeout_s, seed=seed)
    allowed = max_degraded * rate * seconds
    start = time.monotonic()
    load.start()
    early = False
    while time.monotonic() - start < seconds:
        time.sleep(PROBE_POLL_S)
        seen = load.snapshot()
        if (any(not r.ok for r in seen)
                or sum(bool(r.degraded) for r in seen if r.ok) > allowed):
            early = True
            break
    records = load.stop()
    time.sleep(PROBE_REST_S)
    return interval(f"{rate:g} req/s", records, start, math.inf), early


def measure_capacity(url: str, mix: TrafficMix, args: argparse.Namespace) -> float | None:
    """The highest rate meeting the objective (:func:`meets_objective`), each probe printed."""
    probes = 0

    def meets(rate: float) -> bool:
        nonlocal probes
        probes += 1
        row, early = probe(url, mix, rate, args.capacity_probe_seconds, args.max_degraded / 100,
                           args.request_timeout, seed=1000 + probes)
        ok = meets_objective(row, args.max_degraded / 100)
        p99 = "-" if math.isnan(row.p99_ms) else f"{row.p99_ms:.0f} ms"
        print(f"  probe {probes}: {rate:g} req/s: {row.requests} requests, {row.failed} failed, "
              f"{row.refused} refused, {row.degraded_share:.1%} degraded, p99 {p99} -> "
              f"{'met' if ok else 'missed'}{' (stopped early)' if early else ''}", flush=True)
        return ok

    print(f"capacity: highest open-loop rate with no failure and <= {args.max_degraded:g}% "
          f"degraded answers; probes of {args.capacity_probe_seconds:g} s from "
          f"{args.capacity_start:g} req/s, bisected to {args.capacity_resolution:g} req/s, after "
          f"{args.capacity_warmup_seconds:g} s of unjudged traffic at {args.capacity_start:g} req/s",
          flush=True)
    t0 = time.monotonic()
    if args.capacity_warmup_seconds > 0:  # a cold stack's first answers say nothing of capacity
        warmup = SteadyLoad(url, mix, args.capacity_start, timeout_s=args.request_timeout, seed=999)
        warmup.start()
        time.sleep(args.capacity_warmup_seconds)
        warmup.stop()
        time.sleep(PROBE_REST_S)
    best = highest_rate(meets, args.capacity_start, resolution=args.capacity_resolution,
                        max_probes=args.capacity_max_probes, floor=args.capacity_resolution)
    print(f"capacity {'-' if best is None else f'{best:g} req/s'} ({probes} probes, "
          f"{time.monotonic() - t0:.0f} s)", flush=True)
    return best


INTERVAL_HEADER = ("| minute | requests | failed | refused | degraded | p99 ms |\n"
                   "| --- | ---: | ---: | ---: | ---: | ---: |")


def rss_table(columns: Sequence[tuple[str, Mapping[str, float | None]]]) -> str:
    """Markdown table of RSS, MB: a row per process of :data:`PROCESSES`, a column per sample
    (label, RSS by process), and the growth from the first sample to the last."""
    head = ["process", *(label for label, _ in columns), "growth"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for label, *_ in PROCESSES:
        values = [sample.get(label) for _, sample in columns]
        cells = ["-" if v is None else f"{v:.0f}" for v in values]
        lines.append(f"| {label} | {' | '.join(cells)} | {growth(values[0], values[-1])} |")
    return "\n".join(lines)


def format_interval(row: Interval) -> str:
    """One markdown table row."""
    p99 = "-" if math.isnan(row.p99_ms) else f"{row.p99_ms:.0f}"
    return (f"| {row.label} | {row.requests} | {row.failed} | {row.refused} | "
            f"{row.degraded_share:.1%} | {p99} |")


def run_soak(args: argparse.Namespace) -> int:
    """Run the soak of ``args``; the exit code."""
    try:
        search_env = parse_env(args.search_env)
    except ValueError as exc:
        print(f"bad argument: {exc}", file=sys.stderr)
        return 2
    total_s = args.seconds if args.seconds is not None else args.minutes * 60.0
    if total_s <= 0:
        print("bad argument: the soak needs a positive duration", file=sys.stderr)
        return 2
    bundle = Path(args.bundle).resolve()
    mix = TrafficMix.from_bundle(bundle)
    log_dir = Path(args.log_dir) if args.log_dir else bundle.parent / "logs-soak"
    print(f"CPU: {cpu_model()}")
    try:
        with supervised_stack(bundle, log_dir, search_env) as sup:
            rate = args.rate
            if rate is None:
                capacity = measure_capacity(sup.url, mix, args)
                if capacity is None:
                    print("no probed rate met the objective: pass --rate", file=sys.stderr)
                    return 2
                rate = capacity / 2
                print(f"soaking at half the capacity: {rate:g} req/s")
            print(f"bundle {args.bundle}; {rate:g} req/s open loop for {total_s / 60:.2g} min after "
                  f"a {args.warmup_seconds:g} s warm-up at that rate (not in the tables: the RSS "
                  f"start figure is taken after it); logs in {log_dir}\n", flush=True)
            restarts_start = dict(sup.stack.restarts)
            load = SteadyLoad(sup.url, mix, rate, timeout_s=args.request_timeout)
            load.start()
            time.sleep(args.warmup_seconds)
            rss = [("start", rss_mb(sup.stack))]
            t0 = time.monotonic()
            print(INTERVAL_HEADER, flush=True)
            for a, b in minute_bounds(total_s):
                time.sleep(max(0.0, t0 + b - time.monotonic()))
                rss.append((_minute(b), rss_mb(sup.stack)))
                if b < total_s:  # the last minute's row waits for every answer below
                    time.sleep(GRACE_S)
                    print(format_interval(interval(_label(a, b), load.snapshot(), t0 + a, t0 + b)),
                          flush=True)
            end = time.monotonic()
            records = load.stop()
            a, b = minute_bounds(total_s)[-1]
            print(format_interval(interval(_label(a, b), records, t0 + a, end)))
            total = interval("total", records, t0, end)
            print(format_interval(total))
            restarts = {n: c - restarts_start.get(n, 0) for n, c in sup.stack.restarts.items()}
            errors = list(sup.errors)
    except RuntimeError as exc:
        print(f"the stack did not start: {exc}", file=sys.stderr)
        return 2
    print(f"\nRSS MB per process after the warm-up (start) and at the end of each minute:\n\n"
          f"{rss_table(rss)}")
    first, last = rss[0][1], rss[-1][1]
    grown = [f"{label} {growth(first.get(label), last.get(label))}" for label, *_ in PROCESSES
             if (growth_share(first.get(label), last.get(label)) or 0.0) > args.max_rss_growth / 100]
    restarted = ", ".join(f"{n} {c}" for n, c in sorted(restarts.items()) if c)
    print(f"\nrestarts: {restarted or 'none'}")
    print(f"RSS growth over {args.max_rss_growth:g}%: {', '.join(grown) or 'none'}")
    for exc in errors:
        print(f"the supervisor gave up: {exc}", file=sys.stderr)
    if total.failed or total.refused or errors or grown:
        print(f"FAILED: {total.failed} failed, {total.refused} refused of {total.requests}"
              f"{'; memory grew' if grown else ''}")
        return 1
    print(f"no failures in {total.requests} requests")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``soak`` to the ``shopserve`` parser."""
    soak = sub.add_parser(
        "soak", help="the supervised local stack at half its capacity for minutes: failures, "
                     "degraded share and p99 per minute, RSS per process and minute",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    add_stack_flags(soak)
    soak.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default 10)")
    soak.add_argument("--seconds", type=float, default=None, help="length in seconds (overrides)")
    soak.add_argument("--rate", type=float, default=None,
                      help="requests/s (default: half the capacity measured first; skips it)")
    soak.add_argument("--warmup-seconds", type=float, default=60.0,
                      help="traffic at the soak's rate before the tables start (default 60)")
    soak.add_argument("--max-degraded", type=float, default=1.0,
                      help="capacity objective: most degraded answers, percent (default 1)")
    soak.add_argument("--capacity-start", type=float, default=2.0,
                      help="first rate probed, req/s (default 2)")
    soak.add_argument("--capacity-resolution", type=float, default=0.5,
                      help="bisect down to this, req/s (default 0.5)")
    soak.add_argument("--capacity-warmup-seconds", type=float, default=10.0,
                      help="unjudged traffic before the first capacity probe (default 10)")
    soak.add_argument("--capacity-probe-seconds", type=float, default=10.0,
                      help="length of each capacity probe (default 10)")
    soak.add_argument("--capacity-max-probes", type=int, default=7,
                      help="most capacity probes (default 7)")
    soak.add_argument("--max-rss-growth", type=float, default=10.0,
                      help="fail when a process's RSS grows more than this, percent (default 10)")
    soak.set_defaults(func=run_soak)
