"""The canary gate: promote step by step, hold, or roll back, and say which metric decided.

Pure decision logic plus the step loop; measuring (locust) and moving traffic (Kubernetes, or the
local split) are passed in, so the same loop runs against a cluster and in the local rehearsal.

Before any traffic, the **quality guard** compares the candidate bundle's offline NDCG@10 with the
stable bundle's, per component that records one, as :class:`shopserve.release.ReleaseMetrics`
reads them (``ranker``: the packaged variant on held-out queries; ``recall``: MF on held-out
interactions; ``sequence``: the next-item model on each shopper's last item; bundles with the
legacy spellings read too). A drop beyond ``max_ndcg_drop`` on any of them rolls back. Nothing
comparable on either side also rolls back: the guard fails closed.

The sequence component is optional, so a bundle without one is handled by name: a candidate that
lacks the sequence model stable serves rolls back (turning the model off is a deploy with
``sequence.enabled=false``, not a canary: :mod:`pipeline.rollout.deploy` does it for such a bundle);
a candidate that brings the first one has nothing to be compared with, which the decision says,
and is judged on the canary steps like the rest of the release.

At each step the canary is judged on four metrics, in this order of severity: failure ratio,
degraded ratio, p99, p95, with one-sided tests at the gate's stated confidence
(:mod:`pipeline.rollout.evidence`: Boschloo's or Fisher's exact two-proportion test for the ratios,
Mann-Whitney U on per-request latencies, the exact binomial test against the SLO; the budget
``1 - confidence`` is split over every test the gate may run, so an A/A gate rolls back with
probability at most ``1 - confidence``). For each metric:

* **regressed against stable**: the comparison with stable is significant (``p < alpha``) *and*
  the effect is beyond the tolerance, as Kayenta pairs a test with an allowed effect:
  ``canary > stable + ratio_slack`` for the ratios; for a percentile,
  ``canary > stable * (1 + latency_ratio) + latency_slack_ms`` with the Mann-Whitney U test
  significant. A percentile serves as the effect only when both sides have at least
  ``min_tail_samples`` requests above it (the p99 of 40 requests is their maximum);
* **missing the SLO** (the canary's point estimate over the limit): the canary's excess is tested
  against the SLO on its own (binomial: more than the allowed share of failed, degraded, or slower
  than the limit) and against stable (two-proportion test of the shares over the limit).

Then, most severe first:

* **roll back** when the canary regressed against stable, or misses the SLO significantly on its
  own and significantly more than stable, which meets it (with no stable baseline: significantly
  on its own), or misses it significantly more than stable, which misses it too, by more than
  ``ratio_slack`` in the share over the limit;
* **short of capacity** when the canary misses the SLO and stable misses it too, the canary not
  significantly worse beyond the tolerance: the capacity is short, not the candidate;
* **hold** (measure again at the same share; the new measurement is *pooled* with the earlier
  ones) when the canary misses the SLO while stable meets it but not significantly, when either
  side has fewer than ``min_requests`` requests, or when the counts are too small for any outcome
  to be significant;
* otherwise **promote** to the next step; the metric named is the one with the least headroom.

A hold or a shortfall of capacity is measured again up to ``max_holds`` times at one step; after
that the gate **stops**, neither promoting nor rolling back (exit code 3): the canary keeps its
share, which serves no worse than stable, until an operator adds capacity and runs the gate again
or rolls back. Rolling back is kept for evidence against the candidate.

At 100% stable gets no traffic; the canary is then compared with stable's last measurement.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from loadtest.slo import SLO, LoadStats
from pipeline.rollout.evidence import (
    TESTS_PER_LOOK,
    Latencies,
    Level,
    TestResult,
    compare_latencies,
    compare_proportions,
    decidable,
    pool_stats,
    proportion_over_limit,
)
from shopserve.artifacts import RANKER_COMPONENT, RECALL_COMPONENT, SEQUENCE_COMPONENT
from shopserve.release import ReleaseMetrics

Verdict = Literal["promote", "hold", "rollback", "short_of_capacity", "stop"]
"""What the gate decides at a step: promote to the next share, hold and measure more, roll back,
or short of capacity (both sides miss the SLO alike); ``stop`` ends a gate whose holds ran out."""
PROMOTE: Verdict = "promote"
HOLD: Verdict = "hold"
ROLLBACK: Verdict = "rollback"
SHORT_OF_CAPACITY: Verdict = "short_of_capacity"
STOP: Verdict = "stop"

#: The quality guard's metric names (as they appear in decisions and the gate's report).
RANKER_NDCG = f"{RANKER_COMPONENT} ndcg@10"
RECALL_NDCG = f"{RECALL_COMPONENT} ndcg@10"
SEQUENCE_NDCG = f"{SEQUENCE_COMPONENT} ndcg@10"

#: Metrics judged at each step, most severe first.
STEP_METRICS = ("failure_ratio", "degraded_ratio", "p99_ms", "p95_ms")
_SLO_LIMIT = {"failure_ratio": "max_failure_ratio", "degraded_ratio": "max_degraded_ratio",
              "p99_ms": "p99_ms", "p95_ms": "p95_ms"}


@dataclass(frozen=True)
class Tolerance:
    """How much worse than stable the canary may be, and how much evidence a step needs.

    Attributes:
        latency_ratio: Canary latency may exceed stable's by this fraction...
        latency_slack_ms: ...plus this many milliseconds.
        ratio_slack: Canary failure and degraded ratios may exceed stable's by this much (absolute).
        min_requests: Fewest canary requests for a verdict at a step; fewer holds.
        max_ndcg_drop: Largest offline NDCG@10 drop (absolute) of the candidate bundle.
        max_holds: Holds in a row allowed at one step before rolling back.
        min_tail_samples: Requests above a percentile each side needs before that percentile is
            the effect compared with stable's (the SLO check needs none).
        confidence: The gate's confidence, 0..1: an A/A gate rolls back with probability at most
            ``1 - confidence`` (split over every test, see :mod:`pipeline.rollout.evidence`).
    """

    latency_ratio: float = 0.5
    latency_slack_ms: float = 20.0
    ratio_slack: float = 0.01
    min_requests: int = 20
    max_ndcg_drop: float = 0.01
    max_holds: int = 2
    min_tail_samples: int = 5
    confidence: float = 0.95

    def level(self, looks: int = 1) -> Level:
        """The level of each test in a gate of at most ``looks`` measurements."""
        return Level(self.confidence, TESTS_PER_LOOK * max(looks, 1))

    def looks(self, steps: int) -> int:
        """The most measurements a gate of ``steps`` steps takes: each step plus its holds."""
        return steps * (self.max_holds + 1)


@dataclass(frozen=True)
class StepStats:
    """What one step measured.

    Attributes:
        percent: The canary's traffic share, 0..100.
        canary: The canary's statistics.
        stable: Stable's, or ``None`` when it got no traffic or is not measured separately.
        canary_ms: The canary's per-request response times (``None``: not collected; the
            latency tests then cannot run and a latency over the SLO holds).
        stable_ms: Stable's.
    """

    percent: int
    canary: LoadStats
    stable: LoadStats | None = None
    canary_ms: Latencies | None = None
    stable_ms: Latencies | None = None

    def pooled(self, later: StepStats) -> StepStats:
        """This measurement and a later one at the same share, as one (a hold collects more)."""
        canary, canary_ms = pool_stats(self.canary, later.canary, self.canary_ms, later.canary_ms)
        if self.stable is None or later.stable is None:
            stable, stable_ms = later.stable or self.stable, (
                later.stable_ms if later.stable is not None else self.stable_ms)
        else:
            stable, stable_ms = pool_stats(self.stable, later.stable, self.stable_ms,
                                           later.stable_ms)
        return StepStats(later.percent, canary, stable, canary_ms, stable_ms)


@dataclass(frozen=True)
class Decision:
    """The gate's verdict.

    Attributes:
        action: ``promote``, ``hold``, ``short_of_capacity`` or ``rollback`` (``stop`` for a gate
            whose holds ran out).
        metric: The metric that decided (for a promotion, the one with the least headroom).
        reason: One line that says why, with the numbers: counts, the test, its p-value and level.
        pvalue: The p-value of the test that decided, when one did.
    """

    action: Verdict
    metric: str
    reason: str
    pvalue: float | None = None

    def __str__(self) -> str:
        return f"{self.action.upper()} [{self.metric}] {self.reason}"


# --------------------------------------------------------------------------------- quality guard


def bundle_quality(bundle: Path) -> dict[str, float]:
    """Offline NDCG@10 per component of a bundle, from its manifests (absent ones left out: a
    bundle without a sequence component has no :data:`SEQUENCE_NDCG`)."""
    release = ReleaseMetrics.from_bundle(Path(bundle))
    values = {RANKER_NDCG: release.ranker_ndcg_at_10, RECALL_NDCG: release.recall_ndcg_at_10,
              SEQUENCE_NDCG: release.sequence_ndcg_at_10}
    return {name: value for name, value in values.items() if value is not None}


def quality_guard(stable: Mapping[str, float], candidate: Mapping[str, float],
                  max_drop: float) -> Decision:
    """Roll back when the candidate's NDCG@10 drops more than ``max_drop`` below stable's on any
    component both record, or when a component of stable records one the candidate lacks.

    A metric only the candidate records (its first sequence model) is not compared; the decision's
    reason names it with its value.
    """
    missing = sorted(set(stable) - set(candidate))
    if missing:
        metric = missing[0]
        if metric == SEQUENCE_NDCG:
            return Decision(ROLLBACK, metric, (
                f"the candidate bundle has no sequence model NDCG@10 (no {SEQUENCE_COMPONENT} "
                f"component, or one without metrics) while stable's is {stable[metric]:.4f}: "
                f"to retire the sequence model deploy with sequence.enabled=false, not as a canary"))
        return Decision(ROLLBACK, metric, f"the candidate bundle records no {metric} "
                                          f"(stable: {stable[metric]:.4f})")
    shared = sorted(set(stable) & set(candidate))
    if not shared:
        return Decision(ROLLBACK, "ndcg@10", "neither bundle records an NDCG@10 to compare: "
                                             "the quality guard cannot pass it")
    new = sorted(set(candidate) - set(stable))
    note = "".join(f"; {m} {candidate[m]:.4f} is new in the candidate (stable has none to compare)"
                   for m in new)
    drops = {m: stable[m] - candidate[m] for m in shared}
    worst = max(shared, key=lambda m: drops[m])
    line = (f"candidate {candidate[worst]:.4f} vs stable {stable[worst]:.4f} "
            f"(drop {drops[worst]:+.4f}, limit {max_drop:.4f}){note}")
    if drops[worst] > max_drop + 1e-12:
        return Decision(ROLLBACK, worst, line)
    return Decision(PROMOTE, worst, line)


# ------------------------------------------------------------------------------------ one step


def _value(stats: LoadStats, metric: str) -> float:
    return float(getattr(stats, metric))


def _fmt(metric: str, value: float) -> str:
    return f"{value:.0f} ms" if metric.endswith("_ms") else f"{value:.2%}"


def _pct(value: float) -> str:
    return f"{value:.1%}"


_QUANTILE = {"p95_ms": 0.95, "p99_ms": 0.99}


def _comparable(metric: str, canary: LoadStats, stable: LoadStats, tol: Tolerance) -> bool:
    """Whether both sides have enough requests above the percentile to compare it."""
    q = _QUANTILE.get(metric)
    return q is None or min(canary.requests, stable.requests) * (1 - q) >= tol.min_tail_samples - 1e-9


def _relative_limit(metric: str, stable: float, tol: Tolerance) -> float:
    if metric.endswith("_ms"):
        return stable * (1 + tol.latency_ratio) + tol.latency_slack_ms
    return stable + tol.ratio_slack


def _events(stats: LoadStats, metric: str) -> tuple[int, int]:
    """(events, trials) of a ratio: failures among requests, degraded among successful answers."""
    if metric == "failure_ratio":
        return stats.failures, stats.requests
    return stats.degraded, max(stats.requests - stats.failures, 0)


@dataclass(frozen=True)
class _Judgement:
    action: Verdict
    metric: str
    reason: str
    pvalue: float | None = None
    room: float | None = None  # headroom to the tightest bound of a passing metric; None: unbounded

    def decision(self) -> Decision:
        return Decision(self.action, self.metric, self.reason, self.pvalue)


def _room(value: float, bound: float) -> float:
    # Headroom relative to the bound; a zero bound (no failures allowed) is full at 0.
    return (bound - value) / bound if bound > 0 else (math.inf if value == 0 else -math.inf)


def _judge_slo_miss(metric: str, what: str, own: TestResult | None, vs_stable: TestResult | None,
                    stable_misses: bool, stable_line: str, beyond_tolerance: bool) -> _Judgement:
    """A canary over the SLO: roll back, short of capacity or hold (see the module docstring).

    ``beyond_tolerance``: the canary's share over the limit exceeds stable's by more than the
    ratio tolerance (with ``vs_stable`` significant, a rollback even when both miss the SLO).
    """
    if own is None:
        return _Judgement(HOLD, metric, f"{what}, but no per-request latencies to test it: "
                                        "measuring again")
    if vs_stable is None:  # no stable baseline: the SLO alone
        if own.significant:
            return _Judgement(ROLLBACK, metric, f"{what} with no stable baseline to compare: "
                                                f"{own.describe()}", own.pvalue)
        return _Judgement(HOLD, metric, f"{what}, not significantly ({own.describe()}): "
                                        "collecting more", own.pvalue)
    if stable_misses and vs_stable.significant and beyond_tolerance:
        return _Judgement(ROLLBACK, metric, (
            f"{what} and {stable_line} misses it too, but the canary significantly more, beyond "
            f"the tolerance: {vs_stable.describe()}"), vs_stable.pvalue)
    if stable_misses:
        return _Judgement(SHORT_OF_CAPACITY, metric, (
            f"{what} and {stable_line} misses it too, the canary not significantly worse: "
            f"{vs_stable.describe()}: short of capacity, not a bad candidate"), vs_stable.pvalue)
    if own.significant and vs_stable.significant:
        return _Judgement(ROLLBACK, metric, f"{what} while {stable_line} meets it: "
                                            f"{own.describe()}; against stable "
                                            f"{vs_stable.describe()}", vs_stable.pvalue)
    return _Judgement(HOLD, metric, f"{what} while {stable_line} meets it, not significantly: "
                                    f"{own.describe()}; against stable {vs_stable.describe()}: "
                                    "collecting more", max(own.pvalue, vs_stable.pvalue))


def _judge_ratio(metric: str, canary: LoadStats, stable: LoadStats | None, limit: float | None,
                 tol: Tolerance, level: Level) -> _Judgement:
    k_c, n_c = _events(canary, metric)
    c = k_c / n_c if n_c else 0.0
    cmp: TestResult | None = None
    s = 0.0
    stable_line = ""
    if stable is not None:
        k_s, n_s = _events(stable, metric)
        s = k_s / n_s if n_s else 0.0
        cmp = compare_proportions(k_c, n_c, k_s, n_s, level)
        stable_line = f"stable {_pct(s)} ({k_s}/{n_s})"
        if cmp.significant and c - s > tol.ratio_slack + 1e-12:
            return _Judgement(ROLLBACK, metric, (
                f"canary {_pct(c)} vs stable {_pct(s)} ({k_c}/{n_c} vs {k_s}/{n_s}), worse by "
                f"{c - s:.1%} > tolerance {tol.ratio_slack:.1%}: {cmp.describe()}"), cmp.pvalue)
    if limit is not None and c > limit + 1e-12:
        own = proportion_over_limit(k_c, n_c, limit, level)
        what = f"canary {_pct(c)} ({k_c}/{n_c}) misses the SLO {_fmt(metric, limit)}"
        return _judge_slo_miss(metric, what, own, cmp, s > limit + 1e-12, stable_line,
                               c - s > tol.ratio_slack + 1e-12)
    bounds = [b for b in (limit, _relative_limit(metric, s, tol) if stable is not None else None)
              if b is not None]
    note = f" ({stable_line}; {cmp.describe()})" if cmp is not None else ""
    if not bounds:
        return _Judgement(PROMOTE, metric, f"canary {metric} {_pct(c)}{note}")
    bound = min(bounds)
    return _Judgement(PROMOTE, metric, f"canary {metric} {_pct(c)} within {_fmt(metric, bound)}"
                                       f"{note}", cmp.pvalue if cmp else None, _room(c, bound))


def _judge_latency(metric: str, step: StepStats, stable: LoadStats | None,
                   stable_ms: Latencies | None, mwu: TestResult | None, limit: float | None,
                   tol: Tolerance, level: Level) -> _Judgement:
    canary, canary_ms = step.canary, step.canary_ms
    q = _QUANTILE[metric]
    c = _value(canary, metric)
    s = _value(stable, metric) if stable is not None else None
    rel = None
    if stable is not None and s is not None and _comparable(metric, canary, stable, tol):
        rel = _relative_limit(metric, s, tol)
        if mwu is not None and mwu.significant and c > rel + 1e-12:
            return _Judgement(ROLLBACK, metric, (
                f"canary {_fmt(metric, c)} vs stable {_fmt(metric, s)} on {canary.requests} and "
                f"{stable.requests} requests, over stable x {1 + tol.latency_ratio:g} + "
                f"{tol.latency_slack_ms:g} ms = {_fmt(metric, rel)}: {mwu.describe()}"), mwu.pvalue)
    stable_line = ""
    if stable is not None and s is not None:
        stable_line = f"stable {_fmt(metric, s)}"
    if limit is not None and c > limit + 1e-12:
        own = vs_stable = None
        beyond = False
        share = f"{metric[:3]} SLO {limit:g} ms"
        what = f"canary {_fmt(metric, c)} misses the {share}"
        if canary_ms is not None and canary_ms.n:
            k_c, n_c = canary_ms.over(limit), canary_ms.n
            what += f" ({k_c}/{n_c} requests over {limit:g} ms, {1 - q:.0%} allowed)"
            own = proportion_over_limit(k_c, n_c, 1 - q, level)
            if stable is not None:
                if stable_ms is not None and stable_ms.n:
                    k_s, n_s = stable_ms.over(limit), stable_ms.n
                    stable_line += f" ({k_s}/{n_s} over)"
                    vs_stable = compare_proportions(k_c, n_c, k_s, n_s, level)
                    beyond = k_c / n_c - k_s / n_s > tol.ratio_slack + 1e-12
                else:
                    own = None  # stable's times are missing: nothing to test against
        elif stable is None:
            own = None
        return _judge_slo_miss(metric, what, own, vs_stable,
                               s is not None and s > limit + 1e-12, stable_line, beyond)
    bounds = [b for b in (limit, rel) if b is not None]
    note = f" ({stable_line})" if stable_line else ""
    if not bounds:
        return _Judgement(PROMOTE, metric, f"canary {metric} {_fmt(metric, c)}{note}")
    bound = min(bounds)
    return _Judgement(PROMOTE, metric, f"canary {metric} {_fmt(metric, c)} within "
                                       f"{_fmt(metric, bound)}{note}", None, _room(c, bound))


def decide(step: StepStats, slo: SLO, tol: Tolerance, looks: int = 1) -> Decision:
    """The verdict of one step (see the module docstring for the rules).

    Args:
        step: What the step measured (pooled over its holds).
        slo: The objectives.
        tol: Tolerances, evidence needed and the confidence.
        looks: The most measurements the gate takes (:meth:`Tolerance.looks`): the confidence is
            split over all of them. 1 judges this step alone at the stated confidence.
    """
    level = tol.level(looks)
    canary, stable, stable_ms = step.canary, step.stable, step.stable_ms
    if stable is not None and stable.requests < tol.min_requests:
        stable, stable_ms = None, None  # too few stable requests to be a baseline
    mwu = None
    if stable is not None and step.canary_ms is not None and stable_ms is not None:
        mwu = compare_latencies(step.canary_ms, stable_ms, level)
    judged: list[_Judgement] = []
    uncompared: list[str] = []
    for metric in STEP_METRICS:
        limit = getattr(slo, _SLO_LIMIT[metric])
        if metric.endswith("_ms"):
            judged.append(_judge_latency(metric, step, stable, stable_ms, mwu, limit, tol, level))
            if stable is not None and not _comparable(metric, canary, stable, tol):
                uncompared.append(metric)
        else:
            judged.append(_judge_ratio(metric, canary, stable, limit, tol, level))
    for action in (ROLLBACK, SHORT_OF_CAPACITY, HOLD):
        for judgement in judged:
            if judgement.action == action:
                return judgement.decision()
    if canary.requests < tol.min_requests:
        return Decision(HOLD, "requests", f"the canary answered {canary.requests} requests, fewer "
                                          f"than the {tol.min_requests} a verdict needs")
    if stable is not None and not decidable(canary.requests, stable.requests, level):
        return Decision(HOLD, "requests", (
            f"{canary.requests} canary and {stable.requests} stable requests are too few to "
            f"decide: no outcome could be significant at {level.describe()}"))
    bounded = [j for j in judged if j.room is not None]
    if not bounded:
        return Decision(PROMOTE, "requests", f"{canary.requests} canary requests, no limits set")
    tightest = min(bounded, key=lambda j: (j.room or 0.0, STEP_METRICS.index(j.metric)))
    note = (f" ({', '.join(uncompared)} not compared with stable: too few requests in the tail)"
            if uncompared else "")
    latency = f"; latencies {mwu.describe()}" if mwu is not None else ""
    return Decision(PROMOTE, tightest.metric, f"{tightest.reason}{latency}; every metric within "
                                              f"SLO and tolerance{note}")


# ------------------------------------------------------------------------------------ the loop


class TrafficController(Protocol):
    """Moves traffic between stable and canary; each method returns a line that says what it did."""

    def set_canary_percent(self, percent: int) -> str:
        """Give the canary ``percent`` of the traffic."""
        ...

    def promote(self) -> str:
        """Make the canary the stable version."""
        ...

    def rollback(self) -> str:
        """Send all traffic back to stable."""
        ...


@dataclass
class LocalTraffic:
    """The local rehearsal's controller: the split is the share locust sends to the canary.

    Attributes:
        stable: What stable serves (for messages).
        canary: What the canary serves.
        percent: The canary's current share.
        outcome: ``promoted`` or ``rolled back`` once decided.
    """

    stable: str
    canary: str
    percent: int = 0
    outcome: str = ""

    def set_canary_percent(self, percent: int) -> str:
        """See :class:`TrafficController`."""
        self.percent = percent
        return f"local split: canary {percent}% / stable {100 - percent}%"

    def promote(self) -> str:
        """See :class:`TrafficController`."""
        self.percent, self.outcome = 100, "promoted"
        return f"local: canary promoted, {self.canary} becomes stable"

    def rollback(self) -> str:
        """See :class:`TrafficController`."""
        self.percent, self.outcome = 0, "rolled back"
        return f"local: canary rolled back, all traffic to stable {self.stable}"


@dataclass
class GateResult:
    """How the gate ended.

    Attributes:
        action: ``promote`` (every step passed), ``rollback``, or ``stop`` (holds ran out: short of
            capacity or not enough evidence; neither promoted nor rolled back).
        decision: The decision that ended it.
        percent: The canary's share when it ended (the last step reached).
        history: Every decision, in order, with its step's share (0 for the quality guard).
    """

    action: Verdict
    decision: Decision
    percent: int
    history: list[tuple[int, Decision]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 promoted, 1 rolled back, 3 stopped (neither)."""
        return {PROMOTE: 0, STOP: 3}.get(self.action, 1)

    @property
    def outcome(self) -> str:
        """``promoted``, ``rolled back``, ``stopped: short of capacity`` or ``stopped: inconclusive``."""
        if self.action == PROMOTE:
            return "promoted"
        if self.action == ROLLBACK:
            return "rolled back"
        why = "short of capacity" if self.decision.action == SHORT_OF_CAPACITY else "inconclusive"
        return f"stopped: {why}"


