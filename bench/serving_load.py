"""What the load benchmarks share: the two search configurations compared, counters read from the
transformer's and Triton's own statistics around a run, and one locust run at a known rate.

``bench.load`` (the highest steady rate at the SLO) and ``bench.overload`` (offered load beyond the
ranker's capacity) run *today's* configuration and the *new* one side by side in one run, on the
tail-heavy query stream of :mod:`loadtest.tail`:

* ``today``: every pair goes to the ranker (relevance cache off) and every ranker call is made
  (no admission limit): the configuration before the overload work;
* ``new``: the defaults of :class:`shopserve.settings.SearchSettings` (relevance cache on, ranker
  calls admitted up to ``ranker_max_concurrency``).

What a run did is read from the servers, not guessed from the client: the transformer's
Prometheus counters (rows answered, degradations by stage and reason, pairs sent to the ranker,
relevance-cache hits and misses) and Triton's statistics extension for ``bert-ranker`` (requests,
executions, and executions by batch size: what its dynamic batcher merged). Each is a difference
of two scrapes, before and after the run.
"""

from __future__ import annotations

import itertools
import math
import platform
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loadtest.runner import LoadRun, run_locust
from loadtest.slo import LoadStats
from pipeline.local import StackPorts, stack_components
from pipeline.observe.harness import cpu_model
from pipeline.supervisor import Stack
from shopserve import metric_names
from shopserve.protocol import RANKER_MODEL

#: The search settings of each configuration compared (environment of the transformer): ``today``
#: is the search as it was before the relevance cache, the admission limit and the cascade (the
#: ranker on 50 candidates of BM25 and MF, no semantic path, BM25 over the request's best score,
#: negations searched as words); ``new`` the defaults.
CONFIGS: Mapping[str, Mapping[str, str]] = {
    "today": {"SEARCH_RELEVANCE_CACHE_ENABLED": "false", "SEARCH_RANKER_MAX_CONCURRENCY": "0",
              "SEARCH_RANK_CANDIDATES": "50", "SEARCH_SEMANTIC_ENABLED": "false",
              "SEARCH_LEXICAL_SCALE": "best", "SEARCH_QUERY_NEGATION": "false"},
    "new": {},
}


@dataclass(frozen=True)
class RunningStack:
    """A local stack started for one configuration: where to send load and read counters."""

    url: str
    ranker_http: str
    ranker_grpc: str


@contextmanager
def configured_stack(bundle: Path, config: str, logs: Path) -> Iterator[RunningStack]:
    """The local stack on free ports with ``config``'s search settings, until the block ends."""
    ports = StackPorts.free()
    components = stack_components(bundle, ports, dict(CONFIGS[config]))
    with Stack(components, logs / f"logs-{config}") as stack:
        stack.start(timeout=240)
        yield RunningStack(components[-1].url, f"http://127.0.0.1:{ports.ranker_http}",
                           f"127.0.0.1:{ports.ranker_grpc}")


def machine_line() -> str:
    """The CPU model and flags a benchmark ran on, and the Python it ran."""
    return f"CPU: {cpu_model()}; Python {platform.python_version()}"


@dataclass
class SearchCounters:
    """The transformer's counters at one moment (or the difference of two scrapes).

    Attributes:
        rows: Request rows answered, by mode (``search``, ``recommend``).
        degraded: Degraded rows by (stage, reason).
        ranker_calls: Ranker calls made.
        ranker_pairs: (query, title) pairs sent to the ranker.
        cache_hits: Pairs answered by the relevance cache.
        cache_misses: Pairs the relevance cache did not hold.
    """

    rows: Counter[str] = field(default_factory=Counter)
    degraded: Counter[tuple[str, str]] = field(default_factory=Counter)
    ranker_calls: float = 0.0
    ranker_pairs: float = 0.0
    cache_hits: float = 0.0
    cache_misses: float = 0.0

    def __sub__(self, before: SearchCounters) -> SearchCounters:
        return SearchCounters(
            self.rows - before.rows, self.degraded - before.degraded,
            self.ranker_calls - before.ranker_calls, self.ranker_pairs - before.ranker_pairs,
            self.cache_hits - before.cache_hits, self.cache_misses - before.cache_misses)

    @property
    def searches(self) -> float:
        """Search rows (with a query: the rows that need the ranker)."""
        return float(self.rows.get("search", 0))

    def ranker_degraded(self) -> Counter[str]:
        """Rows answered without the ranker, by reason."""
        return Counter({reason: n for (stage, reason), n in self.degraded.items()
                        if stage == "ranker" and n})

    @property
    def ranked(self) -> float:
        """Search rows the ranker ranked (no ranker degradation)."""
        return self.searches - sum(self.ranker_degraded().values())

    @property
    def cache_hit_ratio(self) -> float:
        """Hits over lookups (nan without lookups: the cache is off)."""
        lookups = self.cache_hits + self.cache_misses
        return self.cache_hits / lookups if lookups else float("nan")

    @property
    def pairs_per_search(self) -> float:
        """Pairs the ranker scored per search row."""
        return self.ranker_pairs / self.searches if self.searches else float("nan")


