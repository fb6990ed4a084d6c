"""The canary gate's decisions, the SLO and its check, the load shapes and the traffic mix.

Pure functions only: no locust (it monkey-patches the process on import), no servers.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from loadtest.shapes import Spike, Steady, StepRamp, make_shape
from loadtest.slo import DEFAULT_SLO_FILE, SLO, LoadStats, check, load_slo
from loadtest.traffic import MixConfig, TrafficMix
from pipeline.rollout.evidence import Latencies, side_stats
from pipeline.rollout.gate import (
    HOLD,
    PROMOTE,
    RANKER_NDCG,
    RECALL_NDCG,
    ROLLBACK,
    SEQUENCE_NDCG,
    SHORT_OF_CAPACITY,
    STOP,
    Decision,
    LocalTraffic,
    StepStats,
    Tolerance,
    bundle_quality,
    decide,
    quality_guard,
    run_gate,
)
from shopserve.protocol import ANONYMOUS_USER, CATEGORY, MAX_PRICE, QUERY, TOP_N, USER_ID

# ------------------------------------------------------------------------------------ SLO


def stats(requests: int = 1000, failures: int = 0, degraded: int = 0, p95: float = 50,
          p99: float = 80) -> LoadStats:
    return LoadStats(requests, failures, degraded, p50_ms=p95 / 2, p95_ms=p95, p99_ms=p99)


def test_slo_from_yaml_json_and_pairs(tmp_path: Path) -> None:
    (tmp_path / "slo.yaml").write_text("p95_ms: 100\np99_ms: 150\nmax_failure_ratio: 0.0\n")
    (tmp_path / "slo.json").write_text(json.dumps({"p99_ms": 150, "max_degraded_ratio": 0.01}))
    assert load_slo(tmp_path / "slo.yaml") == SLO(p95_ms=100, p99_ms=150, max_failure_ratio=0.0)
    assert load_slo(str(tmp_path / "slo.json")) == SLO(p99_ms=150, max_degraded_ratio=0.01)
    assert load_slo("p99_ms=150, max_failure_ratio=0.001") == SLO(p99_ms=150, max_failure_ratio=0.001)
    assert load_slo(None) == SLO()
    assert load_slo(DEFAULT_SLO_FILE).p99_ms == 150  # the published objective
    assert load_slo("p99_ms=150").merged(p95_ms=90, p99_ms=None) == SLO(p95_ms=90, p99_ms=150)


@pytest.mark.parametrize(("spec", "message"), [
    ("p99=150", "unknown SLO key"),
    ("p99_ms=-1", "must be positive"),
    ("max_failure_ratio=1.5", r"must be in \[0, 1\]"),
    ("p99_ms", "does not exist"),
])
def test_bad_slo_names_the_problem(spec: str, message: str) -> None:
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_slo(spec)


SLO_ALL = SLO(p95_ms=100, p99_ms=150, max_failure_ratio=0.01, max_degraded_ratio=0.05)


@pytest.mark.parametrize(("measured", "missed"), [
    (stats(), []),
    (stats(p95=100, p99=150), []),                                   # at the limit passes
    (stats(p99=151), ["p99_ms"]),
    (stats(p95=120, p99=200), ["p99_ms", "p95_ms"]),
    (stats(failures=10), []),                                         # 1% exactly
    (stats(failures=11), ["failure_ratio"]),
    (stats(failures=900, degraded=10), ["failure_ratio", "degraded_ratio"]),  # 10 of 100 answers
    (stats(requests=0), ["requests"]),                                # nothing sent never passes
])
def test_check(measured: LoadStats, missed: list[str]) -> None:
    assert [v.metric for v in check(SLO_ALL, measured)] == missed


def test_ratios_and_messages() -> None:
    s = stats(requests=200, failures=50, degraded=15)
    assert s.failure_ratio == 0.25 and s.degraded_ratio == 0.1
    assert LoadStats(0, 0).failure_ratio == 0 and LoadStats(5, 5, 0).degraded_ratio == 0
    assert LoadStats.from_dict(s.as_dict()) == s
    assert [str(v) for v in check(SLO(p99_ms=150), stats(p99=412))] == ["p99_ms 412 ms > 150 ms"]


# ------------------------------------------------------------------------------------ shapes


def test_shapes() -> None:
    steady = Steady(4, 2.0, 10)
    assert steady.tick(0) == (4, 2.0) and steady.tick(9.9) == (4, 2.0) and steady.tick(10) is None
    ramp = StepRamp(2, 3, steps=3, step_s=5, spawn_rate=1.0)
    assert [ramp.tick(t) for t in (0, 4.9, 5, 10, 14.9, 15)] == [
        (2, 1.0), (2, 1.0), (5, 1.0), (8, 1.0), (8, 1.0), None]
    assert ramp.duration_s == 15
    spike = make_shape("spike", users=2, spawn_rate=1, run_time_s=30, spike_users=10,
                       spike_seconds=5)
    assert isinstance(spike, Spike)
    assert [spike.tick(t)[0] for t in (0, 9.9, 10, 14.9, 15, 29)] == [2, 2, 12, 12, 2, 2]
    assert spike.tick(30) is None
    assert make_shape("steady", users=1, spawn_rate=1, run_time_s=None).tick(1e9) == (1, 1)
    with pytest.raises(ValueError, match="run time"):
        make_shape("spike", users=1, spawn_rate=1, run_time_s=None)
    with pytest.raises(ValueError, match="unknown shape"):
        make_shape("ramp", users=1, spawn_rate=1, run_time_s=5)


# ------------------------------------------------------------------------------------ traffic


def test_traffic_mix_shares_and_bodies() -> None:
    shares = [1 / (rank + 1) for rank in range(50)]  # Zipf
    mix = TrafficMix([f"q{i}" for i in range(50)], shares, ["shoes"] * 25 + ["mugs"] * 25,
                     [10, 11, 12], [1.0, 1.0, 8.0], {"shoes": 80.0, "mugs": 12.5},
                     MixConfig(recommend_share=0.2, anonymous_share=0.3, filter_share=0.15, top_n=7))
    rng = random.Random(0)
    calls = [mix.sample(rng) for _ in range(5000)]
    share = lambda pred: sum(map(pred, calls)) / len(calls)  # noqa: E731
    assert share(lambda c: c.kind == "recommend") == pytest.approx(0.2, abs=0.03)
    assert share(lambda c: c.user_id == ANONYMOUS_USER) == pytest.approx(0.3, abs=0.03)
    assert share(lambda c: c.filtered) == pytest.approx(0.15, abs=0.03)
    queries = [c.body["inputs"][0]["data"][0] for c in calls if c.kind == "search"]
    assert queries.count("q0") > 5 * queries.count("q9")  # the head dominates
    known = [c.user_id for c in calls if c.user_id != ANONYMOUS_USER]
    assert known.count(12) > 3 * known.count(10)  # by activity
    for call in calls[:200]:
        body = call.body
        assert [t["name"] for t in body["inputs"]] == [QUERY, USER_ID]
        assert body["parameters"][TOP_N] == 7
        assert (call.kind == "recommend") == (body["inputs"][0]["data"] == [""])
        params = body["parameters"]
        assert call.filtered == (CATEGORY in params or MAX_PRICE in params)
        if MAX_PRICE in params:
            assert params[MAX_PRICE] in (80.0, 12.5)


# ------------------------------------------------------------------------------------ decisions

TOL = Tolerance(latency_ratio=0.5, latency_slack_ms=10, ratio_slack=0.01, min_requests=20)
SLO_GATE = SLO(p95_ms=100, p99_ms=150, max_failure_ratio=0.0, max_degraded_ratio=0.05)


def side(n: int = 1000, failures: int = 0, degraded: int = 0, median: float = 30.0,
         spread: float = 0.4, seed: int = 0) -> tuple[LoadStats, Latencies]:
    """A measured side: ``n`` requests with log-normal response times (median 30 ms: p95 about
    58 ms, p99 about 76 ms), their percentiles computed as locust does."""
    rng = np.random.default_rng(seed)
    ms = Latencies.from_samples(np.round(rng.lognormal(np.log(median), spread, n)))
    return side_stats(ms, failures, degraded), ms


def step(canary: tuple[LoadStats, Latencies], stable: tuple[LoadStats, Latencies] | None,
         percent: int = 10) -> StepStats:
    if stable is None:
        return StepStats(percent, canary[0], None, canary[1], None)
    return StepStats(percent, canary[0], stable[0], canary[1], stable[1])


DECISIONS = [
    # (case, canary, stable, action, metric)
    ("healthy, like stable", side(seed=1), side(seed=2), PROMOTE, None),
    ("no stable baseline: SLO alone", side(seed=1), None, PROMOTE, None),
    # 300 requests: 15 above p95 (its effect compared), 3 above p99 (too thin to compare).
    ("latencies 2x: Mann-Whitney and the p95 effect", side(300, median=60, seed=1),
     side(300, seed=2), ROLLBACK, "p95_ms"),
    ("10% vs 1% failures on 300", side(300, failures=30, seed=1), side(300, failures=3, seed=2),
     ROLLBACK, "failure_ratio"),
    ("failures beat latency", side(300, failures=30, median=90, seed=1), side(300, seed=2),
     ROLLBACK, "failure_ratio"),
    ("degraded regressed beyond the tolerance", side(degraded=40, seed=1), side(seed=2), ROLLBACK,
     "degraded_ratio"),
    # Significant with 10,000 a side, but 0.5 points is within the 1-point tolerance.
    ("degraded worse within the tolerance", side(10_000, degraded=300, seed=1),
     side(10_000, degraded=250, seed=2), PROMOTE, None),
    # One failure in 1,000 misses a zero SLO, but stable could have had one just as well.
    ("one failure against a zero SLO: hold", side(failures=1, seed=1), side(seed=2), HOLD,
     "failure_ratio"),
    ("twenty failures against a clean stable", side(failures=20, seed=1), side(seed=2), ROLLBACK,
     "failure_ratio"),
    # The A/A run: 69.2% vs 66.3% degraded on 78 and 86 requests.
    ("both miss the degraded SLO alike", side(78, degraded=54, seed=1), side(86, degraded=57, seed=2),
     SHORT_OF_CAPACITY, "degraded_ratio"),
    ("both miss the p99 SLO alike", side(400, median=100, seed=1), side(400, median=100, seed=2),
     SHORT_OF_CAPACITY, "p99_ms"),
    ("both over the SLO, canary 3x slower", side(600, median=300, seed=1),
     side(600, median=100, seed=2), ROLLBACK, "p99_ms"),
    # The canary alone misses the p95 SLO by far and stable meets it: significant on its own and
    # against stable, though its p95 is within stable's x1.5 + 10 ms of a slow-tailed stable.
    ("canary alone misses the p95 SLO", side(400, median=100, spread=0.12, seed=1),
     side(400, median=40, spread=0.45, seed=2), ROLLBACK, "p95_ms"),
    ("too few canary requests", side(5, seed=1), side(seed=2), HOLD, "requests"),
    ("too few, but failing", side(5, failures=3, seed=1), side(seed=2), ROLLBACK, "failure_ratio"),
    ("too few stable requests: no baseline, SLO alone", side(seed=1), side(3, seed=2), PROMOTE,
     None),
]


@pytest.mark.parametrize(("case", "canary", "stable", "action", "metric"), DECISIONS,
                         ids=[d[0] for d in DECISIONS])
def test_decide(case: str, canary: tuple[LoadStats, Latencies],
                stable: tuple[LoadStats, Latencies] | None, action: str, metric: str | None) -> None:
    decision = decide(step(canary, stable), SLO_GATE, TOL)
    assert decision.action == action, decision
    if metric is not None:
        assert decision.metric == metric, decision
    assert decision.reason


def test_small_counts_hold() -> None:
    tol = Tolerance(min_requests=2)
    # 2 of 10 degraded against a 5% SLO, none of 10 for stable: not significant either way.
    d = decide(step(side(10, degraded=2, seed=1), side(10, seed=2)), SLO_GATE, tol)
    assert (d.action, d.metric) == (HOLD, "degraded_ratio"), d
    assert "collecting more" in d.reason
    # 2 and 3 requests: even every canary request failing could not be significant.
    d = decide(step(side(2, seed=1), side(3, seed=2)), SLO(), tol)
    assert (d.action, d.metric) == (HOLD, "requests"), d
    assert "too few to decide" in d.reason


def test_without_per_request_latencies_a_latency_miss_holds() -> None:
    canary = LoadStats(1000, 0, 0, p50_ms=90, p95_ms=140, p99_ms=400)
    d = decide(StepStats(10, canary, LoadStats(1000, 0, 0, 20, 40, 60)), SLO_GATE, TOL)
    assert (d.action, d.metric) == (HOLD, "p99_ms") and "no per-request latencies" in d.reason


def test_uncompared_percentiles_are_named() -> None:
    d = decide(step(side(200, seed=1), side(200, seed=2)), SLO_GATE, TOL)
    assert d.action == PROMOTE and "(p99_ms not compared with stable" in d.reason


def test_decide_reason_has_the_test_the_counts_and_the_p_value() -> None:
    d = decide(step(side(300, failures=30, seed=1), side(300, failures=3, seed=2)), SLO_GATE, TOL)
    assert d.reason.startswith("canary 10.0% vs stable 1.0% (30/300 vs 3/300), worse by 9.0% > "
                               "tolerance 1.0%: one-sided Fisher exact two-proportion test p=")
    assert d.reason.endswith("< alpha 0.01 (95% for the gate over 5 tests)")
    assert d.pvalue is not None and d.pvalue < 1e-4
    d = decide(step(side(78, degraded=54, seed=1), side(86, degraded=57, seed=2)), SLO_GATE, TOL)
    assert d.reason.startswith("canary 69.2% (54/78) misses the SLO 5.00% and stable 66.3% (57/86) "
                               "misses it too, the canary not significantly worse: one-sided "
                               "Boschloo exact two-proportion test p=0.")
    assert d.reason.endswith("short of capacity, not a bad candidate")
    assert d.pvalue is not None and d.pvalue > 0.2
    d = decide(step(side(300, median=60, seed=1), side(300, seed=2)), SLO_GATE, TOL)
    assert "vs stable" in d.reason and "one-sided Mann-Whitney U test p=" in d.reason


QUALITY = [
    ("equal", {"ranker ndcg@10": 0.92}, {"ranker ndcg@10": 0.92}, PROMOTE, "ranker ndcg@10"),
    ("better", {"ranker ndcg@10": 0.90}, {"ranker ndcg@10": 0.95}, PROMOTE, "ranker ndcg@10"),
    ("within the drop", {"ranker ndcg@10": 0.92}, {"ranker ndcg@10": 0.911}, PROMOTE, "ranker ndcg@10"),
    ("beyond the drop", {"ranker ndcg@10": 0.92}, {"ranker ndcg@10": 0.90}, ROLLBACK, "ranker ndcg@10"),
    ("the worst component decides", {"ranker ndcg@10": 0.92, "recall ndcg@10": 0.07},
     {"ranker ndcg@10": 0.95, "recall ndcg@10": 0.05}, ROLLBACK, "recall ndcg@10"),
    ("candidate lacks one", {"ranker ndcg@10": 0.92}, {}, ROLLBACK, "ranker ndcg@10"),
    ("nothing to compare", {}, {}, ROLLBACK, "ndcg@10"),
    ("sequence within the drop", {"ranker ndcg@10": 0.92, "sequence ndcg@10": 0.30},
     {"ranker ndcg@10": 0.92, "sequence ndcg@10": 0.295}, PROMOTE, "sequence ndcg@10"),
    ("sequence beyond the drop", {"ranker ndcg@10": 0.92, "sequence ndcg@10": 0.30},
     {"ranker ndcg@10": 0.95, "sequence ndcg@10": 0.28}, ROLLBACK, "sequence ndcg@10"),
    ("candidate without a sequence component", {"ranker ndcg@10": 0.92, "sequence ndcg@10": 0.30},
     {"ranker ndcg@10": 0.95}, ROLLBACK, "sequence ndcg@10"),
    ("first sequence model", {"ranker ndcg@10": 0.92},
     {"ranker ndcg@10": 0.92, "sequence ndcg@10": 0.01}, PROMOTE, "ranker ndcg@10"),
    ("neither has a sequence model", {"ranker ndcg@10": 0.92, "recall ndcg@10": 0.07},
     {"ranker ndcg@10": 0.92, "recall ndcg@10": 0.07}, PROMOTE, "ranker ndcg@10"),
    ("only a first sequence model", {}, {"sequence ndcg@10": 0.3}, ROLLBACK, "ndcg@10"),
]


@pytest.mark.parametrize(("case", "stable", "candidate", "action", "metric"), QUALITY,
                         ids=[q[0] for q in QUALITY])
def test_quality_guard(case: str, stable: dict, candidate: dict, action: str, metric: str) -> None:
    decision = quality_guard(stable, candidate, max_drop=0.01)
    assert (decision.action, decision.metric) == (action, metric), decision


@pytest.mark.parametrize("ranker_key", ["ndcg_at_10", "ndcg@10"], ids=["current", "legacy"])
def test_bundle_quality_reads_the_manifests(tmp_path: Path, ranker_key: str) -> None:
    # Bundles on disk from before keep the ranker's ``ndcg@10``; they compare with new ones.
    for component, metrics in (("ranker", {ranker_key: 0.9}), ("recall", {"model": {"ndcg_at_10": 0.07}})):
        (tmp_path / component).mkdir()
        (tmp_path / component / "manifest.json").write_text(json.dumps({
            "component": component, "version": "v1", "created": "2026-01-01T00:00:00+00:00",
            "files": {}, "metrics": metrics}))
    assert bundle_quality(tmp_path) == {RANKER_NDCG: 0.9, RECALL_NDCG: 0.07}
    assert bundle_quality(tmp_path / "nothing") == {}


def _manifest(folder: Path, component: str, metrics: dict[str, object]) -> None:
    (folder / component).mkdir(parents=True)
    (folder / component / "manifest.json").write_text(json.dumps({
        "component": component, "version": "v1", "created": "2026-01-01T00:00:00+00:00",
        "files": {}, "metrics": metrics}))


#: What ``training.sequence.build.export_sequence`` records in the sequence manifest.
SEQUENCE_METRICS = {"ndcg_at_10": 0.31, "hit_rate_at_10": 0.5, "mrr": 0.2, "users": 40,
                    "popularity_ndcg_at_10": 0.05, "valid_ndcg_at_10": 0.3, "train_seconds": 2.0}


def test_bundle_quality_reads_the_sequence_manifest(tmp_path: Path) -> None:
    _manifest(tmp_path, "ranker", {"ndcg_at_10": 0.9})
    _manifest(tmp_path, "sequence", SEQUENCE_METRICS)
    assert bundle_quality(tmp_path) == {RANKER_NDCG: 0.9, SEQUENCE_NDCG: 0.31}
    _manifest(tmp_path / "no-metrics", "sequence", {"users": 40})
    assert bundle_quality(tmp_path / "no-metrics") == {}


def test_guard_on_bundles_with_and_without_a_sequence_component(tmp_path: Path) -> None:
    """End to end over bundle folders: stable with a sequence model, candidates without one,
    with a worse one and with a first one."""
    stable, without, worse, first = (tmp_path / n for n in ("stable", "without", "worse", "first"))
    for bundle in (stable, without, worse, first):
        _manifest(bundle, "ranker", {"ndcg_at_10": 0.9})
    _manifest(stable, "sequence", SEQUENCE_METRICS)
    _manifest(worse, "sequence", {**SEQUENCE_METRICS, "ndcg_at_10": 0.29})
    _manifest(first, "sequence", SEQUENCE_METRICS)

    refused = quality_guard(bundle_quality(stable), bundle_quality(without), max_drop=0.01)
    assert (refused.action, refused.metric) == (ROLLBACK, SEQUENCE_NDCG)
    assert "no sequence component" in refused.reason and "sequence.enabled=false" in refused.reason
    assert "0.3100" in refused.reason

    dropped = quality_guard(bundle_quality(stable), bundle_quality(worse), max_drop=0.01)
    assert (dropped.action, dropped.metric) == (ROLLBACK, SEQUENCE_NDCG)
    assert dropped.reason == "candidate 0.2900 vs stable 0.3100 (drop +0.0200, limit 0.0100)"

    introduced = quality_guard(bundle_quality(without), bundle_quality(first), max_drop=0.01)
    assert (introduced.action, introduced.metric) == (PROMOTE, RANKER_NDCG)
    assert "sequence ndcg@10 0.3100 is new in the candidate" in introduced.reason


def test_bundle_quality_leaves_out_what_a_bundle_does_not_record(tmp_path: Path) -> None:
    (tmp_path / "ranker").mkdir()
    (tmp_path / "ranker" / "manifest.json").write_text(json.dumps({
        "component": "ranker", "version": "v1", "created": "2026-01-01T00:00:00+00:00",
        "files": {}, "metrics": {"ms_per_request_p50": 3.0}}))
    assert bundle_quality(tmp_path) == {}
    assert quality_guard({}, bundle_quality(tmp_path), max_drop=0.01).action == ROLLBACK


# ------------------------------------------------------------------------------------ the loop


def _measure(script: dict[int, list[StepStats]]):  # type: ignore[no-untyped-def]
    calls: list[int] = []

    def measure(percent: int) -> StepStats:
        calls.append(percent)
        return script[percent].pop(0)

    return measure, calls


def test_gate_promotes_through_every_step() -> None:
    measure, calls = _measure({10: [step(side(seed=1), side(seed=2), 10)],
                               50: [step(side(seed=3), side(seed=4), 50)],
                               100: [step(side(seed=5), None, 100)]})
    traffic = LocalTraffic("A", "B")
    lines: list[str] = []
    result = run_gate([10, 50, 100], traffic, measure, SLO_GATE, TOL,
                      Decision(PROMOTE, "ranker ndcg@10", "ok"), echo=lines.append)
    assert result.action == PROMOTE and result.exit_code == 0 and calls == [10, 50, 100]
    assert traffic.outcome == "promoted" and traffic.percent == 100
    # At 100% stable got nothing: the canary is compared with stable's last measurement.
    assert any("comparing with its last measurement" in line for line in lines)
    assert lines[-1].startswith("PROMOTED after 3 steps")
    assert "95% confidence for the gate" in lines[0]


def test_gate_rolls_back_and_stops() -> None:
    measure, calls = _measure({10: [step(side(seed=1), side(seed=2))],
                               50: [step(side(median=100, seed=3), side(seed=4), 50)]})
    traffic = LocalTraffic("A", "B")
    lines: list[str] = []
    result = run_gate([10, 50, 100], traffic, measure, SLO_GATE, TOL, echo=lines.append)
    assert (result.action, result.decision.metric, result.percent) == (ROLLBACK, "p99_ms", 50)
    assert calls == [10, 50] and traffic.outcome == "rolled back" and result.exit_code == 1
    assert lines[-1].startswith("ROLLED BACK at 50% because of p99_ms: canary ")
    assert "Mann-Whitney U test p=" in lines[-1]


def test_gate_holds_then_stops_without_rolling_back() -> None:
    few = step(side(3, seed=1), side(seed=2))
    measure, calls = _measure({10: [few, few, few]})
    traffic = LocalTraffic("A", "B")
    lines: list[str] = []
    result = run_gate([10, 100], traffic, measure, SLO_GATE,
                      Tolerance(min_requests=20, max_holds=2), echo=lines.append)
    assert calls == [10, 10, 10]
    assert (result.action, result.decision.metric, result.exit_code) == (STOP, "requests", 3)
    assert result.outcome == "stopped: inconclusive" and traffic.outcome == ""
    assert result.decision.reason.startswith("held 3 times at 10%")
    # Holds pool: the third look judges the 9 canary requests of all three.
    assert "9 requests" in result.decision.reason
    assert lines[-1].startswith("STOPPED at 10% (stopped: inconclusive)")


def test_gate_short_of_capacity_stops_without_rollback() -> None:
    def short(seed: int) -> StepStats:
        return step(side(78, degraded=54, seed=seed), side(86, degraded=57, seed=seed + 1), 50)

    measure, calls = _measure({50: [short(1), short(3), short(5)]})
    traffic = LocalTraffic("A", "B")
    lines: list[str] = []
    result = run_gate([50, 100], traffic, measure, SLO_GATE, TOL, echo=lines.append)
    assert calls == [50, 50, 50] and result.action == STOP and result.exit_code == 3
    assert (result.decision.action, result.decision.metric) == (SHORT_OF_CAPACITY, "degraded_ratio")
    assert result.outcome == "stopped: short of capacity" and traffic.outcome == ""
    assert "canary 69.2% (162/234)" in result.decision.reason  # pooled over the three looks
    assert any("the canary keeps 50%" in line for line in lines)


def test_gate_hold_then_promote_pools_the_measurements() -> None:
    measure, calls = _measure({10: [step(side(12, seed=1), side(100, seed=2)),
                                    step(side(12, seed=3), side(100, seed=4))],
                               100: [step(side(seed=5), None, 100)]})
    result = run_gate([10, 100], LocalTraffic("A", "B"), measure, SLO_GATE, TOL,
                      echo=lambda _: None)
    assert calls == [10, 10, 100] and result.action == PROMOTE
    assert [d.action for _, d in result.history] == [HOLD, PROMOTE, PROMOTE]


def test_gate_quality_rollback_sends_no_traffic() -> None:
    measure, calls = _measure({})
    result = run_gate([10, 100], LocalTraffic("A", "B"), measure, SLO_GATE, TOL,
                      Decision(ROLLBACK, "ranker ndcg@10", "dropped"), echo=lambda _: None)
    assert result.action == ROLLBACK and result.percent == 0 and calls == []


@pytest.mark.parametrize("plan", [[], [50, 10], [0, 50], [10, 120]])
def test_gate_refuses_a_bad_plan(plan: list[int]) -> None:
    with pytest.raises(ValueError, match="step plan"):
        run_gate(plan, LocalTraffic("A", "B"), lambda p: StepStats(p, stats()), SLO_GATE, TOL,
                 echo=lambda _: None)
