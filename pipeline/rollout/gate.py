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
degraded ratio, p99, p95. For each metric:

* **absolute**: the canary must meet the SLO (:class:`loadtest.slo.SLO`);
* **relative**: the canary must not be worse than stable beyond a tolerance:
  ``canary <= stable * (1 + latency_ratio) + latency_slack_ms`` for latency, and
  ``canary <= stable + ratio_slack`` for the two ratios. The multiplicative part absorbs the noise
  of short runs at small shares; the absolute slack keeps a 3 ms vs 2 ms p95 from failing a step.
  A percentile is compared only when both sides have at least ``min_tail_samples`` requests above
  it (p95: 100 requests for 5; p99: 500): the p99 of 40 requests is their maximum, and comparing
  maxima rolled back identical canaries on a busy machine. The absolute SLO applies regardless.

Then:

* the canary misses the SLO while stable misses it too and the canary is not worse than stable
  (relative check passes): **hold**, the capacity is short, not the candidate (re-measured; after
  ``max_holds`` holds in a row at one step it rolls back);
* the canary misses the SLO, or regresses against stable: **roll back**;
* the canary sent fewer than ``min_requests`` requests: **hold** (not enough evidence);
* otherwise **promote** to the next step; the metric named is the one with the least headroom.

At 100% stable gets no traffic; the canary is then compared with stable's last measurement.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from loadtest.slo import SLO, LoadStats
from shopserve.artifacts import RANKER_COMPONENT, RECALL_COMPONENT, SEQUENCE_COMPONENT
from shopserve.release import ReleaseMetrics

