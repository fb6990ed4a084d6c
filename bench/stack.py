"""Transformer overhead and ranking throughput through the transformer vs Triton directly.

Starts the local stack on a bundle (``artifacts/demo`` by default) in each CPU layout, then, at 1
and 8 concurrent clients:

1. sends search requests (held-out queries, their issuing users, a page of ``--top-n`` results
   out of a ranked shortlist of 50) to ``search`` and splits each request's time, from the
   response's ``stage_ms``, into upstream calls (recall, rank), the transformer's own stages
   (normalise, lexical, filter, tokenise, blend) and the rest (KServe's gRPC or HTTP handling,
   encoding, waiting for the event loop);
   the transformer's overhead is end-to-end minus its upstream calls. Requests go over v2 gRPC
   (the client library of the Triton-direct row, so both sides pay the same client cost) and over
   v2 REST (httpx);
2. measures the v2 floor: a bare health call to the transformer's server after the same idle time
   a search waits for its upstream calls: what any v2 hop costs on this machine;
3. scores the very same candidate batches (the query with the titles of the 50 items the search
   returned) on Triton directly over v2 gRPC, tokenised in this process beforehand.

A second table times recommendations (no query) for anonymous shoppers, without and with
``recent_items`` (each shopper's latest interactions from the log, up to ``--recent`` of them): with
them the transformer asks the sequence model on Triton for the next items; the goal is p99 <= 50
ms, and within 2x of the request without recent items.

Requests per second through the transformer against Triton directly is the share of the ranker's
throughput that survives the transformer (KServe users report 42%: kserve issue 2770). Each cell is
the median of ``--repeats`` runs.

Layouts (:func:`layouts`): ``shared`` runs every process, the load generator included, on every
CPU, so on a small machine the transformer's CPU is taken from the CPU ranker's; ``pinned`` gives
the ranker CPUs of its own, as a cluster does (the ranker on a GPU node, search in its own pod).

Run: ``make bench-stack`` or ``python -m bench.stack [--bundle artifacts/demo] [--repeats 3]
[--layouts shared,pinned]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc.aio as triton_aio

from pipeline.local import StackPorts, stack_components
from pipeline.observe.harness import cpu_model
from pipeline.supervisor import Stack
from shopserve.artifacts import (
    CATALOG_COMPONENT,
    MANIFEST,
    MAX_SEQUENCE_LENGTH,
    RANKER_COMPONENT,
    RANKER_TOKENIZER_DIR,
    SEQUENCE_COMPONENT,
    read_manifest,
)
from shopserve.protocol import (
    ATTENTION_MASK,
    DEGRADED,
    INPUT_IDS,
    ITEM_IDS,
    QUERY,
    RANKER_MODEL,
    RECENT_ITEMS,
    SCORE,
    SEARCH_MODEL,
    STAGE_MS,
    TITLES,
    TOKEN_TYPE_IDS,
    TOP_N,
    USER_ID,
)
from shopserve.text import PairTokenizer, encode_pairs
from training.data.generator import Dataset, split_queries

RESULTS = Path(__file__).parent / "results" / "stack.md"
UPSTREAM = ("recall", "rank", "semantic")
#: The semantic path's stage: tokenising the query, ``query-encoder`` on Triton and the index
#: search (its own column too: the goal is p50 <= 5 ms).
SEMANTIC = "semantic"
OWN = ("normalise", "lexical", "filter", "tokenise", "blend")


@dataclass
class Sample:
    """One search request's timings in ms, and whether it was answered without the ranker."""

    total: float
    upstream: float
    own: float
    degraded: bool
    semantic: float = float("nan")


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
                                  sum(stages.get(s, 0.0) for s in OWN), bool(params[DEGRADED]),
                                  stages.get(SEMANTIC, float("nan"))))

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
                                  bool(params[DEGRADED].string_param),
                                  stages.get(SEMANTIC, float("nan"))))

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


@dataclass(frozen=True)
class Layout:
    """Where the processes run.

    Attributes:
        name: ``shared`` or ``pinned``.
        ranker_cpus: CPUs of Triton (None: all).
        other_cpus: CPUs of recall, search and the load generator (None: all).
        ranker_threads: ONNX Runtime intra-op threads of the ranker (None: its default).
    """

    name: str
    ranker_cpus: frozenset[int] | None = None
    other_cpus: frozenset[int] | None = None
    ranker_threads: int | None = None


