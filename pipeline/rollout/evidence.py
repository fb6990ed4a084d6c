"""The canary gate's statistics: is the canary worse than stable, or than the SLO, beyond noise?

A step of the gate measures a few dozen to a few thousand requests per side, so two identical
versions differ by chance: 69% against 66% degraded answers on 78 and 86 requests is well inside
sampling noise. The gate therefore judges with one-sided tests at a stated confidence, as Kayenta
does, all from :mod:`scipy.stats`:

* **ratios** (failures among requests, degraded answers among successful ones): a one-sided
  two-proportion test of "the canary's ratio is higher than stable's". Boschloo's exact test
  (:func:`scipy.stats.boschloo_exact`, uniformly more powerful than Fisher's and exact at any
  count) while the table is small (``n_canary * n_stable <= BOSCHLOO_MAX_TABLE``, where it costs
  well under a second); Fisher's exact test (:func:`scipy.stats.fisher_exact`, exact and slightly
  conservative, instant at any size) above, where the two barely differ;
* **latency**: the one-sided Mann-Whitney U test (:func:`scipy.stats.mannwhitneyu`,
  ``alternative="greater"``) on per-request response times, "the canary's latencies are
  stochastically larger than stable's";
* **against the SLO alone**: the one-sided exact binomial test (:func:`scipy.stats.binomtest`)
  of "more than the allowed share of the canary's requests fail / are degraded / are slower than
  the latency limit" (a p99 limit allows 1% of requests above it).

The response times come from locust's own per-request histogram (``--json-file``), which keeps
every request's time rounded to two significant digits (147 ms counts as 150 ms): ties the
Mann-Whitney test handles with its tie correction.

**Confidence**: the gate states one confidence (default 95%) for the whole gate, and spends its
false-rollback budget ``1 - confidence`` evenly over every test it may run (Bonferroni):
:data:`TESTS_PER_LOOK` tests at each measurement, ``len(plan) * (1 + max_holds)`` measurements at
most. Bonferroni holds whatever the tests' dependence (the same stable baseline reused, pooled
measurements re-tested after a hold), so an A/A gate rolls back with probability at most
``1 - confidence``; the discrete exact tests make it smaller still.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats

from loadtest.slo import LoadStats

#: Largest ``n_canary * n_stable`` judged with Boschloo's test (about 0.2 s on a 2-core machine);
#: Fisher's exact test above.
BOSCHLOO_MAX_TABLE = 40_000

#: Tests one measurement may run: failure ratio, degraded ratio, Mann-Whitney U on latencies, and
#: the share above the p99 and the p95 limits against stable's.
TESTS_PER_LOOK = 5


@dataclass(frozen=True)
class Level:
    """The significance level of each test, from the gate's confidence.

    Attributes:
        confidence: The gate's confidence, 0..1 (0.95: at most 5% of A/A gates roll back).
        tests: How many tests the budget ``1 - confidence`` is split over (Bonferroni).
    """

    confidence: float = 0.95
    tests: int = TESTS_PER_LOOK

    def __post_init__(self) -> None:
        if not 0 < self.confidence < 1:
            raise ValueError(f"the confidence must be in (0, 1), got {self.confidence}")
        if self.tests < 1:
            raise ValueError(f"the number of tests must be >= 1, got {self.tests}")

    @property
    def alpha(self) -> float:
        """The level of one test: ``(1 - confidence) / tests``."""
        return (1 - self.confidence) / self.tests

    def describe(self) -> str:
        """``alpha 0.0017 (95% for the gate over 30 tests)``."""
        return f"alpha {self.alpha:.2g} ({self.confidence:.0%} for the gate over {self.tests} tests)"


@dataclass(frozen=True)
class TestResult:
    """One test's outcome.

    Attributes:
        test: What was tested, as the verdict names it (``one-sided Mann-Whitney U``).
        pvalue: Its p-value (1 when there is nothing to test, e.g. no events on either side).
        level: The level it is judged at.
    """

    __test__ = False  # not a pytest class, whatever its name

    test: str
    pvalue: float
    level: Level

    @property
    def significant(self) -> bool:
        """Whether ``pvalue < alpha``."""
        return self.pvalue < self.level.alpha

    def describe(self) -> str:
        """``one-sided Fisher exact test p=0.34 >= alpha 0.0017 (95% for the gate over 30 tests)``."""
        sign = "<" if self.significant else ">="
        return f"{self.test} p={self.pvalue:.2g} {sign} {self.level.describe()}"


def _pvalue(value: float) -> float:
    # scipy answers NaN for a degenerate input (no variance at all): no evidence of a difference.
    return 1.0 if math.isnan(value) else float(min(max(value, 0.0), 1.0))


def compare_proportions(k_canary: int, n_canary: int, k_stable: int, n_stable: int,
                        level: Level) -> TestResult:
    """One-sided two-proportion test of "the canary's share of events is higher than stable's".

    Boschloo's exact test for small tables, Fisher's exact test for large ones (see the module
    docstring); both exact, so valid at any count. No events on either side, or an empty side, is
    no evidence: p = 1.
    """
    test, p = _two_proportion_pvalue(k_canary, n_canary, k_stable, n_stable)
    return TestResult(f"one-sided {test} exact two-proportion test", p, level)


@functools.lru_cache(maxsize=4096)
def _two_proportion_pvalue(k_canary: int, n_canary: int, k_stable: int,
                           n_stable: int) -> tuple[str, float]:
    # Cached: a gate asks again for the same small tables (the extreme table of decidable()).
    name = "Boschloo" if n_canary * n_stable <= BOSCHLOO_MAX_TABLE else "Fisher"
    if min(n_canary, n_stable) <= 0 or k_canary + k_stable == 0:
        return name, 1.0
    table = [[k_canary, k_stable], [n_canary - k_canary, n_stable - k_stable]]
    if name == "Boschloo":
        return name, _pvalue(stats.boschloo_exact(table, alternative="greater").pvalue)
    return name, _pvalue(stats.fisher_exact(table, alternative="greater").pvalue)


def proportion_over_limit(k: int, n: int, limit: float, level: Level) -> TestResult:
    """One-sided exact binomial test of "the true share of events is above ``limit``".

    With ``limit`` 0 (no event allowed) a single event is conclusive (p = 0); no request is no
    evidence (p = 1).
    """
    if n <= 0:
        return TestResult("one-sided binomial test against the SLO", 1.0, level)
    p = stats.binomtest(k, n, limit, alternative="greater").pvalue
    return TestResult("one-sided binomial test against the SLO", _pvalue(p), level)


def decidable(n_canary: int, n_stable: int, level: Level) -> bool:
    """Whether a comparison of these counts can ever be significant: even the most extreme
    outcome (every canary request an event, no stable one) must reach ``p < alpha``, or the step
    has too few requests to decide either way."""
    return compare_proportions(n_canary, n_canary, 0, n_stable, level).significant


@dataclass(frozen=True)
class Latencies:
    """Per-request response times of one side, as a histogram (locust keeps them so).

    Attributes:
        values: Distinct response times, ms, increasing.
        counts: Requests at each.
    """

    values: tuple[float, ...] = ()
    counts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.values) != len(self.counts):
            raise ValueError("values and counts must have the same length")

    @classmethod
    def from_histogram(cls, histogram: Mapping[float | str, int]) -> Latencies:
        """From ``{ms: count}`` (keys may be strings, as locust's JSON writes them)."""
        merged: dict[float, int] = {}
        for key, count in histogram.items():
            if int(count) > 0:
                merged[float(key)] = merged.get(float(key), 0) + int(count)
        ordered = sorted(merged.items())
        return cls(tuple(v for v, _ in ordered), tuple(c for _, c in ordered))

    @classmethod
    def from_samples(cls, samples: Iterable[float]) -> Latencies:
        """From raw response times, ms."""
        values, counts = np.unique(np.asarray(list(samples), dtype=float), return_counts=True)
        return cls(tuple(float(v) for v in values), tuple(int(c) for c in counts))

    def __add__(self, other: Latencies) -> Latencies:
        merged = dict(zip(self.values, self.counts, strict=True))
        for value, count in zip(other.values, other.counts, strict=True):
            merged[value] = merged.get(value, 0) + count
        return Latencies.from_histogram(merged)

    @property
    def n(self) -> int:
        """Number of requests."""
        return int(sum(self.counts))

    def array(self) -> np.ndarray:
        """Every request's time, ms, in increasing order."""
        return np.repeat(np.asarray(self.values, dtype=float), np.asarray(self.counts, dtype=int))

    def percentile(self, q: float) -> float:
        """The response time that a share ``q`` of requests finished within, by locust's rule
        (the sorted times' element at index ``int(n * q)``), so pooled percentiles read as
        locust's own; 0 when empty."""
        if not self.n:
            return 0.0
        return float(self.array()[min(int(self.n * q), self.n - 1)])

    def over(self, limit: float) -> int:
        """Requests slower than ``limit`` ms."""
        return int(sum(c for v, c in zip(self.values, self.counts, strict=True) if v > limit))


def compare_latencies(canary: Latencies, stable: Latencies, level: Level) -> TestResult:
    """One-sided Mann-Whitney U test of "the canary's response times are stochastically larger
    than stable's" (exact for small samples without ties, normal approximation with the tie
    correction otherwise, as :func:`scipy.stats.mannwhitneyu` chooses)."""
    if not canary.n or not stable.n:
        return TestResult("one-sided Mann-Whitney U test", 1.0, level)
    p = stats.mannwhitneyu(canary.array(), stable.array(), alternative="greater").pvalue
    return TestResult("one-sided Mann-Whitney U test", _pvalue(p), level)


def side_stats(latencies: Latencies, failures: int, degraded: int, rps: float = 0.0) -> LoadStats:
    """:class:`LoadStats` of one side whose every request's time is in ``latencies``."""
    return LoadStats(requests=latencies.n, failures=failures, degraded=degraded,
                     p50_ms=latencies.percentile(0.5), p95_ms=latencies.percentile(0.95),
                     p99_ms=latencies.percentile(0.99), rps=rps)


def pool_stats(first: LoadStats, second: LoadStats, first_ms: Latencies | None,
               second_ms: Latencies | None) -> tuple[LoadStats, Latencies | None]:
    """Two measurements of one side as one: counts add up, percentiles come from the pooled
    response times (or, without them, are the request-weighted mean of the two), the rate is
    their mean (steps are equally long)."""
    requests = first.requests + second.requests
    failures, degraded = first.failures + second.failures, first.degraded + second.degraded
    rps = (first.rps + second.rps) / 2
    if first_ms is not None and second_ms is not None:
        pooled = first_ms + second_ms
        return LoadStats(requests, failures, degraded, pooled.percentile(0.5),
                         pooled.percentile(0.95), pooled.percentile(0.99), rps), pooled
    total = max(requests, 1)

    def mean(name: str) -> float:
        return (getattr(first, name) * first.requests + getattr(second, name) * second.requests) / total

    return LoadStats(requests, failures, degraded, mean("p50_ms"), mean("p95_ms"), mean("p99_ms"),
                     rps), None


__all__ = ["BOSCHLOO_MAX_TABLE", "TESTS_PER_LOOK", "Latencies", "Level", "TestResult",
           "compare_latencies", "compare_proportions", "decidable", "pool_stats",
           "proportion_over_limit", "side_stats"]
