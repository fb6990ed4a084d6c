"""The highest steady rate the local stack serves with p99 <= 150 ms, no failures and <= 1% degraded.

For each configuration compared (:data:`bench.serving_load.CONFIGS`: ``today``, the relevance cache
off, no ranker admission limit and the search before the cascade, and ``new``, the defaults), in
one run: starts the stack on a bundle (``artifacts/demo``) on free ports, then offers steady rates
in increasing order, each ``--repeats`` times for ``--seconds``, with locust
(:mod:`loadtest.locustfile`: the v2 traffic mix of the bundle's query log with its long tail of
queries seen once, :mod:`loadtest.tail`). The offered rate is known: ``users x --rate-per-user``
requests per second, each user at constant throughput (a user waits out the rest of its period
after each answer; with p99 far under the period, it never falls behind). A rate meets the
objective when the median p99 of its runs is within it, no run failed a request and the median
degraded share is at most 1% (an unranked answer is not the answer the objective is about). After
the first rate that misses, it bisects between the last rate that met it and that one, down to
``--resolution`` req/s, and reports the highest rate that met it. Each row also shows what the
servers counted: the share of searches ranked, pairs scored per search, the relevance cache's hit
ratio. A benchmark, not a test: run it on a quiet machine (``make bench-load``).

    python -m bench.load --bundle artifacts/demo --out bench/results/load.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.serving_load import CONFIGS, Measured, configured_stack, machine_line, offer

P99_MS = 150.0
MAX_DEGRADED = 0.01


@dataclass(frozen=True)
class Row:
    """One offered rate of one configuration and what its repeated runs got."""

    config: str
    offered: float
    runs: tuple[Measured, ...]

    def median(self, field: str) -> float:
        """Median of one locust statistic over the runs."""
        return float(statistics.median(getattr(m.stats, field) for m in self.runs))

    def median_of(self, value: str) -> float:
        """Median of one server-side figure (a property of :class:`Measured` or its counters)."""
        def get(m: Measured) -> float:
            return float(getattr(m, value) if hasattr(m, value) else getattr(m.search, value))
        return float(statistics.median(get(m) for m in self.runs))

    @property
    def failures(self) -> int:
        """Failed requests over all runs."""
        return sum(m.stats.failures for m in self.runs)

    @property
    def ranked_share(self) -> float:
        """Median share of searches the ranker ranked."""
        return float(statistics.median(
            m.search.ranked / m.search.searches if m.search.searches else 0.0 for m in self.runs))

    @property
    def meets(self) -> bool:
        """Median p99 within the objective, no failure in any run, median degraded <= 1%."""
        return (all(m.stats.requests > 0 for m in self.runs) and self.failures == 0
                and self.median("p99_ms") <= P99_MS
                and self.median_of("degraded_ratio") <= MAX_DEGRADED)


def table(rows: list[Row]) -> str:
    """Markdown table of the rates tried, per configuration."""
    lines = ["| config | offered req/s | achieved req/s | p50 ms | p95 ms | p99 ms | failures "
             "| degraded | searches ranked | pairs / search | cache hits "
             f"| p99 <= {P99_MS:g} ms, 0 failures, <= {MAX_DEGRADED:.0%} degraded |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |"]
    for r in sorted(rows, key=lambda row: (list(CONFIGS).index(row.config), row.offered)):
        hits = r.median_of("cache_hit_ratio")
        lines.append(
            f"| {r.config} | {r.offered:g} | {r.median('rps'):.1f} | {r.median('p50_ms'):.0f} | "
            f"{r.median('p95_ms'):.0f} | {r.median('p99_ms'):.0f} | {r.failures} | "
            f"{r.median_of('degraded_ratio'):.1%} | {r.ranked_share:.0%} | "
            f"{r.median_of('pairs_per_search'):.1f} | "
            f"{'off' if hits != hits else f'{hits:.0%}'} | {'yes' if r.meets else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and write it to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/demo"))
    parser.add_argument("--rates", default="2,4,6,8,10,15,20,30,40",
                        help="offered rates to try, req/s, increasing")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per rate (medians reported)")
    parser.add_argument("--resolution", type=float, default=0.5,
                        help="bisect between the last rate met and the first missed down to this")
    parser.add_argument("--warmup", type=float, default=10.0, help="unrecorded warm-up run, s")
    parser.add_argument("--rate-per-user", type=float, default=2.0,
                        help="requests/s each locust user offers")
    parser.add_argument("--configs", default="today,new", help="of: " + ", ".join(CONFIGS))
    parser.add_argument("--out", type=Path, default=Path("bench/results/load.md"))
    parser.add_argument("--work", type=Path, default=Path("artifacts/bench/load"),
                        help="locust reports and server logs")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    command = "python -m bench.load " + " ".join(argv if argv is not None else sys.argv[1:])
    rows: list[Row] = []
    best: dict[str, float | None] = {}
    for config in args.configs.split(","):
        with configured_stack(args.bundle, config, args.work) as stack:
            url, ranker_http = stack.url, stack.ranker_http
            print(f"{config}: stack ready at {url}; rates {args.rates}, {args.repeats} x "
                  f"{args.seconds:g}s each", file=sys.stderr)

            def measure(rate: float, config: str = config, url: str = url,
                        ranker_http: str = ranker_http) -> Row:
                runs = tuple(offer(url, ranker_http, args.bundle, args.work,
                                   f"{config}-rate-{rate:g}-{i}", rate, args.seconds,
                                   args.rate_per_user) for i in range(args.repeats))
                row = Row(config, rate, runs)
                rows.append(row)
                print(f"  {config} {rate:g} req/s offered: median p99 {row.median('p99_ms'):.0f} "
                      f"ms, {row.failures} failures, degraded "
                      f"{row.median_of('degraded_ratio'):.1%} -> "
                      f"{'ok' if row.meets else 'missed'}", file=sys.stderr)
                return row

            if args.warmup > 0:
                offer(url, ranker_http, args.bundle, args.work, f"{config}-warmup", rates[0],
                      args.warmup, args.rate_per_user)
            met = 0.0
            for rate in rates:
                if measure(rate).meets:
                    met = rate
                    continue
                missed = rate
                while missed - met > args.resolution:
                    mid = round((met + missed) / 2 / args.resolution) * args.resolution
                    if not met < mid < missed:
                        break
                    if measure(mid).meets:
                        met = mid
                    else:
                        missed = mid
                break
        best[config] = max((r.offered for r in rows if r.config == config and r.meets),
                           default=None)
    objective = f"p99 <= {P99_MS:g} ms, no failures and <= {MAX_DEGRADED:.0%} degraded"
    verdicts = [f"{config}: highest steady rate with {objective}: "
                + (f"**{rate:g} req/s**" if rate is not None else "none of the rates tried")
                for config, rate in best.items()]
    if best.get("today") and best.get("new"):
        verdicts.append(f"new / today: {best['new'] / best['today']:.1f}x (goal >= 4x)")
    text = table(rows)
    print(text)
    print("\n".join(verdicts))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# Local stack under steady load\n\n"
        f"Command: `{command}` (`make bench-load`), bundle `{args.bundle}`, {args.repeats} runs of "
        f"{args.seconds:g} s per rate (medians; failures summed), the v2 traffic mix of "
        f"`loadtest/locustfile.py` (searches with a long tail of queries seen once, and "
        f"recommendations; anonymous and known shoppers, some filters), one machine "
        f"({_cpus()} cores) running locust and the three servers.\n\n{machine_line()}\n\n"
        + "".join(f"- `{c}`: {', '.join(f'{k}={v}' for k, v in env.items()) or 'the defaults'}\n"
                  for c, env in CONFIGS.items() if c in best)
        + f"\n{text}\n\n" + "\n".join(f"- {v}" for v in verdicts) + "\n")
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
