"""The canary gate's decisions, the SLO and its check, the load shapes and the traffic mix.

Pure functions only: no locust (it monkey-patches the process on import), no servers.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from loadtest.shapes import Spike, Steady, StepRamp, make_shape
from loadtest.slo import DEFAULT_SLO_FILE, SLO, LoadStats, check, load_slo
from loadtest.traffic import MixConfig, TrafficMix
from pipeline.rollout.gate import (
    HOLD,
    PROMOTE,
    RANKER_NDCG,
    RECALL_NDCG,
    ROLLBACK,
    SEQUENCE_NDCG,
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

DECISIONS = [
    # (case, canary, stable, action, metric)
    ("healthy, like stable", stats(p95=40, p99=60), stats(p95=40, p99=60), PROMOTE, "p99_ms"),
    ("no stable baseline: SLO alone", stats(p95=40, p99=140), None, PROMOTE, "p99_ms"),
    ("p99 over the SLO", stats(p95=90, p99=412), stats(p95=40, p99=60), ROLLBACK, "p99_ms"),
    ("p95 regressed within the SLO", stats(p95=95, p99=120), stats(p95=40, p99=110), ROLLBACK,
     "p95_ms"),
    ("p95 within 1.5x + 10 ms", stats(p95=70, p99=100), stats(p95=40, p99=90), PROMOTE, "p95_ms"),
    ("a failure against a zero SLO", stats(failures=1), stats(), ROLLBACK, "failure_ratio"),
    ("failures beat latency", stats(failures=20, p99=900), stats(), ROLLBACK, "failure_ratio"),
    ("degraded over the SLO", stats(degraded=60), stats(degraded=1), ROLLBACK, "degraded_ratio"),
    ("degraded regressed", stats(degraded=40), stats(degraded=0), ROLLBACK, "degraded_ratio"),
    ("both over the SLO, canary no worse", stats(p95=90, p99=300), stats(p95=85, p99=290), HOLD,
     "p99_ms"),
    ("both over the SLO, canary worse", stats(p95=90, p99=900), stats(p95=85, p99=290), ROLLBACK,
     "p99_ms"),
    ("too few canary requests", stats(requests=5), stats(), HOLD, "requests"),
    ("too few, but failing", stats(requests=5, failures=1), stats(), ROLLBACK, "failure_ratio"),
    # 95 of 100 ms is less headroom than 140 of 150 ms; with a baseline, 95 > 10 x 1.5 + 10 would fail.
    ("too few stable requests: no baseline", stats(p95=95, p99=140), stats(requests=3, p95=10),
     PROMOTE, "p95_ms"),
    # 200 requests: 10 above p95 (compared), 2 above p99 (not: the p99 of 200 is almost the max).
    ("p99 tail too thin to compare", stats(requests=200, p95=40, p99=140),
     stats(requests=200, p95=40, p99=60), PROMOTE, "p99_ms"),
    ("p95 tail thick enough to compare", stats(requests=200, p95=95, p99=140),
     stats(requests=200, p95=40, p99=140), ROLLBACK, "p95_ms"),
    ("thin tails: the SLO still applies", stats(requests=40, p95=90, p99=300),
     stats(requests=40, p95=40, p99=60), ROLLBACK, "p99_ms"),
]


@pytest.mark.parametrize(("case", "canary", "stable", "action", "metric"), DECISIONS,
                         ids=[d[0] for d in DECISIONS])
def test_decide(case: str, canary: LoadStats, stable: LoadStats | None, action: str,
                metric: str) -> None:
    decision = decide(StepStats(10, canary, stable), SLO_GATE, TOL)
    assert (decision.action, decision.metric) == (action, metric), decision
    assert decision.reason


def test_uncompared_percentiles_are_named() -> None:
    d = decide(StepStats(10, stats(requests=200), stats(requests=200)), SLO_GATE, TOL)
    assert d.action == PROMOTE and "(p99_ms not compared with stable" in d.reason


def test_decide_reason_has_the_numbers() -> None:
    d = decide(StepStats(10, stats(p95=90, p99=412), stats(p95=40, p99=60)), SLO_GATE, TOL)
    assert str(d) == "ROLLBACK [p99_ms] canary p99_ms 412 ms > SLO 150 ms (stable 60 ms)"
    d = decide(StepStats(10, stats(p95=95, p99=120), stats(p95=40, p99=110)), SLO_GATE, TOL)
    assert d.reason == "canary p95_ms 95 ms > stable 40 ms x 1.5 + 10 ms = 70 ms"


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
    good = stats(p95=40, p99=60)
    measure, calls = _measure({10: [StepStats(10, good, good)], 50: [StepStats(50, good, good)],
                               100: [StepStats(100, good, None)]})
    traffic = LocalTraffic("A", "B")
    lines: list[str] = []
    result = run_gate([10, 50, 100], traffic, measure, SLO_GATE, TOL,
                      Decision(PROMOTE, "ranker ndcg@10", "ok"), echo=lines.append)
    assert result.action == PROMOTE and result.exit_code == 0 and calls == [10, 50, 100]
    assert traffic.outcome == "promoted" and traffic.percent == 100
    # At 100% stable got nothing: the canary is compared with stable's last measurement.
    assert any("comparing with its last measurement" in line for line in lines)
    assert lines[-1].startswith("PROMOTED after 3 steps")


def test_gate_rolls_back_and_stops() -> None:
    measure, calls = _measure({10: [StepStats(10, stats(p95=40, p99=60), stats())],
                               50: [StepStats(50, stats(p95=90, p99=400), stats())]})
    traffic = LocalTraffic("A", "B")
    lines: list[str] = []
    result = run_gate([10, 50, 100], traffic, measure, SLO_GATE, TOL, echo=lines.append)
    assert (result.action, result.decision.metric, result.percent) == (ROLLBACK, "p99_ms", 50)
    assert calls == [10, 50] and traffic.outcome == "rolled back" and result.exit_code == 1
    assert lines[-1].startswith("ROLLED BACK at 50% because of p99_ms")


def test_gate_holds_then_gives_up() -> None:
    few = StepStats(10, stats(requests=3), stats())
    measure, calls = _measure({10: [few, few, few]})
    result = run_gate([10, 100], LocalTraffic("A", "B"), measure, SLO_GATE,
                      Tolerance(min_requests=20, max_holds=2), echo=lambda _: None)
    assert calls == [10, 10, 10]
    assert (result.action, result.decision.metric) == (ROLLBACK, "requests")
    assert result.decision.reason.startswith("held 3 times at 10%")


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