def layouts(names: list[str]) -> list[Layout]:
    """``shared``: every process on every CPU, the ranker with its default threads (one machine).
    ``pinned``: the ranker alone on the upper half of the CPUs with one thread each, recall,
    search and the load generator on the lower half, as pods with their own CPUs would run."""
    cpus = sorted(os.sched_getaffinity(0))
    out = []
    for name in names:
        if name == "shared":
            out.append(Layout("shared"))
        elif name == "pinned":
            if len(cpus) < 2:
                print("pinned layout skipped: needs 2 CPUs", file=sys.stderr)
                continue
            half = len(cpus) // 2
            out.append(Layout("pinned", frozenset(cpus[half:]), frozenset(cpus[:half]),
                              len(cpus) - half))
        else:
            raise SystemExit(f"unknown layout {name!r}: shared or pinned")
    return out


async def round_trip_floor(protocol: str, url: str, address: str, idle_ms: float, n: int = 60
                           ) -> float:
    """p50 ms of a bare v2 health call to the transformer's server, each after ``idle_ms`` idle.

    The floor every v2 call to a KServe server pays on this machine (client, loopback, the
    server's gRPC or HTTP stack), measured after the same idle time a search spends waiting for
    its upstream calls, since waking idle processes is part of what a hop costs.
    """
    latencies = []
    if protocol == "grpc":
        client = triton_aio.InferenceServerClient(address)
        call = client.is_server_live
    else:
        http = httpx.AsyncClient(timeout=30)

        async def call() -> None:
            (await http.get(f"{url}/v2/health/live")).raise_for_status()
    for _ in range(n):
        await asyncio.sleep(idle_ms / 1000)
        start = time.perf_counter()
        await call()
        latencies.append((time.perf_counter() - start) * 1000)
    await (client.close() if protocol == "grpc" else http.aclose())
    return _pct(latencies, 50)


def candidate_batches(search_url: str, bodies: list[dict], texts: list[str],
                      tokenizer: PairTokenizer, max_length: int, shortlist: int
                      ) -> tuple[list[dict], list[dict[str, np.ndarray]]]:
    """The bodies that have candidates, and the ranker batch of each: the query with the titles
    of the ``shortlist`` items search ranks for it (asked for all of them once)."""
    batches, kept = [], []
    with httpx.Client(timeout=30) as client:
        for body, text in zip(bodies, texts, strict=True):
            whole = {**body, "parameters": {**body.get("parameters", {}), TOP_N: shortlist}}
            out = {o["name"]: o for o in client.post(
                f"{search_url}/v2/models/{SEARCH_MODEL}/infer", json=whole).json()["outputs"]}
            titles = [t for t, i in zip(out[TITLES]["data"], out[ITEM_IDS]["data"], strict=True)
                      if i >= 0]
            if titles:  # a query with no candidate has no ranker call to compare
                batches.append(encode_pairs(tokenizer, [text] * len(titles), titles, max_length))
                kept.append(body)
    return kept, batches


HEADER = ("| layout | protocol | clients | e2e p50 | e2e p99 | upstream p50 | semantic p50 | "
          "semantic p99 | own stages p50 | "
          "overhead p50 | overhead p99 | v2 floor p50 | above floor p50 | degraded | search req/s | "
          "Triton direct req/s | through / direct |")


RECOMMEND_HEADER = ("| layout | protocol | request | e2e p50 | e2e p99 | sequence p50 | "
                    "degraded | p99 with / without |")


def recent_bodies(dataset: Dataset, n: int, recent: int, top_n: int, seed: int = 0
                  ) -> tuple[list[dict], list[dict]]:
    """Recommendation bodies for anonymous shoppers, without and with ``recent_items``: the
    latest ``recent`` items (by time) of ``n`` shoppers of the log."""
    log = dataset.events.log
    rng = np.random.default_rng(seed)
    users = rng.choice(np.unique(log.user_ids), size=n, replace=True)
    order = np.argsort(log.timestamps, kind="stable")
    without, with_recent = [], []
    for user in users.tolist():
        items = log.item_ids[order][log.user_ids[order] == user][-recent:]
        base = [{"name": QUERY, "shape": [1], "datatype": "BYTES", "data": [""]},
                {"name": USER_ID, "shape": [1], "datatype": "INT64", "data": [-1]}]
        without.append({"inputs": base, "parameters": {TOP_N: top_n}})
        with_recent.append({"inputs": [*base, {"name": RECENT_ITEMS, "shape": [1, len(items)],
                                               "datatype": "INT64", "data": items.tolist()}],
                            "parameters": {TOP_N: top_n}})
    return without, with_recent


async def recommend_load(url: str, bodies: list[dict]) -> tuple[list[float], list[float], float]:
    """One client, REST: end-to-end ms and sequence-stage ms per request, and the degraded share."""
    totals, sequence, degraded = [], [], 0
    async with httpx.AsyncClient(timeout=30) as client:
        for body in bodies:
            start = time.perf_counter()
            response = await client.post(f"{url}/v2/models/{SEARCH_MODEL}/infer", json=body)
            totals.append((time.perf_counter() - start) * 1000)
            response.raise_for_status()
            params = response.json()["parameters"]
            sequence.append(json.loads(params[STAGE_MS]).get("sequence", 0.0))
            degraded += bool(params[DEGRADED])
    return totals, sequence, degraded / max(len(bodies), 1)