Verdict = Literal["promote", "hold", "rollback"]
"""What the gate decides at a step: promote to the next share, hold and re-measure, or roll back."""
PROMOTE: Verdict = "promote"
HOLD: Verdict = "hold"
ROLLBACK: Verdict = "rollback"

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
            compared with stable (the SLO check needs none).
    """

    latency_ratio: float = 0.5
    latency_slack_ms: float = 20.0
    ratio_slack: float = 0.01
    min_requests: int = 20
    max_ndcg_drop: float = 0.01
    max_holds: int = 1
    min_tail_samples: int = 5


@dataclass(frozen=True)
class StepStats:
    """What one step measured.

    Attributes:
        percent: The canary's traffic share, 0..100.
        canary: The canary's statistics.
        stable: Stable's, or ``None`` when it got no traffic or is not measured separately.
    """

    percent: int
    canary: LoadStats
    stable: LoadStats | None = None


@dataclass(frozen=True)
class Decision:
    """The gate's verdict.

    Attributes:
        action: ``promote``, ``hold`` or ``rollback``.
        metric: The metric that decided (for a promotion, the one with the least headroom).
        reason: One line that says why, with the numbers.
    """

    action: Verdict
    metric: str
    reason: str

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


_QUANTILE = {"p95_ms": 0.95, "p99_ms": 0.99}


def _comparable(metric: str, canary: LoadStats, stable: LoadStats, tol: Tolerance) -> bool:
    """Whether both sides have enough requests above the percentile to compare it."""
    q = _QUANTILE.get(metric)
    return q is None or min(canary.requests, stable.requests) * (1 - q) >= tol.min_tail_samples - 1e-9


def _relative_limit(metric: str, stable: float, tol: Tolerance) -> float:
    if metric.endswith("_ms"):
        return stable * (1 + tol.latency_ratio) + tol.latency_slack_ms
    return stable + tol.ratio_slack


def decide(step: StepStats, slo: SLO, tol: Tolerance) -> Decision:
    """The verdict of one step (see the module docstring for the rules)."""
    canary, stable = step.canary, step.stable
    if stable is not None and stable.requests < tol.min_requests:
        stable = None  # too few stable requests to be a baseline
    rollbacks: list[Decision] = []
    holds: list[Decision] = []
    headroom: list[tuple[float, str, str]] = []
    uncompared: list[str] = []
    for metric in STEP_METRICS:
        c = _value(canary, metric)
        limit = getattr(slo, _SLO_LIMIT[metric])
        s = _value(stable, metric) if stable is not None else None
        rel = None
        if stable is not None and s is not None:
            if _comparable(metric, canary, stable, tol):
                rel = _relative_limit(metric, s, tol)
            else:
                uncompared.append(metric)
        over = limit is not None and c > limit + 1e-12
        regressed = rel is not None and c > rel + 1e-12
        stable_note = f" (stable {_fmt(metric, s)})" if s is not None else ""
        if over and s is not None and s > limit + 1e-12 and not regressed:
            holds.append(Decision(HOLD, metric, f"canary {metric} {_fmt(metric, c)} and stable "
                                  f"{_fmt(metric, s)} both miss the SLO {_fmt(metric, limit)}, the "
                                  "canary no worse: short of capacity, not a bad candidate"))
        elif over:
            rollbacks.append(Decision(ROLLBACK, metric, f"canary {metric} {_fmt(metric, c)} > SLO "
                                      f"{_fmt(metric, limit)}{stable_note}"))
        elif regressed:
            how = (f"stable {_fmt(metric, s)} x {1 + tol.latency_ratio:g} + {tol.latency_slack_ms:g} ms"
                   if metric.endswith("_ms") else f"stable {_fmt(metric, s)} + {tol.ratio_slack:.2%}")
            rollbacks.append(Decision(ROLLBACK, metric, f"canary {metric} {_fmt(metric, c)} > {how} "
                                      f"= {_fmt(metric, rel)}"))
        else:
            bounds = [b for b in (limit, rel) if b is not None]
            if bounds:
                bound = min(bounds)
                # Headroom relative to the bound; a zero bound (no failures allowed) is full at 0.
                room = (bound - c) / bound if bound > 0 else (math.inf if c == 0 else -math.inf)
                headroom.append((room, metric, f"canary {metric} {_fmt(metric, c)} within "
                                 f"{_fmt(metric, bound)}{stable_note}"))
    if rollbacks:
        return rollbacks[0]
    if holds:
        return holds[0]
    if canary.requests < tol.min_requests:
        return Decision(HOLD, "requests", f"the canary answered {canary.requests} requests, fewer "
                                          f"than the {tol.min_requests} a verdict needs")
    if not headroom:
        return Decision(PROMOTE, "requests", f"{canary.requests} canary requests, no limits set")
    room, metric, line = min(headroom)
    note = (f" ({', '.join(uncompared)} not compared with stable: too few requests in the tail)"
            if uncompared else "")
    return Decision(PROMOTE, metric, f"{line}; every metric within SLO and tolerance{note}")


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
        action: ``promote`` (every step passed) or ``rollback``.
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
        """0 promoted, 1 rolled back."""
        return 0 if self.action == PROMOTE else 1


def describe_stats(stats: LoadStats | None) -> str:
    """``120 req, p95 40 ms, p99 61 ms, failed 0.00%, degraded 0.00%``."""
    if stats is None:
        return "no traffic"
    return (f"{stats.requests} req, p95 {stats.p95_ms:.0f} ms, p99 {stats.p99_ms:.0f} ms, "
            f"failed {stats.failure_ratio:.2%}, degraded {stats.degraded_ratio:.2%}")


def run_gate(plan: Sequence[int], controller: TrafficController,
             measure: Callable[[int], StepStats], slo: SLO, tol: Tolerance,
             quality: Decision | None = None, echo: Callable[[str], Any] = print) -> GateResult:
    """Walk the step plan: set the share, measure, decide; promote at the end or roll back.

    Args:
        plan: Canary shares, increasing, e.g. ``[10, 50, 100]``.
        controller: Moves the traffic.
        measure: Runs load at a share and returns what it measured.
        slo: The objectives.
        tol: Tolerances of the comparison with stable.
        quality: The quality guard's decision (a rollback there ends the gate before any traffic).
        echo: Where the report lines go.
    """
    if not plan or any(not 0 < p <= 100 for p in plan) or list(plan) != sorted(plan):
        raise ValueError(f"the step plan must be increasing shares in (0, 100], got {list(plan)}")
    history: list[tuple[int, Decision]] = []

    def finish(decision: Decision, percent: int) -> GateResult:
        if decision.action == ROLLBACK:
            echo(f"  {controller.rollback()}")
            echo(f"ROLLED BACK at {percent}% because of {decision.metric}: {decision.reason}")
        else:
            echo(f"  {controller.promote()}")
            echo(f"PROMOTED after {len(plan)} steps ({', '.join(f'{p}%' for p in plan)}): "
                 f"tightest {decision.metric}: {decision.reason}")
        return GateResult(decision.action, decision, percent, history)

    echo(f"gate: steps {' -> '.join(f'{p}%' for p in plan)}; SLO {slo.describe()}; tolerance "
         f"latency x{1 + tol.latency_ratio:g} + {tol.latency_slack_ms:g} ms, ratios "
         f"+{tol.ratio_slack:.2%}, NDCG@10 drop <= {tol.max_ndcg_drop:g}")
    if quality is not None:
        history.append((0, quality))
        echo(f"quality guard: {quality}")
        if quality.action == ROLLBACK:
            return finish(quality, 0)
    baseline: LoadStats | None = None
    decision: Decision | None = None
    for index, percent in enumerate(plan, 1):
        holds = 0
        while True:
            echo(f"step {index}/{len(plan)}: {controller.set_canary_percent(percent)}")
            step = measure(percent)
            if step.stable is not None and step.stable.requests >= tol.min_requests:
                baseline = step.stable
            elif baseline is not None:
                echo(f"  stable got {step.stable.requests if step.stable else 0} requests: "
                     "comparing with its last measurement")
                step = StepStats(step.percent, step.canary, baseline)
            echo(f"  canary: {describe_stats(step.canary)}")
            echo(f"  stable: {describe_stats(step.stable)}")
            decision = decide(step, slo, tol)
            history.append((percent, decision))
            echo(f"  -> {decision}")
            if decision.action == ROLLBACK:
                return finish(decision, percent)
            if decision.action == HOLD:
                holds += 1
                if holds > tol.max_holds:
                    return finish(Decision(ROLLBACK, decision.metric,
                                           f"held {holds} times at {percent}%: {decision.reason}"),
                                  percent)
                continue
            break
    assert decision is not None
    return finish(decision, plan[-1])
