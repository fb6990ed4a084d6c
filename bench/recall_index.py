"""Benchmark of the MF recall top-k indexes: exact brute force against FAISS HNSW and IVF.

Run ``python -m bench.recall_index`` (full: 100k and 1M items; about 6 minutes once the FAISS
indexes are cached, about 16 minutes for the first run, which builds them, on 2 busy cores) or
``python -m bench.recall_index --quick`` (100k only, few repetitions, under a minute). Prints plain
aligned tables and writes them to ``bench/results/recall_index.md`` (``recall_index-quick.md`` for
``--quick``). A benchmark, not a test: nothing here asserts; goals are printed beside the numbers.

What is measured, per catalog size and vector family:

* top-100 latency of one query at a time (batch 1, one request thread, many repetitions): p50, p99;
* the same under 8 concurrent request threads issuing batch-1 queries: per-request p50, p99, and
  the total queries per second;
* recall@100 of each approximate setting against the exact index (1000 queries in full mode);
* build time (or the time of the original build when the index comes from the cache);
* the memory-bandwidth floor: the least time to read the ``n * d * 4`` bytes of the item matrix once
  (the fastest of a few pure-read kernels, repeated), and the exact index's p50 over that floor.
  At 100k items the matrix fits in the last-level cache, so that floor is cache bandwidth.

Under 8 concurrent request threads on 2 cores, the per-request p99 of fast (sub-millisecond)
searches is dominated by scheduling and GIL hand-offs (CPython's 5 ms switch interval), not by the
index; compare the QPS column there.

Latency figures are medians over repeated runs (the machine is shared and noisy). FAISS searches
run with one OpenMP thread per request (the serving default of ``IndexConfig.threads``); the exact
index is shown with its batch-1 query sharded over every core and over one, beside a reference row
that scores with numpy's multi-threaded BLAS gemv (what the exact index avoids; the BLAS library,
its kernel and thread count are printed in the header).

Vector families (64 dims):

* ``clustered``: like MF factors: a few hundred Gaussian clusters of unequal size, cluster-level and
  item-level norm variation, item norms correlated with a Zipf popularity; queries (users) lie near
  cluster centres, picked by cluster size.
* ``gaussian``: i.i.d. standard normal items and queries: the hard case for every ANN index.

Built FAISS indexes are cached under ``artifacts/bench/recall_index/`` keyed by the family, size,
generator version and build parameters, so reruns skip the builds (``--no-cache`` rebuilds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import faiss
import numpy as np
from threadpoolctl import threadpool_info

from predictors.recall.index import (
    ExactIndex,
    FaissIndex,
    IndexConfig,
    build_index,
    load_index,
    recall_at_k,
    topk_rows,
)

DIM = 64
TOP_K = 100
CONCURRENCY = 8
GENERATOR_VERSION = 1
ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
CACHE = ROOT / "artifacts" / "bench" / "recall_index"

GOAL_APPROX_P99_MS = 3.0
GOAL_APPROX_RECALL = 0.95
GOAL_EXACT_OVER_FLOOR = 1.3

SearchFn = Callable[[np.ndarray], object]


# --------------------------------------------------------------------------- data


def clustered_vectors(n: int, d: int, seed: int, n_clusters: int = 300
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MF-like item factors: clustered directions, norms correlated with popularity.

    Args:
        n: Number of items.
        d: Dimension.
        seed: Random seed.
        n_clusters: Number of Gaussian clusters.

    Returns:
        ``(items float32 [n, d], centres [C, d], cluster weights [C])``.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32) / np.sqrt(d)
    weights = rng.dirichlet(np.full(n_clusters, 2.0))
    assign = rng.choice(n_clusters, n, p=weights)
    cluster_scale = rng.lognormal(0.0, 0.25, n_clusters)
    popularity = 1.0 / (rng.permutation(n) + 10.0) ** 0.8  # Zipf over a random item order
    # Popular items get larger factors (as ALS learns them): the top is ~3x the median norm.
    scale = (cluster_scale[assign] * (popularity / np.median(popularity)) ** 0.15
             * rng.lognormal(0.0, 0.15, n))
    items = centres[assign] + 0.5 * rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d)
    items *= scale[:, None].astype(np.float32)
    return np.ascontiguousarray(items, dtype=np.float32), centres, weights


def clustered_queries(centres: np.ndarray, weights: np.ndarray, m: int, seed: int) -> np.ndarray:
    """User factors near cluster centres (cluster picked by its size), with varying norms."""
    rng = np.random.default_rng(seed)
    d = centres.shape[1]
    pick = rng.choice(len(centres), m, p=weights)
    q = centres[pick] + 0.3 * rng.standard_normal((m, d)).astype(np.float32) / np.sqrt(d)
    return np.ascontiguousarray(q * rng.lognormal(0.0, 0.2, m)[:, None], dtype=np.float32)


def family_data(family: str, n: int, n_queries: int, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """Items ``[n, DIM]`` and queries ``[n_queries, DIM]`` of one family, seeded."""
    if family == "clustered":
        items, centres, weights = clustered_vectors(n, DIM, seed)
        return items, clustered_queries(centres, weights, n_queries, seed + 1)
    if family == "gaussian":
        rng = np.random.default_rng(seed)
        items = rng.standard_normal((n, DIM), dtype=np.float32)
        return items, rng.standard_normal((n_queries, DIM), dtype=np.float32)
    raise ValueError(f"unknown family {family!r}")


# --------------------------------------------------------------------------- settings grid


@dataclass(frozen=True)
class Setting:
    """One FAISS build and the search-time values tried on it.

    Attributes:
        build: Build config (its ``ef_search``/``nprobe`` are overridden per row).
        search_values: ``ef_search`` (HNSW) or ``nprobe`` (IVF) values, one table row each.
    """

    build: IndexConfig
    search_values: tuple[int, ...]


def settings_for(family: str, n: int, quick: bool) -> list[Setting]:
    """The FAISS grid for a family and size, chosen to keep the full run within minutes.

    HNSW builds cost minutes at 1M on 2 cores (Gaussian vectors several times more than clustered
    ones; the L2-reduced M=32 efC=200 build took ~8 min at 1M clustered, so it runs at 100k only);
    IVF builds take seconds to a minute and get a wider nprobe sweep.
    """
    small = n <= 200_000
    nlist = 1024 if small else 4096
    ivf = IndexConfig("ivf", nlist=nlist)
    hnsw16 = IndexConfig("hnsw", m=16, ef_construction=64)
    hnsw32 = IndexConfig("hnsw", m=32, ef_construction=80)
    if quick:
        return [Setting(hnsw32, (128, 512)), Setting(ivf, (16, 64))]
    if family == "clustered":
        grid = [Setting(hnsw16, (128, 512)), Setting(hnsw32, (128, 512, 1024))]
        if small:
            grid.append(Setting(IndexConfig("hnsw", m=32, ef_construction=200, mips_to_l2=True),
                                (256, 512, 1024)))
        return grid + [
            Setting(ivf, (16, 32, 64, 128)),
            Setting(replace(ivf, mips_to_l2=True), (16, 32, 64)),
        ]
    if small:
        return [Setting(hnsw16, (256, 1024)), Setting(hnsw32, (256, 1024)),
                Setting(ivf, (32, 128, 256))]
    return [Setting(hnsw16, (256, 1024)), Setting(ivf, (64, 256, 512))]


def describe(config: IndexConfig) -> str:
    """Row label of a search setting."""
    if config.kind == "exact":
        return "exact numpy/BLAS"
    space = "L2-reduced" if config.mips_to_l2 else "IP"
    if config.kind == "hnsw":
        return f"hnsw {space} M={config.m} efC={config.ef_construction} ef={config.ef_search}"
    return f"ivf {space} nlist={config.nlist} nprobe={config.nprobe}"


# --------------------------------------------------------------------------- timing


def sequential_latencies(search: SearchFn, queries: np.ndarray, n_requests: int) -> np.ndarray:
    """Seconds per batch-1 request, one request at a time."""
    for i in range(min(5, len(queries))):  # warm caches and thread pools
        search(queries[i: i + 1])
    out = np.empty(n_requests)
    for i in range(n_requests):
        q = queries[i % len(queries): i % len(queries) + 1]
        start = time.perf_counter()
        search(q)
        out[i] = time.perf_counter() - start
    return out


def concurrent_latencies(search: SearchFn, queries: np.ndarray, threads: int,
                         per_thread: int) -> tuple[np.ndarray, float]:
    """Per-request seconds and total QPS with ``threads`` request threads, batch 1 each."""
    barrier = threading.Barrier(threads + 1)
    lat = np.empty((threads, per_thread))

    def worker(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            j = (t * per_thread + i) % len(queries)
            start = time.perf_counter()
            search(queries[j: j + 1])
            lat[t, i] = time.perf_counter() - start

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    barrier.wait()
    start = time.perf_counter()
    for th in pool:
        th.join()
    wall = time.perf_counter() - start
    return lat.reshape(-1), threads * per_thread / wall


@dataclass
class Timing:
    """Medians over runs of the latency figures (milliseconds, QPS)."""

    p50: float
    p99: float
    c_p50: float
    c_p99: float
    c_qps: float


def measure(search: SearchFn, queries: np.ndarray, runs: int, n_requests: int,
            per_thread: int) -> Timing:
    """Sequential and concurrent latency, each a median over ``runs`` repeated runs."""
    rows = []
    for _ in range(runs):
        seq = sequential_latencies(search, queries, n_requests) * 1e3
        conc, qps = concurrent_latencies(search, queries, CONCURRENCY, per_thread)
        conc *= 1e3
        rows.append((np.percentile(seq, 50), np.percentile(seq, 99), np.percentile(conc, 50),
                     np.percentile(conc, 99), qps))
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    return Timing(*med)


def memory_floor(items: np.ndarray, reps: int) -> tuple[float, str]:
    """Least time (ms, median over reps) to read the whole item matrix once, and the kernel's name.

    Pure-read kernels with no arithmetic to speak of, on all cores the BLAS may use: an int32
    maximum over the raw bytes (vectorised, reduction only) split over 1 and 2 threads. The
    fastest kernel's median is the floor: an honest lower bound for anything that reads every item.
    """
    flat = items.reshape(-1).view(np.int32)
    cores = max(1, len(os.sched_getaffinity(0)))

    def read_split(parts: int) -> Callable[[], object]:
        chunks = np.array_split(flat, parts)
        pool = ThreadPoolExecutor(parts)
        return lambda: list(pool.map(np.max, chunks))

    kernels: dict[str, Callable[[], object]] = {"int32 max, 1 thread": flat.max}
    for parts in sorted({2, cores}):
        kernels[f"int32 max, {parts} threads"] = read_split(parts)
    best = (float("inf"), "")
    for name, fn in kernels.items():
        fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        best = min(best, (statistics.median(times) * 1e3, name))
    return best


# --------------------------------------------------------------------------- indexes


def cached_build(items: np.ndarray, config: IndexConfig, key: str, use_cache: bool
                 ) -> tuple[FaissIndex, float, bool]:
    """Build (or load from the cache) a FAISS index; returns it, its build seconds, cache hit."""
    folder = CACHE / key / config.build_key()
    meta_path = folder / "bench_build.json"
    if use_cache and meta_path.is_file():
        try:
            index = load_index(folder, config)
            if isinstance(index, FaissIndex) and index.size == len(items):
                return index, float(json.loads(meta_path.read_text())["build_s"]), True
        except (OSError, RuntimeError, ValueError, KeyError):
            pass  # a stale or partial cache entry: rebuild it
    start = time.perf_counter()
    index = build_index(items, config)
    build_s = time.perf_counter() - start
    assert isinstance(index, FaissIndex)
    if use_cache:
        index.save(folder)
        meta_path.write_text(json.dumps({"build_s": build_s}) + "\n")
    return index, build_s, False


@dataclass
class Row:
    """One table row."""

    label: str
    build: str
    timing: Timing
    recall: float


def format_table(title: str, rows: Sequence[Row]) -> str:
    """Plain aligned text table."""
    head = (f"{'index':<46} {'build s':>10} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'c8 p50':>8} {'c8 p99':>8} {'c8 QPS':>8} {'recall@100':>10}")
    lines = [title, head, "-" * len(head)]
    for r in rows:
        t = r.timing
        lines.append(f"{r.label:<46} {r.build:>10} {t.p50:>8.3f} {t.p99:>8.3f} {t.c_p50:>8.3f} "
                     f"{t.c_p99:>8.3f} {t.c_qps:>8.0f} {r.recall:>10.4f}")
    return "\n".join(lines)


@dataclass
class Budget:
    """How much to repeat, by mode."""

    sizes: tuple[int, ...]
    runs: int
    exact_requests: int
    approx_requests: int
    exact_per_thread: int
    approx_per_thread: int
    recall_queries: int
    floor_reps: int


def budget(quick: bool) -> Budget:
    """Repetition counts: quick is a smoke run, full keeps the whole run within ~10 minutes."""
    if quick:
        return Budget((100_000,), runs=2, exact_requests=60, approx_requests=200,
                      exact_per_thread=5, approx_per_thread=25, recall_queries=200, floor_reps=9)
    return Budget((100_000, 1_000_000), runs=3, exact_requests=200, approx_requests=1000,
                  exact_per_thread=15, approx_per_thread=100, recall_queries=1000,
                  floor_reps=21)


@dataclass
class Case:
    """The figures of one (family, size) that the goals are checked against."""

    family: str
    n: int
    approx: list[Row]
    exact_ratio: float


def bench_case(family: str, n: int, b: Budget, quick: bool, use_cache: bool,
               emit: Callable[[str], None]) -> Case:
    """All rows of one (family, size): prints the table and returns the figures for the goals."""
    n_queries = max(b.recall_queries, 1000)
    items, queries = family_data(family, n, n_queries)
    key = f"{family}-n{n}-d{DIM}-g{GENERATOR_VERSION}"
    exact = ExactIndex(items)  # threads: every core
    cores = max(1, len(os.sched_getaffinity(0)))
    recall_q = queries[: b.recall_queries]
    truth, _ = exact.search(recall_q, TOP_K)

    floor_ms, floor_kernel = memory_floor(items, b.floor_reps)
    rows: list[Row] = []
    for threads in sorted({cores, 1}, reverse=True):
        index = exact if threads == exact.threads else ExactIndex(items, threads)
        rows.append(Row(f"exact, {index.threads} thread{'s' if index.threads > 1 else ''}",
                        "0.0", measure(lambda q, ix=index: ix.search(q, TOP_K), queries, b.runs,
                                       b.exact_requests, b.exact_per_thread), 1.0))

    def blas_gemv(q: np.ndarray) -> object:
        return topk_rows(np.dot(items, q[0])[None, :], TOP_K)

    # Reference only: numpy's multi-threaded BLAS gemv, which the exact index does not use.
    rows.append(Row(f"(reference) numpy BLAS gemv + top-k, {blas_threads()} thr", "0.0",
                    measure(blas_gemv, queries, b.runs, b.exact_requests, b.exact_per_thread),
                    1.0))
    approx: list[Row] = []
    for setting in settings_for(family, n, quick):
        built, build_s, hit = cached_build(items, setting.build, key, use_cache)
        for value in setting.search_values:
            cfg = replace(built.config, ef_search=value, nprobe=value, threads=1)
            index = FaissIndex(built.index, cfg, built.dim, built.mips_norm_sq)
            batch = FaissIndex(built.index, replace(cfg, threads=cores), built.dim,
                               built.mips_norm_sq)
            found, _ = batch.search(recall_q, TOP_K)
            row = Row(describe(cfg), f"{build_s:.1f}{'*' if hit else ''}",
                      measure(lambda q, ix=index: ix.search(q, TOP_K), queries, b.runs,
                              b.approx_requests, b.approx_per_thread),
                      recall_at_k(found, truth))
            rows.append(row)
            approx.append(row)
        del built
    mb = n * DIM * 4 / 1e6
    l3 = l3_cache_mb()
    title = (f"## {family}, n={n:,} items, d={DIM}, top-{TOP_K} "
             f"(item matrix {mb:.0f} MB{', fits in L3: floor is L3 bandwidth' if mb < l3 else ''})")
    table = format_table(title, rows)
    exact_ratio = min(r.timing.p50 for r in rows if r.label.startswith("exact")) / floor_ms
    table += (f"\nmemory-read floor: {floor_ms:.3f} ms ({mb / floor_ms:.1f} GB/s, {floor_kernel});"
              f" best exact p50 / floor = {exact_ratio:.2f}x (goal <= {GOAL_EXACT_OVER_FLOOR}x: "
              f"{'met' if exact_ratio <= GOAL_EXACT_OVER_FLOOR else 'MISSED'})")
    table += "\n(* build time of the cached index's original build)\n"
    emit(table)
    return Case(family, n, approx, exact_ratio)


def l3_cache_mb() -> float:
    """Size of the last-level cache in MB (sysfs), 0 when unknown."""
    path = Path("/sys/devices/system/cpu/cpu0/cache/index3/size")
    try:
        text = path.read_text().strip()
    except OSError:
        return 0.0
    factor = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)  # sysfs: KiB
    digits = text.rstrip("KMG")
    return float(digits) * factor / 1e6 if digits.isdigit() else 0.0


def blas_threads() -> int:
    """Threads of numpy's BLAS (threadpoolctl), 0 if unknown."""
    for lib in threadpool_info():
        if lib.get("user_api") == "blas" and "numpy" in str(lib.get("filepath")):
            return int(lib.get("num_threads") or 0)
    return 0


