"""The highest steady rate the local stack serves with p99 <= 150 ms and no failures.

Starts the stack on a bundle (``artifacts/demo``) on free ports with its default settings, then
offers steady rates in increasing order, each ``--repeats`` times for ``--seconds``, with locust
(:mod:`loadtest.locustfile`, the v2 traffic mix of the bundle's query log). The offered rate is
known: ``users x --rate-per-user`` requests per second, each user at constant throughput (a user
waits out the rest of its period after each answer; with p99 far under the period, it never falls
behind). A rate meets the objective when the median p99 of its runs is within it and no run
failed a request. After the first rate that misses, it bisects between the last rate that met it
and that one, down to ``--resolution`` req/s, and reports the highest rate that met it. A
benchmark, not a test: run it on a quiet machine (``make bench-load``).

    python -m bench.load --bundle artifacts/demo --out bench/results/load.md
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest.runner import LoadRun, run_locust
from loadtest.slo import LoadStats
from pipeline.local import StackPorts, stack_components
from pipeline.supervisor import Stack

P99_MS = 150.0


@dataclass(frozen=True)
class Row:
    """One offered rate and what its repeated runs got."""

    offered: float
    users: int
    runs: tuple[LoadStats, ...]

    def median(self, field: str) -> float:
        """Median of one statistic over the runs."""
        return float(statistics.median(getattr(s, field) for s in self.runs))

    @property
    def failures(self) -> int:
        """Failed requests over all runs."""
        return sum(s.failures for s in self.runs)

    @property
    def meets(self) -> bool:
        """Median p99 within the objective, and no failure in any run."""
        return (all(s.requests > 0 for s in self.runs) and self.failures == 0
                and self.median("p99_ms") <= P99_MS)


def table(rows: list[Row]) -> str:
    """Markdown table of the rates tried."""
    lines = ["| offered req/s | users | achieved req/s | p50 ms | p95 ms | p99 ms | failures | degraded "
             "| p99 <= 150 ms, 0 failures |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |"]
    for r in sorted(rows, key=lambda row: row.offered):
        lines.append(f"| {r.offered:g} | {r.users} | {r.median('rps'):.1f} | {r.median('p50_ms'):.0f} | "
                     f"{r.median('p95_ms'):.0f} | {r.median('p99_ms'):.0f} | {r.failures} | "
                     f"{r.median('degraded_ratio'):.1%} | {'yes' if r.meets else 'no'} |")
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
    parser.add_argument("--out", type=Path, default=Path("bench/results/load.md"))
    parser.add_argument("--work", type=Path, default=Path("artifacts/bench/load"),
                        help="locust reports and server logs")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    command = "python -m bench.load " + " ".join(argv if argv is not None else sys.argv[1:])

    ports = StackPorts.free()
    components = stack_components(args.bundle, ports)
    url = components[-1].url
    rows: list[Row] = []
    with Stack(components, args.work / "logs") as stack:
        stack.start(timeout=240)
        print(f"stack ready at {url}; rates {args.rates}, {args.repeats} x {args.seconds:g}s each",
              file=sys.stderr)

        def offer(rate: float, seconds: float, name: str, repeats: int) -> Row:
            users = max(1, math.ceil(rate / args.rate_per_user))
            runs = []
            for i in range(repeats):
                run = LoadRun(host=url, out_dir=args.work, prefix=f"{name}-{i}", users=users,
                              spawn_rate=float(users), run_time_s=seconds, bundle=args.bundle,
                              rate_per_user=rate / users)
                result = run_locust(run)
                if result.summary is None:
                    raise RuntimeError(f"locust failed (exit {result.returncode}):\n"
                                       f"{result.output[-3000:]}")
                runs.append(LoadStats.from_dict(result.summary["total"]))
                time.sleep(1.0)  # let queues drain between runs
            return Row(rate, users, tuple(runs))

        def measure(rate: float) -> Row:
            row = offer(rate, args.seconds, f"rate-{rate:g}", args.repeats)
            rows.append(row)
            print(f"  {rate:g} req/s offered: median p99 {row.median('p99_ms'):.0f} ms, "
                  f"{row.failures} failures -> {'ok' if row.meets else 'missed'}", file=sys.stderr)
            return row

        if args.warmup > 0:
            offer(rates[0], args.warmup, "warmup", 1)
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
    best = max((r.offered for r in rows if r.meets), default=None)
    verdict = (f"Highest steady rate with p99 <= {P99_MS:g} ms and no failures: **{best:g} req/s**"
               if best is not None else f"No rate tried met p99 <= {P99_MS:g} ms with no failures.")
    text = table(rows)
    print(text)
    print(verdict)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# Local stack under steady load\n\n"
        f"Command: `{command}` (`make bench-load`), bundle `{args.bundle}`, {args.repeats} runs of "
        f"{args.seconds:g} s per rate (medians; failures summed), the v2 traffic mix of "
        f"`loadtest/locustfile.py` (searches and recommendations, "
        f"anonymous and known shoppers, some filters), default settings of every component, "
        f"one machine ({_cpus()} cores) running locust and the three servers.\n\n"
        f"{text}\n\n{verdict}\n")
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