def recommend_rows(layout: Layout, search_url: str, bodies: tuple[list[dict], list[dict]],
                   repeats: int) -> list[str]:
    """The rows of the recommendation table for one layout (REST, one client)."""
    measured = {}
    for name, chosen in (("no recent items", bodies[0]), ("recent items", bodies[1])):
        runs = [asyncio.run(recommend_load(search_url, chosen)) for _ in range(repeats)]
        measured[name] = [statistics.median(_pct(r[0], q) for r in runs) for q in (50, 99)] + [
            statistics.median(_pct(r[1], 50) for r in runs),
            statistics.median(r[2] for r in runs)]
    ratio = measured["recent items"][1] / measured["no recent items"][1]
    return [f"| {layout.name:>6} | {'rest':>8} | {name:>15} | {m[0]:7.1f} | {m[1]:7.1f} | "
            f"{m[2]:12.1f} | {m[3]:8.0%} | "
            f"{(f'{ratio:.2f}x' if name == 'recent items' else '-'):>19} |"
            for name, m in measured.items()]


def measure_layout(layout: Layout, bundle: Path, bodies: list[dict], batches: list[dict] | None,
                   texts: list[str], tokenizer: PairTokenizer, max_length: int, repeats: int,
                   shortlist: int, recommend: tuple[list[dict], list[dict]] | None = None
                   ) -> tuple[list[str], list[dict], list[dict[str, np.ndarray]], list[str]]:
    """Start the stack in ``layout``; the table rows (gRPC and REST, 1 and 8 clients), and the
    recommendation rows when ``recommend`` bodies are given."""
    ports = StackPorts()
    # A budget no queued call should exceed: throughput is compared with every request ranked
    # (a degraded answer skips the ranker and would flatter the transformer).
    # Every search calls the ranker (the relevance cache would answer the repeats of the same
    # bodies, and the admission limit would skip calls): this measures the transformer around it.
    components = stack_components(bundle, ports, {"SEARCH_RANK_CANDIDATES": str(shortlist),
                                                  "SEARCH_RANKER_TIMEOUT_MS": "10000",
                                                  "SEARCH_RELEVANCE_CACHE_ENABLED": "false",
                                                  "SEARCH_RANKER_MAX_CONCURRENCY": "0"})
    for comp in components:
        comp.cpus = layout.ranker_cpus if comp.name == "ranker" else layout.other_cpus
    if layout.ranker_threads:
        ranker = next(c for c in components if c.name == "ranker")
        ranker.env = {**ranker.env, "RANKER_THREADS": str(layout.ranker_threads)}
    own_cpus = os.sched_getaffinity(0)
    rows = []
    with Stack(components, bundle.parent / "logs") as stack:
        stack.start()
        search_url = components[-1].url
        if batches is None:
            bodies, batches = candidate_batches(search_url, bodies, texts, tokenizer, max_length,
                                                shortlist)
        if layout.other_cpus is not None:
            os.sched_setaffinity(0, layout.other_cpus)  # the load generator (threads it starts too)
        try:
            for protocol, concurrency in (("grpc", 1), ("grpc", 8), ("rest", 1), ("rest", 8)):
                runs = []
                for _ in range(repeats):
                    if protocol == "grpc":
                        samples, search_rps = asyncio.run(search_load_grpc(
                            f"127.0.0.1:{ports.search_grpc}", bodies, concurrency))
                    else:
                        samples, search_rps = asyncio.run(
                            search_load(search_url, bodies, concurrency))
                    _, triton_rps = asyncio.run(
                        triton_load(f"127.0.0.1:{ports.ranker_grpc}", batches, concurrency))
                    upstream = _pct([s.upstream for s in samples], 50)
                    floor = asyncio.run(round_trip_floor(
                        protocol, search_url, f"127.0.0.1:{ports.search_grpc}", upstream))
                    totals = [s.total for s in samples]
                    overhead = [s.total - s.upstream for s in samples]
                    semantic = [s.semantic for s in samples if not np.isnan(s.semantic)]
                    runs.append((_pct(totals, 50), _pct(totals, 99), upstream,
                                 _pct(semantic, 50), _pct(semantic, 99),
                                 _pct([s.own for s in samples], 50), _pct(overhead, 50),
                                 _pct(overhead, 99), floor, _pct(overhead, 50) - floor,
                                 sum(s.degraded for s in samples) / len(samples),
                                 search_rps, triton_rps))
                med = [statistics.median(r[i] for r in runs) for i in range(len(runs[0]))]
                rows.append(
                    f"| {layout.name:>6} | {protocol:>8} | {concurrency:>7} | {med[0]:7.1f} | "
                    f"{med[1]:7.1f} | {med[2]:12.1f} | {med[3]:12.1f} | {med[4]:12.1f} | "
                    f"{med[5]:14.1f} | {med[6]:12.1f} | "
                    f"{med[7]:12.1f} | {med[8]:12.1f} | {med[9]:15.1f} | {med[10]:8.0%} | "
                    f"{med[11]:12.1f} | {med[12]:19.1f} | {med[11] / med[12]:16.0%} |")
            recommended = (recommend_rows(layout, search_url, recommend, repeats)
                           if recommend is not None else [])
        finally:
            os.sched_setaffinity(0, own_cpus)
    return rows, bodies, batches, recommended


