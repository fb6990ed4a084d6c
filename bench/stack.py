"""Transformer overhead and ranking throughput through the transformer vs Triton directly.

Starts the local stack on a bundle (``artifacts/demo`` by default), then, at 1 and 8 concurrent
clients:

1. sends search requests (held-out queries, their issuing users, ``top_n`` = the ranker shortlist)
   to ``search`` over v2 REST and splits each request's time, from the response's ``stage_ms``,
   into upstream calls (recall, rank), the transformer's own stages (normalise, lexical, filter,
   tokenise, blend) and the rest (KServe's HTTP handling, encoding, waiting for the event loop);
   the transformer's overhead is end-to-end minus its upstream calls;
   Requests go over v2 gRPC (the client library of the Triton-direct row, so both sides pay the
   same client cost) and over v2 REST (httpx);
2. scores the very same candidate batches (the query with the titles of the 50 items the search
   returned) on Triton directly over v2 gRPC, tokenised in this process beforehand.

Requests per second through the transformer against Triton directly is the share of the ranker's
throughput that survives the transformer (KServe users report 42%: kserve issue 2770). Each cell is
the median of ``--repeats`` runs. The load generator shares the machine's 2 cores with the servers.

Run: ``make bench-stack`` or ``python -m bench.stack [--bundle artifacts/demo] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc.aio as triton_aio
from transformers import AutoTokenizer

from pipeline.cli import StackPorts, stack_components
from pipeline.stack import Stack
from shopserve.artifacts import (
    CATALOG_COMPONENT,
    MAX_SEQUENCE_LENGTH,
    RANKER_COMPONENT,
    RANKER_TOKENIZER_DIR,
    read_manifest,
)
from shopserve.data.generator import Dataset, split_queries
from shopserve.protocol import (
    ATTENTION_MASK,
    DEGRADED,
    INPUT_IDS,
    ITEM_IDS,
    QUERY,
    RANKER_MODEL,
    SCORE,
    SEARCH_MODEL,
    STAGE_MS,
    TITLES,
    TOKEN_TYPE_IDS,
    TOP_N,
    USER_ID,
)
from shopserve.text import encode_pairs

RESULTS = Path(__file__).parent / "results" / "stack.md"
UPSTREAM = ("recall", "rank")
OWN = ("normalise", "lexical", "filter", "tokenise", "blend")


@dataclass
class Sample:
    """One search request's timings in ms, and whether it was answered without the ranker."""

    total: float
    upstream: float
    own: float
    degraded: bool


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def search_load(url: str, bodies: list[dict], concurrency: int) -> tuple[list[Sample], float]:
    """Send every body once with ``concurrency`` clients; samples and requests per second."""
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    samples: list[Sample] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            start = time.perf_counter()
            response = await client.post(f"{url}/v2/models/{SEARCH_MODEL}/infer", json=body)
            total = (time.perf_counter() - start) * 1000
            response.raise_for_status()
            params = response.json()["parameters"]
            stages = json.loads(params[STAGE_MS])
            samples.append(Sample(total, sum(stages.get(s, 0.0) for s in UPSTREAM),
                                  sum(stages.get(s, 0.0) for s in OWN), bool(params[DEGRADED])))

    async with httpx.AsyncClient(timeout=30) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return samples, len(bodies) / seconds


async def search_load_grpc(address: str, bodies: list[dict], concurrency: int
                           ) -> tuple[list[Sample], float]:
    """As :func:`search_load`, over v2 gRPC with the client the Triton-direct row uses."""
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    samples: list[Sample] = []
    client = triton_aio.InferenceServerClient(address)

    async def worker() -> None:
        while not queue.empty():
            body = queue.get_nowait()
            inputs = {i["name"]: i for i in body["inputs"]}
            query = triton_aio.InferInput(QUERY, [1], "BYTES")
            query.set_data_from_numpy(np.array([inputs[QUERY]["data"][0].encode()], dtype=object))
            user = triton_aio.InferInput(USER_ID, [1], "INT64")
            user.set_data_from_numpy(np.array(inputs[USER_ID]["data"], dtype=np.int64))
            start = time.perf_counter()
            result = await client.infer(SEARCH_MODEL, [query, user], parameters=body["parameters"])
            total = (time.perf_counter() - start) * 1000
            params = result.get_response().parameters
            stages = json.loads(params[STAGE_MS].string_param)
            samples.append(Sample(total, sum(stages.get(s, 0.0) for s in UPSTREAM),
                                  sum(stages.get(s, 0.0) for s in OWN),
                                  bool(params[DEGRADED].string_param)))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    await client.close()
    return samples, len(bodies) / seconds


async def triton_load(address: str, batches: list[dict[str, np.ndarray]], concurrency: int
                      ) -> tuple[list[float], float]:
    """Score every batch once on Triton over gRPC with ``concurrency`` clients."""
    queue: asyncio.Queue[dict[str, np.ndarray]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)
    latencies: list[float] = []
    client = triton_aio.InferenceServerClient(address)

    async def worker() -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            inputs = []
            for name in (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS):
                tensor = triton_aio.InferInput(name, list(batch[name].shape), "INT64")
                tensor.set_data_from_numpy(batch[name])
                inputs.append(tensor)
            start = time.perf_counter()
            result = await client.infer(RANKER_MODEL, inputs)
            latencies.append((time.perf_counter() - start) * 1000)
            assert result.as_numpy(SCORE).shape[0] == batch[INPUT_IDS].shape[0]

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    await client.close()
    return latencies, len(batches) / seconds


