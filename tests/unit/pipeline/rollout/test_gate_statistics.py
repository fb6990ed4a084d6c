"""The gate's statistics: the tests themselves, A/A false rollbacks, power against bad canaries,
per-request latencies from locust's JSON, and the table of repeated gates.

Seeded simulations: A/A sides drawn from one distribution must roll back no more often than the
stated ``1 - confidence``; clearly worse canaries must roll back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loadtest.slo import SLO, LoadStats
from pipeline.rollout.canary import latencies_of, read_request_entries, repeat_exit_code, repeat_table
from pipeline.rollout.evidence import (
    Latencies,
    Level,
    compare_latencies,
    compare_proportions,
    decidable,
    pool_stats,
    proportion_over_limit,
    side_stats,
)
from pipeline.rollout.gate import (
    PROMOTE,
    ROLLBACK,
    STOP,
    Decision,
    GateResult,
    LocalTraffic,
    StepStats,
    Tolerance,
    decide,
    run_gate,
)

LEVEL = Level(0.95, tests=1)  # alpha 0.05

# ------------------------------------------------------------------------------------ the tests


def test_level_splits_the_budget() -> None:
    assert Level(0.95, 10).alpha == pytest.approx(0.005)
    assert Tolerance(confidence=0.9, max_holds=2).level(Tolerance(max_holds=2).looks(2)).tests == 30
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="confidence"):
            Level(bad)


@pytest.mark.parametrize(("counts", "test", "significant"), [
    ((30, 300, 3, 300), "Fisher", True),          # 10% vs 1% on 300 a side
    ((3, 30, 0, 30), "Boschloo", False),           # 10% vs 0% on 30: noise at this size
    ((12, 30, 0, 30), "Boschloo", True),
    ((54, 78, 57, 86), "Boschloo", False),         # the A/A: 69.2% vs 66.3%
    ((1, 300, 30, 300), "Fisher", False),          # better than stable: one-sided
    ((0, 100, 0, 100), "Boschloo", False),         # nothing happened: p = 1
])
def test_compare_proportions(counts: tuple[int, int, int, int], test: str, significant: bool) -> None:
    result = compare_proportions(*counts, LEVEL)
    assert test in result.test and result.significant == significant, result
    assert 0 <= result.pvalue <= 1


def test_boschloo_is_more_powerful_than_fisher_on_small_tables() -> None:
    from scipy.stats import fisher_exact

    boschloo = compare_proportions(3, 3, 0, 10, LEVEL).pvalue
    assert boschloo < fisher_exact([[3, 0], [0, 10]], alternative="greater").pvalue


def test_proportion_over_limit() -> None:
    assert proportion_over_limit(1, 1000, 0.0, LEVEL).pvalue == 0  # any failure breaks a zero SLO
    assert not proportion_over_limit(2, 10, 0.05, LEVEL).significant  # 20% of 10: not yet
    assert proportion_over_limit(20, 100, 0.05, LEVEL).significant
    assert proportion_over_limit(0, 0, 0.05, LEVEL).pvalue == 1


def test_decidable() -> None:
    assert not decidable(1, 2, LEVEL) and not decidable(2, 3, Level(0.95, 5))
    assert decidable(2, 3, LEVEL) and decidable(20, 20, Level(0.95, 30))


def test_compare_latencies() -> None:
    rng = np.random.default_rng(0)
    base = Latencies.from_samples(np.round(rng.lognormal(np.log(30), 0.4, 300)))
    slow = Latencies.from_samples(np.round(rng.lognormal(np.log(60), 0.4, 300)))
    assert compare_latencies(slow, base, LEVEL).pvalue < 1e-20
    assert compare_latencies(base, slow, LEVEL).pvalue > 0.99  # faster is never a regression
    same = Latencies.from_histogram({"5": 4})
    assert compare_latencies(same, same, LEVEL).pvalue == 1  # no variance: no evidence
    assert compare_latencies(Latencies(), base, LEVEL).pvalue == 1


def test_latencies_histogram_percentiles_and_pooling() -> None:
    ms = Latencies.from_histogram({"10": 90, "150": 9, 3400: 1})
    assert ms.n == 100 and ms.values == (10.0, 150.0, 3400.0)
    # locust's rule: the sorted times' element at int(n * q).
    assert (ms.percentile(0.5), ms.percentile(0.95), ms.percentile(0.99)) == (10, 150, 3400)
    assert ms.over(150) == 1 and ms.over(10) == 10
    pooled = ms + Latencies.from_samples([10, 20])
    assert pooled.n == 102 and dict(zip(pooled.values, pooled.counts, strict=True))[10.0] == 91
    first = side_stats(ms, failures=2, degraded=5)
    stats, merged = pool_stats(first, first, ms, ms)
    assert merged is not None and merged.n == 200
    assert (stats.requests, stats.failures, stats.degraded, stats.p99_ms) == (200, 4, 10, 3400)
    # Without the per-request times the percentiles are the request-weighted mean.
    other = LoadStats(300, 0, 0, 20, 40, 80)
    stats, merged = pool_stats(first, other, ms, None)
    assert merged is None and stats.p95_ms == pytest.approx((150 * 100 + 40 * 300) / 400)


# ------------------------------------------------------------------------------------ A/A


def _draw(rng: np.random.Generator, n: int, failure: float, degraded: float, median: float,
          spread: float) -> tuple[LoadStats, Latencies]:
    failures = int(rng.binomial(n, failure))
    ms = Latencies.from_samples(np.round(rng.lognormal(np.log(median), spread, n)))
    return side_stats(ms, failures, int(rng.binomial(n - failures, degraded))), ms


#: One distribution for both sides, with every metric right at its SLO limit (the hardest case:
#: either side lands over or under by chance): 1% failures, 5% degraded, p95 about 100 ms and
#: p99 about 150 ms.
AA = {"failure": 0.01, "degraded": 0.05, "median": 44.0, "spread": 0.5}
AA_SLO = SLO(p95_ms=100, p99_ms=140, max_failure_ratio=0.01, max_degraded_ratio=0.05)


@pytest.mark.parametrize(("n_canary", "n_stable", "trials"), [(400, 600, 400), (60, 90, 60)],
                         ids=["fisher-sized", "boschloo-sized"])
def test_aa_steps_roll_back_no_more_than_the_stated_rate(n_canary: int, n_stable: int,
                                                         trials: int) -> None:
    tol = Tolerance(confidence=0.95, min_requests=20)
    rng = np.random.default_rng(2024)
    actions: list[str] = []
    for _ in range(trials):
        canary, stable = _draw(rng, n_canary, **AA), _draw(rng, n_stable, **AA)
        actions.append(decide(StepStats(50, canary[0], stable[0], canary[1], stable[1]), AA_SLO,
                              tol).action)
    rollbacks = actions.count(ROLLBACK) / trials
    assert rollbacks <= 1 - tol.confidence, actions
    assert actions.count(PROMOTE) + actions.count("short_of_capacity") + actions.count("hold") \
        == trials - actions.count(ROLLBACK)


def test_aa_gates_roll_back_no_more_than_the_stated_rate() -> None:
    """Whole gates (2 steps, up to 2 holds each, pooled): at most 1 - confidence roll back."""
    tol = Tolerance(confidence=0.95, min_requests=20, max_holds=2)
    rng = np.random.default_rng(7)

    def measure(percent: int) -> StepStats:
        total = 1000
        n_canary = int(rng.binomial(total, percent / 100))
        canary = _draw(rng, n_canary, **AA)
        if percent == 100:
            return StepStats(percent, canary[0], None, canary[1], None)
        stable = _draw(rng, total - n_canary, **AA)
        return StepStats(percent, canary[0], stable[0], canary[1], stable[1])

    outcomes = [run_gate([50, 100], LocalTraffic("A", "A"), measure, AA_SLO, tol,
                         echo=lambda _: None).action for _ in range(100)]
    assert outcomes.count(ROLLBACK) / len(outcomes) <= 1 - tol.confidence, outcomes
    assert outcomes.count(PROMOTE) + outcomes.count(STOP) + outcomes.count(ROLLBACK) == 100


# ------------------------------------------------------------------------------------ power


@pytest.mark.parametrize(("canary", "metric"), [
    ({"failure": 0.10}, "failure_ratio"),
    ({"degraded": 0.25}, "degraded_ratio"),
    ({"median": 88.0}, "p9"),  # latencies 2x
], ids=["10% failures vs 1%", "25% degraded vs 5%", "latency 2x"])
def test_clearly_worse_canaries_roll_back_at_the_gate_level(canary: dict[str, float],
                                                            metric: str) -> None:
    """300 requests a side, judged at the level of a whole 3-step gate with 2 holds a step."""
    tol = Tolerance(confidence=0.95, max_holds=2)
    rng = np.random.default_rng(11)
    rolled = 0
    for _ in range(20):
        bad = _draw(rng, 300, **{**AA, **canary})
        good = _draw(rng, 300, **AA)
        decision = decide(StepStats(10, bad[0], good[0], bad[1], good[1]), AA_SLO, tol,
                          looks=tol.looks(3))
        rolled += decision.action == ROLLBACK and decision.metric.startswith(metric)
    assert rolled == 20


# ------------------------------------------------------------------------------------ locust data


def test_latencies_from_locusts_json(tmp_path: Path) -> None:
    entries = [
        {"name": "search [canary]", "method": "POST", "num_requests": 3,
         "response_times": {"40": 2, "4100": 1}},
        {"name": "recommend [canary]", "method": "POST", "num_requests": 1,
         "response_times": {"30": 1}},
        {"name": "search [stable]", "method": "POST", "num_requests": 2,
         "response_times": {"40": 2}},
    ]
    path = tmp_path / "load-requests.json"
    path.write_text(json.dumps(entries))
    read = read_request_entries(path)
    canary, stable, total = (latencies_of(read, "canary"), latencies_of(read, "stable"),
                             latencies_of(read, None))
    assert canary is not None and stable is not None and total is not None
    assert (canary.n, stable.n, total.n) == (4, 2, 6)
    assert canary.values == (30.0, 40.0, 4100.0) and canary.over(1000) == 1
    assert read_request_entries(tmp_path / "missing.json") == []
    assert latencies_of([], "canary") is None


def test_repeat_table() -> None:
    results = [
        GateResult(PROMOTE, Decision(PROMOTE, "p99_ms", "canary p99_ms 60 ms within 150 ms"), 100),
        GateResult(STOP, Decision("short_of_capacity", "degraded_ratio", "both miss", 0.34), 50),
    ]
    table = repeat_table(results)
    lines = table.splitlines()
    assert lines[0].split()[:5] == ["run", "outcome", "at", "metric", "p-value"]
    assert "promoted" in lines[1] and "100%" in lines[1] and lines[1].rstrip().endswith("150 ms")
    assert "stopped: short of capacity" in lines[2] and "0.34" in lines[2]
    assert lines[-1] == "2 gates: 1 promoted, 1 stopped: short of capacity"
    assert repeat_exit_code(results) == 3
    assert repeat_exit_code([*results, GateResult(ROLLBACK, Decision(ROLLBACK, "x", "y"), 50)]) == 1
    assert repeat_exit_code(results[:1]) == 0
