"""Offered load beyond the ranker's capacity: what still gets ranked, what degrades and why.

For each configuration (:data:`bench.serving_load.CONFIGS`: ``today`` with the relevance cache off,
no admission limit and the search before the cascade, ``new`` with the defaults) it starts the
local stack on a bundle, then:

1. measures the ranker's **direct capacity**: the transformer's own ranker batches (the held-out
   queries with the titles of the K candidates the configuration's search ranks for each, K its
   ``SEARCH_RANK_CANDIDATES``, tokenised here) scored on
   Triton over v2 gRPC by 1, 2 and 4 closed-loop clients for ``--capacity-seconds`` each; the
   capacity is the best rate, in ranker calls (= searches) per second;
2. offers searches (no recommendations: every request needs the ranker) on the tail-heavy query
   stream at 1x, 2x and 4x that capacity for ``--seconds`` each with locust, each user at a
   constant rate, and prints per offered load: the searches ranked per second (and as a share of
   the capacity), the degraded share by reason, p50/p99 of all answers, failures, the relevance
   cache's hit ratio, pairs scored per search and how many requests Triton's dynamic batcher
   merged per execution.

Goals (issue 15): at 2x and 4x the capacity, ranked searches/s >= 80% of the capacity, every
request answered, p99 within the ranker budget + 50 ms. A benchmark, not a test: run it on a
quiet machine (``make bench-overload``).

    python -m bench.overload --bundle artifacts/demo --out bench/results/overload.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from bench.serving_load import CONFIGS, Measured, configured_stack, machine_line, offer
from bench.stack import candidate_batches, triton_load
from shopserve.artifacts import (
    CATALOG_COMPONENT,
    MAX_SEQUENCE_LENGTH,
    RANKER_COMPONENT,
    RANKER_TOKENIZER_DIR,
    read_manifest,
)
from shopserve.protocol import QUERY, TOP_N, USER_ID
from shopserve.settings import SearchSettings
from shopserve.text import PairTokenizer
from training.data.generator import Dataset, split_queries

HEADER = ("| config | offered | offered req/s | achieved req/s | ranked req/s | ranked / capacity "
          "| degraded (by reason) | p50 ms | p99 ms | failures | cache hits | pairs / search "
          "| Triton requests / execution |")


def shortlist(config: str) -> int:
    """Candidates ``config``'s search has the ranker score (the cascade's K)."""
    return int(CONFIGS[config].get("SEARCH_RANK_CANDIDATES", SearchSettings().rank_candidates))


def ranker_batches(bundle: Path, search_url: str, n: int, pairs: int) -> list[dict]:
    """The ranker batches of ``pairs`` candidates the transformer sends for ``n`` held-out
    queries."""
    dataset = Dataset.load(bundle / CATALOG_COMPONENT)
    ranker = read_manifest(bundle / RANKER_COMPONENT)
    build = ranker.params.get("build", {})
    _, test_ids = split_queries(dataset, build.get("eval_fraction", 0.2), build.get("seed", 0))
    rows = dataset.queries.query_id.searchsorted(test_ids)[:n]
    texts = dataset.queries.text[rows].tolist()
    bodies = [{"inputs": [
        {"name": QUERY, "shape": [1], "datatype": "BYTES", "data": [t]},
        {"name": USER_ID, "shape": [1], "datatype": "INT64", "data": [-1]}],
        "parameters": {TOP_N: 10}} for t in texts]
    tokenizer = PairTokenizer.from_dir(bundle / RANKER_COMPONENT / RANKER_TOKENIZER_DIR)
    _, batches = candidate_batches(search_url, bodies, texts, tokenizer,
                                   int(ranker.params[MAX_SEQUENCE_LENGTH]), pairs)
    return batches


def direct_capacity(address: str, batches: list[dict], seconds: float) -> tuple[float, str]:
    """Ranker calls per second on Triton directly: the best of 1, 2 and 4 closed-loop clients."""
    rates = {}
    for clients in (1, 2, 4):
        _, warm = asyncio.run(triton_load(address, batches[:4], clients))
        per_run = max(4, int(warm * seconds))
        chosen = [batches[i % len(batches)] for i in range(per_run)]
        _, rates[clients] = asyncio.run(triton_load(address, chosen, clients))
    best = max(rates.values())
    detail = ", ".join(f"{c} client{'s' if c > 1 else ''} {r:.1f}/s" for c, r in rates.items())
    return best, detail


def row(config: str, multiple: float, m: Measured, capacity: float) -> str:
    """One line of the table."""
    by_reason = m.search.ranker_degraded()
    searches = m.search.searches or 1.0
    degraded = ", ".join(f"{reason} {n / searches:.0%}" for reason, n in sorted(by_reason.items()))
    hits = m.search.cache_hit_ratio
    return (f"| {config} | {multiple:g}x | {m.offered:.1f} | {m.stats.rps:.1f} | "
            f"{m.ranked_per_s:.1f} | {m.ranked_per_s / capacity:.0%} | "
            f"{sum(by_reason.values()) / searches:.0%} ({degraded or 'none'}) | "
            f"{m.stats.p50_ms:.0f} | {m.stats.p99_ms:.0f} | {m.stats.failures} | "
            f"{'off' if hits != hits else f'{hits:.0%}'} | {m.search.pairs_per_search:.1f} | "
            f"{m.ranker.requests_per_execution:.2f} ({m.ranker.sizes()}) |")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and write it to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/demo"))
    parser.add_argument("--multiples", default="1,2,4",
                        help="offered load as multiples of the ranker's direct capacity")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each run")
    parser.add_argument("--capacity-seconds", type=float, default=10.0,
                        help="length of each direct capacity run")
    parser.add_argument("--configs", default="today,new", help="of: " + ", ".join(CONFIGS))
    parser.add_argument("--rate-per-user", type=float, default=2.0,
                        help="requests/s each locust user offers")
    parser.add_argument("--queries", type=int, default=60,
                        help="held-out queries whose ranker batches measure the capacity")
    parser.add_argument("--out", type=Path, default=Path("bench/results/overload.md"))
    parser.add_argument("--work", type=Path, default=Path("artifacts/bench/overload"))
    args = parser.parse_args(argv)
    multiples = [float(x) for x in args.multiples.split(",")]
    command = "python -m bench.overload " + " ".join(argv if argv is not None else sys.argv[1:])
    budget_ms = SearchSettings().ranker_timeout_ms
    lines = [machine_line(), f"{len(os.sched_getaffinity(0))} CPUs for locust and every server",
             "", HEADER, "| " + " | ".join("---" for _ in HEADER.split("|")[1:-1]) + " |"]
    notes: list[str] = []
    for config in args.configs.split(","):
        with configured_stack(args.bundle, config, args.work) as stack:
            url, ranker_http = stack.url, stack.ranker_http
            pairs = shortlist(config)
            batches = ranker_batches(args.bundle, url, args.queries, pairs)
            capacity, detail = direct_capacity(stack.ranker_grpc, batches, args.capacity_seconds)
            notes.append(f"{config}: ranker direct capacity {capacity:.1f} calls/s of "
                         f"{pairs} pairs ({detail})")
            print(notes[-1], file=sys.stderr)
            offer(url, ranker_http, args.bundle, args.work, f"{config}-warmup", capacity,
                  10.0, args.rate_per_user, ("--recommend-share", "0"))
            for multiple in multiples:
                rate = multiple * capacity
                m = offer(url, ranker_http, args.bundle, args.work, f"{config}-{multiple:g}x",
                          rate, args.seconds, args.rate_per_user, ("--recommend-share", "0"))
                lines.append(row(config, multiple, m, capacity))
                print(lines[-1], file=sys.stderr)
    lines += ["", *notes, "",
              f"Goals: at 2x and 4x, ranked req/s >= 80% of the capacity, 0 failures, p99 <= "
              f"{budget_ms + 50:.0f} ms (ranker budget {budget_ms:.0f} ms + 50 ms)."]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# Overload: offered load beyond the ranker's capacity\n\n"
        f"Command: `{command}` (`make bench-overload`), bundle `{args.bundle}`, searches only on "
        f"the tail-heavy stream (`loadtest/tail.py`), {args.seconds:g} s per offered load.\n\n"
        f"```\n{text}\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