def main(argv: list[str] | None = None) -> None:
    """Print the table and write bench/results/stack.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/demo"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=120, help="requests per run and level")
    args = parser.parse_args(argv)

    bundle = args.bundle
    dataset = Dataset.load(bundle / CATALOG_COMPONENT)
    ranker = read_manifest(bundle / RANKER_COMPONENT)
    build = ranker.params.get("build", {})
    _, test_ids = split_queries(dataset, build.get("eval_fraction", 0.2), build.get("seed", 0))
    rows = dataset.queries.query_id.searchsorted(test_ids)[: args.requests]
    texts = dataset.queries.text[rows].tolist()
    users = dataset.queries.user_id[rows].tolist()
    shortlist = 50
    bodies = [{"inputs": [
        {"name": QUERY, "shape": [1], "datatype": "BYTES", "data": [t]},
        {"name": USER_ID, "shape": [1], "datatype": "INT64", "data": [u]}],
        "parameters": {TOP_N: shortlist}} for t, u in zip(texts, users, strict=True)]
    tokenizer = AutoTokenizer.from_pretrained(bundle / RANKER_COMPONENT / RANKER_TOKENIZER_DIR)
    max_length = int(ranker.params[MAX_SEQUENCE_LENGTH])

    ports = StackPorts()
    # A budget no queued call should exceed: throughput is compared with every request ranked
    # (a degraded answer skips the ranker and would flatter the transformer).
    components = stack_components(bundle, ports, {"SEARCH_RANK_CANDIDATES": str(shortlist),
                                                  "SEARCH_RANKER_TIMEOUT_MS": "10000"})
    lines = []
    with Stack(components, bundle.parent / "logs") as stack:
        stack.start()
        search_url = components[-1].url
        # The same candidate batches: each query with the titles of the items search returned.
        first = httpx.Client(timeout=30)
        batches, kept = [], []
        for body, text in zip(bodies, texts, strict=True):
            out = {o["name"]: o for o in first.post(
                f"{search_url}/v2/models/{SEARCH_MODEL}/infer", json=body).json()["outputs"]}
            titles = [t for t, i in zip(out[TITLES]["data"], out[ITEM_IDS]["data"], strict=True)
                      if i >= 0]
            if titles:  # a query with no candidate has no ranker call to compare
                batches.append(encode_pairs(tokenizer, [text] * len(titles), titles, max_length))
                kept.append(body)
        first.close()
        bodies = kept
        pairs = statistics.mean(b[INPUT_IDS].shape[0] for b in batches)
        header = ("| protocol | clients | e2e p50 | e2e p99 | upstream p50 | own stages p50 | overhead p50 | "
                  "overhead p99 | degraded | search req/s | Triton direct req/s | through / direct |")
        lines += [f"{len(bodies)} held-out queries per run, {pairs:.0f} (query, title) pairs per "
                  f"ranker call, median of {args.repeats} runs; times in ms", "", header,
                  "|" + "|".join("-" * (len(c) + 0) for c in header.split("|")[1:-1]) + "|"]
        for protocol, concurrency in (("grpc", 1), ("grpc", 8), ("rest", 1), ("rest", 8)):
            runs = []
            for _ in range(args.repeats):
                if protocol == "grpc":
                    samples, search_rps = asyncio.run(search_load_grpc(
                        f"127.0.0.1:{ports.search_grpc}", bodies, concurrency))
                else:
                    samples, search_rps = asyncio.run(search_load(search_url, bodies, concurrency))
                _, triton_rps = asyncio.run(
                    triton_load(f"127.0.0.1:{ports.ranker_grpc}", batches, concurrency))
                totals = [s.total for s in samples]
                overhead = [s.total - s.upstream for s in samples]
                runs.append((_pct(totals, 50), _pct(totals, 99),
                             _pct([s.upstream for s in samples], 50),
                             _pct([s.own for s in samples], 50), _pct(overhead, 50),
                             _pct(overhead, 99), search_rps, triton_rps,
                             sum(s.degraded for s in samples) / len(samples)))
            med = [statistics.median(r[i] for r in runs) for i in range(9)]
            lines.append(
                f"| {protocol:>8} | {concurrency:>7} | {med[0]:7.1f} | {med[1]:7.1f} | {med[2]:12.1f} | "
                f"{med[3]:14.1f} | {med[4]:12.1f} | {med[5]:12.1f} | {med[8]:8.0%} | "
                f"{med[6]:12.1f} | {med[7]:19.1f} | {med[6] / med[7]:15.0%} |")
    lines += ["", "goals: overhead p50 <= 2 ms; through / direct >= 90% (kserve issue 2770: 42%)"]
    table = "\n".join(lines)
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(f"# Search stack: transformer overhead and throughput\n\nCommand: "
                       f"`python -m bench.stack --repeats {args.repeats}`\n\n{table}\n")


if __name__ == "__main__":
    main()