def main(argv: list[str] | None = None) -> None:
    """Print the table and write bench/results/stack.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/demo"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=120, help="requests per run and level")
    parser.add_argument("--top-n", type=int, default=10,
                        help="results per search request (the transformer's default page)")
    parser.add_argument("--layouts", default="shared,pinned",
                        help="comma-separated: shared, pinned (see bench.stack.layouts)")
    parser.add_argument("--recent", type=int, default=10,
                        help="recent items per recommendation request (the shopper's latest)")
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
        "parameters": {TOP_N: args.top_n}} for t, u in zip(texts, users, strict=True)]
    tokenizer = PairTokenizer.from_dir(bundle / RANKER_COMPONENT / RANKER_TOKENIZER_DIR)
    max_length = int(ranker.params[MAX_SEQUENCE_LENGTH])

    has_sequence = (bundle / SEQUENCE_COMPONENT / MANIFEST).is_file()
    recommend = (recent_bodies(dataset, args.requests, args.recent, args.top_n)
                 if has_sequence else None)
    table: list[str] = []
    recommend_table: list[str] = []
    batches = None
    chosen = layouts(args.layouts.split(","))
    for layout in chosen:
        layout_rows, bodies, batches, recommended = measure_layout(
            layout, bundle, bodies, batches, texts, tokenizer, max_length, args.repeats, shortlist,
            recommend)
        table += layout_rows
        recommend_table += recommended
    assert batches is not None
    pairs = statistics.mean(b[INPUT_IDS].shape[0] for b in batches)
    cpus = len(os.sched_getaffinity(0))
    lines = [f"CPU: {cpu_model()}", "",
             f"{len(bodies)} held-out queries per run, {args.top_n} results each out of "
             f"{pairs:.0f} (query, title) pairs per ranker call, median of {args.repeats} runs; "
             f"times in ms; {cpus} CPUs", "",
             *(f"- {lay.name}: " + (f"ranker on CPUs {sorted(lay.ranker_cpus or ())} with "
                                    f"{lay.ranker_threads} thread(s), recall, search and the load "
                                    f"generator on CPUs {sorted(lay.other_cpus or ())}"
                                    if lay.ranker_cpus else "every process on every CPU")
               for lay in chosen), "", HEADER,
             "|" + "|".join("-" * len(c) for c in HEADER.split("|")[1:-1]) + "|", *table, "",
             "upstream = recall + rank + semantic stages; semantic = tokenise the query, "
             "query-encoder on Triton, index search (nan: the bundle has no semantic component)",
             "overhead = e2e - upstream; v2 floor = a bare v2 health call to the transformer after "
             "the same idle time; above floor = overhead - v2 floor",
             "goals: overhead p50 <= 2 ms; through / direct >= 90% (kserve issue 2770: 42%); "
             "semantic p50 <= 5 ms"]
    if recommend_table:
        lines += ["", f"Recommendations for anonymous shoppers, {args.requests} per run, up to "
                  f"{args.recent} recent items each (the sequence model on Triton), REST, one "
                  f"client, median of {args.repeats} runs; times in ms", "", RECOMMEND_HEADER,
                  "|" + "|".join("-" * len(c) for c in RECOMMEND_HEADER.split("|")[1:-1]) + "|",
                  *recommend_table, "",
                  "goals: with recent items p99 <= 50 ms and within 2x of the request without"]
    else:
        lines += ["", "(the bundle has no sequence component: no recommendation rows)"]
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(f"# Search stack: transformer overhead and throughput\n\nCommand: "
                       f"`python -m bench.stack --repeats {args.repeats} --layouts {args.layouts}`"
                       f" (relevance cache off and no ranker admission limit: every search calls "
                       f"the ranker)\n\n{text}\n")


if __name__ == "__main__":
    main()
