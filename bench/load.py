"""The highest steady rate the local stack serves with p99 <= 150 ms and no failures.

Starts the stack on a bundle (``artifacts/demo``) on free ports with its default settings, then
offers steady rates in increasing order, each for ``--seconds``, with locust
(:mod:`loadtest.locustfile`, the v2 traffic mix of the bundle's query log). The offered rate is
known: ``users x --rate-per-user`` requests per second, each user at constant throughput (a user
waits out the rest of its period after each answer; with p99 far under the period, it never falls
behind). It stops after the first rate that misses, and reports the highest one that met the
objective. A benchmark, not a test: run it on a quiet machine (``make bench-load``).

    python -m bench.load --bundle artifacts/demo --out bench/results/load.md
"""

from __future__ import annotations

import argparse
import math
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest.runner import LoadRun, run_locust
from loadtest.slo import LoadStats
from pipeline.cli import StackPorts, stack_components
from pipeline.stack import Stack

P99_MS = 150.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Row:
    """One offered rate and what it got."""

    offered: float
    users: int
    stats: LoadStats

    @property
    def meets(self) -> bool:
        """p99 within the objective and no failures."""
        return self.stats.requests > 0 and self.stats.failures == 0 and self.stats.p99_ms <= P99_MS


def table(rows: list[Row]) -> str:
    """Markdown table of the rates tried."""
    lines = ["| offered req/s | users | achieved req/s | p50 ms | p95 ms | p99 ms | failures | degraded "
             "| p99 <= 150 ms, 0 failures |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |"]
    for r in rows:
        s = r.stats
        lines.append(f"| {r.offered:g} | {r.users} | {s.rps:.1f} | {s.p50_ms:.0f} | {s.p95_ms:.0f} | "
                     f"{s.p99_ms:.0f} | {s.failures} | {s.degraded_ratio:.1%} | "
                     f"{'yes' if r.meets else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and write it to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/demo"))
    parser.add_argument("--rates", default="2,5,10,15,20,25,30,40,50,60,80",
                        help="offered rates to try, req/s, increasing")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each rate's run")
    parser.add_argument("--warmup", type=float, default=10.0, help="unrecorded warm-up run, s")
    parser.add_argument("--rate-per-user", type=float, default=2.0,
                        help="requests/s each locust user offers")
    parser.add_argument("--out", type=Path, default=Path("bench/results/load.md"))
    parser.add_argument("--work", type=Path, default=Path("artifacts/bench/load"),
                        help="locust reports and server logs")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    command = "python -m bench.load " + " ".join(argv if argv is not None else sys.argv[1:])

    ports = StackPorts(*(_free_port() for _ in range(7)))
    components = stack_components(args.bundle, ports)
    url = components[-1].url
    rows: list[Row] = []
    with Stack(components, args.work / "logs") as stack:
        stack.start(timeout=240)
        print(f"stack ready at {url}; {len(rates)} rates of {args.seconds:g}s", file=sys.stderr)

        def offer(rate: float, seconds: float, name: str) -> Row:
            users = max(1, math.ceil(rate / args.rate_per_user))
            run = LoadRun(host=url, out_dir=args.work, prefix=name, users=users,
                          spawn_rate=float(users), run_time_s=seconds, bundle=args.bundle,
                          rate_per_user=rate / users)
            result = run_locust(run)
            if result.summary is None:
                raise RuntimeError(f"locust failed (exit {result.returncode}):\n{result.output[-3000:]}")
            return Row(rate, users, LoadStats.from_dict(result.summary["total"]))

        if args.warmup > 0:
            offer(rates[0], args.warmup, "warmup")
        for rate in rates:
            row = offer(rate, args.seconds, f"rate-{rate:g}")
            rows.append(row)
            print(f"  {rate:g} req/s offered: p99 {row.stats.p99_ms:.0f} ms, "
                  f"{row.stats.failures} failures -> {'ok' if row.meets else 'missed'}", file=sys.stderr)
            if not row.meets:
                break
            time.sleep(1.0)  # let queues drain between rates
    best = max((r.offered for r in rows if r.meets), default=None)
    verdict = (f"Highest steady rate with p99 <= {P99_MS:g} ms and no failures: **{best:g} req/s**"
               if best is not None else f"No rate tried met p99 <= {P99_MS:g} ms with no failures.")
    text = table(rows)
    print(text)
    print(verdict)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# Local stack under steady load\n\n"
        f"Command: `{command}` (`make bench-load`), bundle `{args.bundle}`, {args.seconds:g} s per "
        f"rate, the v2 traffic mix of `loadtest/locustfile.py` (searches and recommendations, "
        f"anonymous and known shoppers, some filters), default settings of every component, "
        f"one machine ({_cpus()} cores) running locust and the three servers.\n\n"
        f"{text}\n\n{verdict}\n")
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