def scrape_search(url: str) -> SearchCounters:
    """The search transformer's counters from its ``/metrics``."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = SearchCounters()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == f"{metric_names.SEARCH_ROWS_TOTAL}_total" or (
                    name == metric_names.SEARCH_ROWS_TOTAL):
                out.rows[labels["mode"]] += value
            elif name in (f"{metric_names.SEARCH_DEGRADED_TOTAL}_total",
                          metric_names.SEARCH_DEGRADED_TOTAL):
                out.degraded[(labels["stage"], labels.get("reason", ""))] += value
            elif name == f"{metric_names.SEARCH_RANKER_BATCH_SIZE}_count":
                out.ranker_calls += value
            elif name == f"{metric_names.SEARCH_RANKER_BATCH_SIZE}_sum":
                out.ranker_pairs += value
            elif name in (f"{metric_names.SEARCH_RELEVANCE_CACHE_HITS_TOTAL}_total",
                          metric_names.SEARCH_RELEVANCE_CACHE_HITS_TOTAL):
                out.cache_hits += value
            elif name in (f"{metric_names.SEARCH_RELEVANCE_CACHE_MISSES_TOTAL}_total",
                          metric_names.SEARCH_RELEVANCE_CACHE_MISSES_TOTAL):
                out.cache_misses += value
    return out


@dataclass
class TritonBatches:
    """Triton's statistics of one model (or the difference of two reads).

    Attributes:
        requests: Inference requests answered.
        executions: Model executions (a dynamic batch is one).
        by_size: Executions by batch size (rows: (query, title) pairs for the ranker).
    """

    requests: int = 0
    executions: int = 0
    by_size: Counter[int] = field(default_factory=Counter)

    def __sub__(self, before: TritonBatches) -> TritonBatches:
        return TritonBatches(self.requests - before.requests,
                             self.executions - before.executions, self.by_size - before.by_size)

    @property
    def requests_per_execution(self) -> float:
        """How many requests Triton's batcher merged per execution, on average."""
        return self.requests / self.executions if self.executions else float("nan")

    def sizes(self, top: int = 4) -> str:
        """The most frequent batch sizes (pairs) with their execution counts."""
        return ", ".join(f"{size}x{n}" for size, n in self.by_size.most_common(top)) or "-"


def triton_batches(http_url: str, model: str = RANKER_MODEL) -> TritonBatches:
    """Triton's statistics of ``model`` (``GET /v2/models/<model>/stats``)."""
    stats = httpx.get(f"{http_url}/v2/models/{model}/stats", timeout=10).json()
    out = TritonBatches()
    for entry in stats.get("model_stats", []):
        out.requests += int(entry["inference_stats"]["success"]["count"])
        out.executions += int(entry.get("execution_count", 0))
        for batch in entry.get("batch_stats", []):
            out.by_size[int(batch["batch_size"])] += int(batch["compute_infer"]["count"])
    return out


@dataclass(frozen=True)
class Measured:
    """One locust run at an offered rate, with what the servers counted during it."""

    offered: float
    stats: LoadStats
    search: SearchCounters
    ranker: TritonBatches
    seconds: float

    @property
    def ranked_per_s(self) -> float:
        """Ranked searches per second."""
        return self.search.ranked / self.seconds

    @property
    def degraded_ratio(self) -> float:
        """Degraded share of all rows answered (searches and recommendations)."""
        rows = sum(self.search.rows.values())
        return sum(self.search.degraded.values()) / rows if rows else 0.0


#: Seeds of the request streams: every run of a benchmark process draws a stream of its own, so a
#: repeat or a warm-up never replays the tail queries of another run (the cache would answer them).
_SEEDS = itertools.count(1)


def offer(url: str, ranker_http: str, bundle: Path, work: Path, name: str, rate: float,
          seconds: float, rate_per_user: float, extra: tuple[str, ...] = ()) -> Measured:
    """Offer ``rate`` requests/s for ``seconds`` with locust (each user at a constant rate, on a
    stream of its own) and read the servers' counters around it."""
    users = max(1, math.ceil(rate / rate_per_user))
    run = LoadRun(host=url, out_dir=work, prefix=name, users=users, spawn_rate=float(users),
                  run_time_s=seconds, bundle=bundle, rate_per_user=rate / users, extra=extra,
                  seed=next(_SEEDS))
    search_before, ranker_before = scrape_search(url), triton_batches(ranker_http)
    start = time.perf_counter()
    result = run_locust(run)
    elapsed = time.perf_counter() - start
    if result.summary is None:
        raise RuntimeError(f"locust failed (exit {result.returncode}):\n{result.output[-3000:]}")
    time.sleep(1.0)  # answers still in flight reach the counters
    measured = Measured(rate, LoadStats.from_dict(result.summary["total"]),
                        scrape_search(url) - search_before,
                        triton_batches(ranker_http) - ranker_before,
                        min(elapsed, seconds) if seconds else elapsed)
    return measured