def environment() -> str:
    """Header: machine, BLAS kernel threadpoolctl reports, FAISS build, thread settings."""
    lines = [f"python {platform.python_version()}, numpy {np.__version__}, "
             f"faiss {faiss.__version__} ({faiss.get_compile_options().strip()}), "
             f"{len(os.sched_getaffinity(0))} cores ({platform.processor() or platform.machine()})"]
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            path = str(lib.get("filepath"))
            owner = "numpy" if "numpy" in path else "faiss" if "faiss" in path else "other"
            lines.append(f"BLAS of {owner}: {lib.get('internal_api')} {lib.get('version')}, "
                         f"kernel {lib.get('architecture')}, {lib.get('num_threads')} threads, "
                         f"{lib.get('threading_layer')} ({Path(path).name})")
    lines.append(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, "
                 f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}; "
                 "FAISS searches use 1 OpenMP thread per request (the serving default); the "
                 "exact index scores a batch-1 query with FAISS's SIMD kernel over its own "
                 "shards (numpy BLAS only for batches)")
    return "\n".join(lines)


def goals_summary(cases: Sequence[Case]) -> str:
    """The two goals, each beside the measurement that answers it."""
    lines = ["## goals"]
    for case in cases:
        if case.family != "clustered" or case.n != 1_000_000:
            continue
        approx = [r for r in case.approx if r.recall >= GOAL_APPROX_RECALL]
        if approx:
            best = min(approx, key=lambda r: r.timing.p99)
            met = best.timing.p99 <= GOAL_APPROX_P99_MS
            lines.append(f"approximate, 1M clustered: goal p99 <= {GOAL_APPROX_P99_MS} ms at "
                         f"recall@100 >= {GOAL_APPROX_RECALL}: best {best.label}: p99 "
                         f"{best.timing.p99:.3f} ms, recall {best.recall:.4f} "
                         f"({'met' if met else 'MISSED'})")
        else:
            lines.append(f"approximate, 1M clustered: no setting reached recall@100 >= "
                         f"{GOAL_APPROX_RECALL} (MISSED)")
    for case in cases:
        ratio = case.exact_ratio
        lines.append(f"exact, {case.family} n={case.n:,}: goal <= {GOAL_EXACT_OVER_FLOOR}x"
                     f" the memory-read floor: {ratio:.2f}x "
                     f"({'met' if ratio <= GOAL_EXACT_OVER_FLOOR else 'MISSED'})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print and write its tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k items only, few repetitions")
    parser.add_argument("--no-cache", action="store_true", help="rebuild every FAISS index")
    parser.add_argument("--families", nargs="+", default=["clustered", "gaussian"],
                        choices=["clustered", "gaussian"])
    parser.add_argument("--out", type=Path, default=None, help="markdown file for the tables")
    args = parser.parse_args(argv)
    b = budget(args.quick)
    out = args.out or RESULTS / ("recall_index-quick.md" if args.quick else "recall_index.md")
    chunks: list[str] = []

    def emit(text: str) -> None:
        print(text, flush=True)
        chunks.append(text)

    started = time.perf_counter()
    emit(f"# recall index benchmark ({'quick' if args.quick else 'full'} run, "
         f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n")
    emit(environment() + "\n")
    cases = []
    for n in b.sizes:
        for family in args.families:
            cases.append(bench_case(family, n, b, args.quick, not args.no_cache, emit))
    emit(goals_summary(cases))
    emit(f"\ntotal {time.perf_counter() - started:.0f} s")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("```\n" + "\n".join(chunks) + "\n```\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