def describe_stats(stats: LoadStats | None) -> str:
    """``120 req, p95 40 ms, p99 61 ms, failed 0.00%, degraded 0.00%``."""
    if stats is None:
        return "no traffic"
    return (f"{stats.requests} req, p95 {stats.p95_ms:.0f} ms, p99 {stats.p99_ms:.0f} ms, "
            f"failed {stats.failure_ratio:.2%}, degraded {stats.degraded_ratio:.2%}")


def run_gate(plan: Sequence[int], controller: TrafficController,
             measure: Callable[[int], StepStats], slo: SLO, tol: Tolerance,
             quality: Decision | None = None, echo: Callable[[str], Any] = print) -> GateResult:
    """Walk the step plan: set the share, measure, decide; promote at the end, roll back, or stop.

    A hold (or a shortfall of capacity) measures the same share again and pools the new
    measurement with the earlier ones; after ``tol.max_holds`` holds at one step the gate stops
    without promoting or rolling back, leaving the split as it is (see the module docstring).

    Args:
        plan: Canary shares, increasing, e.g. ``[10, 50, 100]``.
        controller: Moves the traffic.
        measure: Runs load at a share and returns what it measured.
        slo: The objectives.
        tol: Tolerances of the comparison with stable, and the confidence.
        quality: The quality guard's decision (a rollback there ends the gate before any traffic).
        echo: Where the report lines go.
    """
    if not plan or any(not 0 < p <= 100 for p in plan) or list(plan) != sorted(plan):
        raise ValueError(f"the step plan must be increasing shares in (0, 100], got {list(plan)}")
    history: list[tuple[int, Decision]] = []
    looks = tol.looks(len(plan))

    def finish(decision: Decision, percent: int, action: Verdict) -> GateResult:
        if action == ROLLBACK:
            echo(f"  {controller.rollback()}")
            echo(f"ROLLED BACK at {percent}% because of {decision.metric}: {decision.reason}")
        elif action == STOP:
            result = GateResult(action, decision, percent, history)
            echo(f"  traffic left as it is: the canary keeps {percent}%, serving no worse than "
                 "stable; add capacity and run the gate again, or roll back by hand")
            echo(f"STOPPED at {percent}% ({result.outcome}), neither promoted nor rolled back, "
                 f"because of {decision.metric}: {decision.reason}")
        else:
            echo(f"  {controller.promote()}")
            echo(f"PROMOTED after {len(plan)} steps ({', '.join(f'{p}%' for p in plan)}): "
                 f"tightest {decision.metric}: {decision.reason}")
        return GateResult(action, decision, percent, history)

    echo(f"gate: steps {' -> '.join(f'{p}%' for p in plan)}; SLO {slo.describe()}; tolerance "
         f"latency x{1 + tol.latency_ratio:g} + {tol.latency_slack_ms:g} ms, ratios "
         f"+{tol.ratio_slack:.2%}, NDCG@10 drop <= {tol.max_ndcg_drop:g}; one-sided tests at "
         f"{tol.confidence:.0%} confidence for the gate, {tol.level(looks).describe()}; "
         f"at most {tol.max_holds} holds a step")
    if quality is not None:
        history.append((0, quality))
        echo(f"quality guard: {quality}")
        if quality.action == ROLLBACK:
            return finish(quality, 0, ROLLBACK)
    baseline: tuple[LoadStats, Latencies | None] | None = None
    decision: Decision | None = None
    for index, percent in enumerate(plan, 1):
        holds = 0
        pooled: StepStats | None = None
        while True:
            echo(f"step {index}/{len(plan)}: {controller.set_canary_percent(percent)}")
            fresh = measure(percent)
            pooled = fresh if pooled is None else pooled.pooled(fresh)
            step = pooled
            if holds:
                echo(f"  pooled with the {holds} earlier measurement(s) at {percent}%")
            if step.stable is not None and step.stable.requests >= tol.min_requests:
                baseline = (step.stable, step.stable_ms)
            elif baseline is not None:
                echo(f"  stable got {step.stable.requests if step.stable else 0} requests: "
                     "comparing with its last measurement")
                step = replace(step, stable=baseline[0], stable_ms=baseline[1])
            echo(f"  canary: {describe_stats(step.canary)}")
            echo(f"  stable: {describe_stats(step.stable)}")
            decision = decide(step, slo, tol, looks)
            history.append((percent, decision))
            echo(f"  -> {decision}")
            if decision.action == ROLLBACK:
                return finish(decision, percent, ROLLBACK)
            if decision.action in (HOLD, SHORT_OF_CAPACITY):
                holds += 1
                if holds > tol.max_holds:
                    return finish(replace(decision, reason=f"held {holds} times at {percent}%: "
                                                           f"{decision.reason}"), percent, STOP)
                continue
            break
    assert decision is not None
    return finish(decision, plan[-1], PROMOTE)
