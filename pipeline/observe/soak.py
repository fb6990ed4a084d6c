"""``shopserve soak``: the supervised local stack under a steady load for minutes.

Starts the stack of ``shopserve up`` on a bundle (free ports, supervised), measures its capacity
with a short closed-loop burst (``--capacity-seconds`` of ``--capacity-clients`` clients sending
back to back) unless ``--rate`` is given, then sends the v2 traffic mix at half that capacity
(open loop, every request recorded, :class:`pipeline.observe.harness.SteadyLoad`) for
``--minutes``. Prints one row per minute (requests, failures, refused connections, degraded share,
p99 of the 200 answers) as it goes, a total, and each serving process's resident memory after the
warm-up and at the end with its growth.

Exit code 1 when any request failed or was refused (or the supervisor gave up on a component);
2 when the stack does not start.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtest.traffic import TrafficMix
from pipeline.local import parse_env
from pipeline.observe.harness import (
    PROCESSES,
    Record,
    SteadyLoad,
    add_stack_flags,
    closed_loop_capacity,
    cpu_model,
    percentile,
    rss_mb,
    supervised_stack,
)

#: Seconds after a minute ends before its row is printed (answers still on their way).
GRACE_S = 2.0


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


def _label(a: float, b: float) -> str:
    return f"{a / 60:g}-{b / 60:.2g}" if b % 60 else f"{a / 60:g}-{b / 60:g}"


INTERVAL_HEADER = ("| minute | requests | failed | refused | degraded | p99 ms |\n"
                   "| --- | ---: | ---: | ---: | ---: | ---: |")


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
                capacity = closed_loop_capacity(sup.url, mix, args.capacity_seconds,
                                                args.capacity_clients)
                rate = max(0.5, capacity / 2)
                print(f"capacity {capacity:.1f} undegraded answers/s ({args.capacity_clients} "
                      f"clients back to back for {args.capacity_seconds:g}s); soaking at half: "
                      f"{rate:.1f} req/s")
            print(f"bundle {args.bundle}; {rate:.1f} req/s open loop for {total_s / 60:.2g} min; "
                  f"logs in {log_dir}\n", flush=True)
            rss_start = rss_mb(sup.stack)
            restarts_start = dict(sup.stack.restarts)
            load = SteadyLoad(sup.url, mix, rate, timeout_s=args.request_timeout)
            t0 = time.monotonic()
            load.start()
            print(INTERVAL_HEADER, flush=True)
            for a, b in minute_bounds(total_s):
                time.sleep(max(0.0, t0 + b - time.monotonic()))
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
            rss_end = rss_mb(sup.stack)
            restarts = {n: c - restarts_start.get(n, 0) for n, c in sup.stack.restarts.items()}
            errors = list(sup.errors)
    except RuntimeError as exc:
        print(f"the stack did not start: {exc}", file=sys.stderr)
        return 2
    print("\n| process | RSS MB at start | RSS MB at end | growth |\n| --- | ---: | ---: | ---: |")
    for label, _, _ in PROCESSES:
        start, stop = rss_start.get(label), rss_end.get(label)
        print(f"| {label} | {'-' if start is None else f'{start:.0f}'} | "
              f"{'-' if stop is None else f'{stop:.0f}'} | {growth(start, stop)} |")
    restarted = ", ".join(f"{n} {c}" for n, c in sorted(restarts.items()) if c)
    print(f"\nrestarts: {restarted or 'none'}")
    for exc in errors:
        print(f"the supervisor gave up: {exc}", file=sys.stderr)
    if total.failed or total.refused or errors:
        print(f"FAILED: {total.failed} failed, {total.refused} refused of {total.requests}")
        return 1
    print(f"no failures in {total.requests} requests")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``soak`` to the ``shopserve`` parser."""
    soak = sub.add_parser(
        "soak", help="the supervised local stack at half its capacity for minutes: failures, "
                     "degraded share and p99 per minute, RSS growth per process",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    add_stack_flags(soak)
    soak.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default 10)")
    soak.add_argument("--seconds", type=float, default=None, help="length in seconds (overrides)")
    soak.add_argument("--rate", type=float, default=None,
                      help="requests/s (default: half the capacity measured first)")
    soak.add_argument("--capacity-seconds", type=float, default=10.0)
    soak.add_argument("--capacity-clients", type=int, default=4)
    soak.set_defaults(func=run_soak)
