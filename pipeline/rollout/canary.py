"""``shopserve loadtest`` and ``shopserve gate``: load tests and the canary gate.

* ``loadtest`` runs :mod:`loadtest.locustfile` headless in a child process (locust monkey-patches
  its own process with gevent) against ``--host`` (default the local stack,
  ``http://127.0.0.1:8080``), writes CSV, HTML and a JSON summary, and exits non-zero when the SLO
  is missed.
* ``gate`` walks a step plan (``--steps 10,50,100``): sets the canary's share, runs locust,
  judges canary against stable and the SLO with one-sided tests at ``--confidence``
  (:mod:`pipeline.rollout.gate`, :mod:`pipeline.rollout.evidence`), and promotes, holds (pooling
  more requests), stops when both sides are short of capacity, or rolls back, printing the metric,
  the test, its p-value and the counts that decided. Each step's per-request response times come
  from locust's own histogram (``--json-file``, ``load-requests.json`` beside the CSVs). The
  candidate bundle's offline NDCG@10 is checked against the stable one's before any traffic.
  Exit 0 promoted, 1 rolled back, 2 bad arguments, 3 stopped (neither promoted nor rolled back).

  - ``--local`` rehearses without a cluster: two local stacks, stable and canary (the canary may
    differ by bundle and/or settings, ``--canary-env SEARCH_FAULT_DELAY_MS=300``); locust sends
    each request to the canary with the step's probability. With one bundle for both, the two
    transformers share one recall and one ranker process (what differs is the transformer's
    settings); with two bundles, two full stacks start. ``--stable-url``/``--canary-url`` use
    stacks that already run instead.
  - ``--repeat N`` (with ``--local``) runs the whole gate N times in a row on the same stacks and
    prints a table of the outcomes; with one bundle on both sides and no ``--canary-env`` that is
    an A/A check of the gate itself: identical versions must not be rolled back.
  - In a cluster the share is set through the Kubernetes API (:mod:`pipeline.rollout.kube`) on
    ``--isvc``/``--namespace``; locust measures ``--url`` as stable and ``--canary-url`` as the
    canary. What we assume of KServe: with tag routing (the InferenceService annotation
    ``serving.kserve.io/enable-tag-routing: "true"``, Knative mode) the previous revision is served
    at ``prev-<host>`` and the candidate at ``latest-<host>``; pass those. In Standard mode give the
    canary predictor's own Service (``<isvc>-<canary>-predictor``) through a port-forward or the
    gateway. Without ``--canary-url`` every request goes to ``--url`` (the mixed service) and is
    judged as the canary's against the SLO alone, with no comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from loadtest.runner import LoadRun, run_locust
from loadtest.slo import DEFAULT_SLO_FILE, SLO, LoadStats, load_slo
from pipeline.local import DEFAULT_BUNDLE, parse_env
from pipeline.rollout.evidence import Latencies
from pipeline.rollout.gate import (
    ROLLBACK,
    Decision,
    GateResult,
    LocalTraffic,
    StepStats,
    Tolerance,
    TrafficController,
    bundle_quality,
    quality_guard,
    run_gate,
)

DEFAULT_HOST = "http://127.0.0.1:8080"


def _slo(args: argparse.Namespace) -> SLO:
    return load_slo(args.slo).merged(p95_ms=args.p95_ms, p99_ms=args.p99_ms,
                                     max_failure_ratio=args.max_failure_ratio,
                                     max_degraded_ratio=args.max_degraded_ratio)


def _slo_flags(slo: SLO) -> list[str]:
    # The locustfile takes the whole SLO as pairs: one spelling travels to the child.
    pairs = ",".join(f"{k}={'none' if v is None else v}" for k, v in slo.as_dict().items())
    return ["--slo", pairs]


def _out_dir(args: argparse.Namespace, kind: str) -> Path:
    if args.out:
        return Path(args.out)
    return Path("artifacts") / kind / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


# ------------------------------------------------------------------------------------ loadtest


def _cmd_loadtest(args: argparse.Namespace) -> int:
    try:
        slo = _slo(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"bad SLO: {exc}", file=sys.stderr)
        return 2
    out = _out_dir(args, "loadtest")
    extra = ["--step-users", str(args.step_users), "--step-seconds", str(args.step_seconds),
             "--steps", str(args.steps), "--spike-users", str(args.spike_users),
             "--spike-seconds", str(args.spike_seconds)]
    run = LoadRun(host=args.host, out_dir=out, prefix="load", users=args.users,
                  spawn_rate=args.spawn_rate or float(args.users),
                  run_time_s=None if args.shape == "step" else args.run_time, shape=args.shape,
                  bundle=args.bundle, slo=_slo_flags(slo)[1], rate_per_user=args.rate_per_user,
                  extra=extra)
    print(f"locust against {args.host}: {args.shape} shape, {args.users} users; SLO {slo.describe()}")
    result = run_locust(run, echo=not args.quiet)
    if result.summary is None:
        print(f"locust wrote no summary (exit {result.returncode})", file=sys.stderr)
        if args.quiet:
            print(result.output[-3000:], file=sys.stderr)
        return result.returncode or 2
    if args.quiet:  # otherwise locust's own output already ended with these lines
        print("\n".join(line for line in result.output.splitlines() if line.startswith("shopserve: ")))
    print(f"reports: {run.csv_prefix}_stats.csv, {run.html_path}, {run.summary_path}")
    return result.returncode


# ------------------------------------------------------------------------------------ gate


@dataclass
class LocustMeasure:
    """Runs locust at a step's share and turns its summary into :class:`StepStats`.

    Attributes:
        stable_url: Stable's base URL (or the service's, in a cluster without ``canary_url``).
        canary_url: The canary's base URL; empty sends everything to ``stable_url``.
        bundle: Bundle whose query log feeds the traffic mix.
        out_dir: Reports of each step go to ``<out_dir>/step-<n>-<percent>``.
        seconds: Length of each step's run.
        users: Concurrent locust users.
        rate_per_user: Requests/s per user; 0 sends back to back.
        echo: Stream locust's own output.
    """

    stable_url: str
    canary_url: str
    bundle: Path
    out_dir: Path
    seconds: float
    users: int
    rate_per_user: float = 0.0
    echo: bool = False
    _runs: int = 0

    def __call__(self, percent: int) -> StepStats:
        """Measure at ``percent``."""
        self._runs += 1
        out = self.out_dir / f"step-{self._runs}-{percent}"
        run = LoadRun(host=self.stable_url, out_dir=out,
                      users=self.users, spawn_rate=float(self.users), run_time_s=self.seconds,
                      bundle=self.bundle, canary_host=self.canary_url, canary_percent=percent,
                      rate_per_user=self.rate_per_user,
                      # A stream of its own per measurement: a hold or a repeated gate draws new
                      # requests (and new tail queries) rather than replaying the last ones.
                      seed=self._runs,
                      # locust's per-request histogram of every name, for the latency tests.
                      extra=("--json-file", str(out / REQUESTS_JSON_STEM)))
        result = run_locust(run, echo=self.echo)
        if result.summary is None:
            raise RuntimeError(f"locust failed (exit {result.returncode}):\n{result.output[-3000:]}")
        entries = read_request_entries(out / f"{REQUESTS_JSON_STEM}.json")
        if not self.canary_url:
            return StepStats(percent, LoadStats.from_dict(result.summary["total"]), None,
                             latencies_of(entries, None))
        targets = result.summary["targets"]
        canary = LoadStats.from_dict(targets.get("canary") or {"requests": 0, "failures": 0})
        stable = targets.get("stable")
        return StepStats(percent, canary, LoadStats.from_dict(stable) if stable else None,
                         latencies_of(entries, "canary"),
                         latencies_of(entries, "stable") if stable else None)


#: File stem of locust's ``--json-file`` in each step's folder (locust adds ``.json``).
REQUESTS_JSON_STEM = "load-requests"


def read_request_entries(path: Path) -> list[dict[str, Any]]:
    """The per-name entries of locust's ``--json-file`` (``[]`` when locust wrote none)."""
    if not path.is_file():
        return []
    raw = json.loads(path.read_text())
    return [entry for entry in raw if isinstance(entry, dict)] if isinstance(raw, list) else []


def latencies_of(entries: Sequence[Mapping[str, Any]], target: str | None) -> Latencies | None:
    """Per-request response times of one side: the ``response_times`` histograms of the entries
    named ``... [<target>]`` (every entry when ``target`` is ``None``), or ``None`` without any."""
    histograms = [entry.get("response_times") or {} for entry in entries
                  if target is None or str(entry.get("name", "")).endswith(f"[{target}]")]
    if not entries:
        return None
    merged = Latencies()
    for histogram in histograms:
        merged = merged + Latencies.from_histogram(histogram)
    return merged


class KubeTraffic:
    """The cluster controller: :class:`pipeline.rollout.kube.InferenceServiceTraffic` behind the gate's
    :class:`~pipeline.rollout.gate.TrafficController` (imported lazily: only the cluster mode needs it)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from pipeline.rollout.kube import InferenceServiceTraffic, api_client_from_config

        client = api_client_from_config(args.kubeconfig, args.context)
        self.traffic = InferenceServiceTraffic(
            args.isvc, args.namespace, component=args.component, mode=args.mode,
            dry_run=args.dry_run, api_client=client, canary_name=args.canary_name)

    def set_canary_percent(self, percent: int) -> str:
        """See :class:`~pipeline.rollout.gate.TrafficController`."""
        return self.traffic.set_canary_percent(percent).describe()

    def promote(self) -> str:
        """See :class:`~pipeline.rollout.gate.TrafficController`."""
        return self.traffic.promote().describe()

    def rollback(self) -> str:
        """See :class:`~pipeline.rollout.gate.TrafficController`."""
        return self.traffic.rollback().describe()


@contextlib.contextmanager
def local_stacks(stable_bundle: Path, candidate_bundle: Path, search_env: dict[str, str],
                 canary_env: dict[str, str], log_dir: Path) -> Iterator[tuple[str, str]]:
    """Start stable and canary locally on free ports; yields their base URLs; stops them after.

    One bundle: one recall and one ranker shared by two transformers (they differ by settings).
    Two bundles: two full stacks.
    """
    from pipeline.local import StackPorts, stack_components
    from pipeline.supervisor import Stack, free_port

    stable_ports = StackPorts.free()
    stable = stack_components(stable_bundle, stable_ports, search_env)
    for comp in stable:
        comp.name = f"stable-{comp.name}"
    if stable_bundle.resolve() == candidate_bundle.resolve():
        canary_ports = replace(stable_ports, search_http=free_port(), search_grpc=free_port())
        canary = stack_components(candidate_bundle, canary_ports, {**search_env, **canary_env})[-1:]
    else:
        canary = stack_components(candidate_bundle, StackPorts.free(), {**search_env, **canary_env})
    for comp in canary:
        comp.name = f"canary-{comp.name}"
    with Stack([*stable, *canary], log_dir) as stack:
        stack.start(timeout=240)
        yield stable[-1].url, canary[-1].url


def _tolerance(args: argparse.Namespace) -> Tolerance:
    return Tolerance(latency_ratio=args.latency_ratio, latency_slack_ms=args.latency_slack_ms,
                     ratio_slack=args.ratio_slack, min_requests=args.min_requests,
                     max_ndcg_drop=args.max_ndcg_drop, max_holds=args.max_holds,
                     min_tail_samples=args.min_tail_samples, confidence=args.confidence)


def _cmd_gate(args: argparse.Namespace) -> int:
    try:
        slo = _slo(args)
        plan = [int(p) for p in args.steps.split(",") if p.strip()]
        search_env, canary_env = parse_env(args.search_env), parse_env(args.canary_env)
        tol = _tolerance(args)
        tol.level()  # a confidence outside (0, 1) fails here, before any stack starts
        if args.repeat < 1:
            raise ValueError(f"--repeat must be >= 1, got {args.repeat}")
    except (ValueError, FileNotFoundError) as exc:
        print(f"bad argument: {exc}", file=sys.stderr)
        return 2
    if args.repeat > 1 and not args.local:
        print("--repeat runs local rehearsals only: add --local", file=sys.stderr)
        return 2
    stable_bundle, candidate_bundle = Path(args.stable_bundle), Path(args.candidate_bundle)
    quality = quality_guard(bundle_quality(stable_bundle), bundle_quality(candidate_bundle),
                            tol.max_ndcg_drop)
    out = _out_dir(args, "gate")
    traffic_bundle = Path(args.traffic_bundle or stable_bundle)
    print(f"stable bundle {stable_bundle}, candidate bundle {candidate_bundle}; reports in {out}")

    def gate(controller: TrafficController, stable_url: str, canary_url: str,
             run_out: Path = out) -> GateResult:
        measure = LocustMeasure(stable_url, canary_url, traffic_bundle, run_out, args.step_seconds,
                                args.users, args.rate_per_user, echo=args.verbose)
        return run_gate(plan, controller, measure, slo, tol, quality, echo=_print)

    def local_controller() -> LocalTraffic:
        return LocalTraffic(stable=_describe_side(stable_bundle, search_env),
                            canary=_describe_side(candidate_bundle, {**search_env, **canary_env}))

    def gates(stable_url: str, canary_url: str) -> int:
        if args.repeat == 1:
            return gate(local_controller(), stable_url, canary_url).exit_code
        results = []
        for run in range(1, args.repeat + 1):
            print(f"=== gate run {run}/{args.repeat}", flush=True)
            results.append(gate(local_controller(), stable_url, canary_url, out / f"run-{run}"))
        print(repeat_table(results))
        return repeat_exit_code(results)

    try:
        if args.local:
            if quality.action == ROLLBACK or (args.stable_url and args.canary_url):
                # A quality rollback needs no traffic; given URLs need no stacks.
                return gates(args.stable_url or "", args.canary_url or "")
            if args.stable_url or args.canary_url:
                print("give both --stable-url and --canary-url, or neither", file=sys.stderr)
                return 2
            print("starting the local stable and canary stacks ...")
            try:
                with local_stacks(stable_bundle, candidate_bundle, search_env, canary_env,
                                  out / "logs") as (stable_url, canary_url):
                    print(f"stable {stable_url}, canary {canary_url}")
                    return gates(stable_url, canary_url)
            except RuntimeError as exc:
                print(f"the local stacks did not start: {exc}", file=sys.stderr)
                return 2
    except ValueError as exc:
        print(f"bad argument: {exc}", file=sys.stderr)
        return 2
    if not (args.isvc and args.namespace and args.url):
        print("cluster mode needs --isvc, --namespace and --url (or use --local)", file=sys.stderr)
        return 2
    try:
        from pipeline.rollout.kube import KubeError
    except ImportError as exc:  # pragma: no cover - kubernetes is a declared dependency
        print(f"cluster mode needs the kubernetes client: {exc}", file=sys.stderr)
        return 2
    try:
        return gate(KubeTraffic(args), args.url, args.canary_url or "").exit_code
    except ValueError as exc:
        print(f"bad argument: {exc}", file=sys.stderr)
        return 2
    except KubeError as exc:
        print(f"kubernetes: {exc}", file=sys.stderr)
        return 2


def repeat_table(results: Sequence[GateResult]) -> str:
    """The outcomes of repeated gates as a table, one row a run, and a count of each outcome."""
    lines = [f"{'run':>3}  {'outcome':<26} {'at':>4}  {'metric':<15} {'p-value':>8}  reason"]
    for run, result in enumerate(results, 1):
        p = result.decision.pvalue
        lines.append(f"{run:>3}  {result.outcome:<26} {result.percent:>3}%  "
                     f"{result.decision.metric:<15} {'-' if p is None else f'{p:.2g}':>8}  "
                     f"{result.decision.reason}")
    counts: dict[str, int] = {}
    for result in results:
        counts[result.outcome] = counts.get(result.outcome, 0) + 1
    lines.append(f"{len(results)} gates: " + ", ".join(f"{n} {o}" for o, n in sorted(counts.items())))
    return "\n".join(lines)


def repeat_exit_code(results: Sequence[GateResult]) -> int:
    """1 when any run rolled back, else 3 when any stopped, else 0."""
    codes = {r.exit_code for r in results}
    return 1 if 1 in codes else 3 if 3 in codes else 0


def _print(line: str) -> None:
    print(line, flush=True)


def _describe_side(bundle: Path, env: dict[str, str]) -> str:
    settings = " ".join(f"{k}={v}" for k, v in sorted(env.items()))
    return f"{bundle}" + (f" [{settings}]" if settings else "")


# ------------------------------------------------------------------------------------ parsers


def _add_slo_flags(parser: Any) -> None:
    parser.add_argument("--slo", default=str(DEFAULT_SLO_FILE),
                        help="SLO file (YAML/JSON) or key=value,... pairs "
                             f"(default {DEFAULT_SLO_FILE}); the flags below override single limits")
    parser.add_argument("--p95-ms", type=float, default=None, help="SLO: highest p95, ms")
    parser.add_argument("--p99-ms", type=float, default=None, help="SLO: highest p99, ms")
    parser.add_argument("--max-failure-ratio", type=float, default=None, help="SLO: 0..1")
    parser.add_argument("--max-degraded-ratio", type=float, default=None, help="SLO: 0..1")


def register(sub: Any) -> None:
    """Add ``loadtest`` and ``gate`` to the ``shopserve`` subcommands."""
    load = sub.add_parser(
        "loadtest", help="locust against search (headless; CSV, HTML; exit 1 on a missed SLO)",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    load.add_argument("--host", default=DEFAULT_HOST, help=f"search base URL (default {DEFAULT_HOST})")
    load.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE,
                      help="bundle whose query log feeds the traffic mix")
    load.add_argument("--shape", choices=("steady", "step", "spike"), default="steady")
    load.add_argument("-u", "--users", type=int, default=4, help="users (the first step's, for step)")
    load.add_argument("-r", "--spawn-rate", type=float, default=None, help="users started per second")
    load.add_argument("-t", "--run-time", type=float, default=30.0, help="seconds (steady, spike)")
    load.add_argument("--step-users", type=int, default=4, help="step: users added per step")
    load.add_argument("--step-seconds", type=float, default=30.0, help="step: seconds per step")
    load.add_argument("--steps", type=int, default=5, help="step: number of steps")
    load.add_argument("--spike-users", type=int, default=16, help="spike: extra users")
    load.add_argument("--spike-seconds", type=float, default=10.0, help="spike: its length")
    load.add_argument("--rate-per-user", type=float, default=2.0,
                      help="requests/s each user offers (constant throughput), so the offered rate "
                           "is users x this; 0: back to back (closed loop, as fast as answers come)")
    _add_slo_flags(load)
    load.add_argument("--out", type=Path, default=None, help="report folder")
    load.add_argument("--quiet", action="store_true", help="do not stream locust's output")
    load.set_defaults(func=_cmd_loadtest)

    gate = sub.add_parser(
        "gate", help="canary gate: step the canary's share under locust, promote or roll back",
        description="Step a canary through --steps under locust; promote, hold, stop (short of "
                    "capacity) or roll back on one-sided tests against the SLO and stable at "
                    "--confidence, after the offline NDCG@10 guard. Exit 0 promoted, 1 rolled "
                    "back, 3 stopped.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="local rehearsal:\n  shopserve gate --local --candidate-bundle artifacts/demo "
               "--canary-env SEARCH_FAULT_DELAY_MS=300\ncluster:\n  shopserve gate -i search -n "
               "shopserve --url https://prev-search.example --canary-url https://latest-search.example "
               "--stable-bundle artifacts/A --candidate-bundle artifacts/B --dry-run")
    where = gate.add_argument_group("where")
    where.add_argument("--local", action="store_true", help="rehearse on local stacks, no cluster")
    where.add_argument("-i", "--isvc", default=None, help="cluster: the InferenceService (search)")
    where.add_argument("-n", "--namespace", default=None, help="cluster: its namespace")
    where.add_argument("--component", default="predictor", choices=("predictor", "transformer"))
    where.add_argument("--mode", default=None, choices=("Knative", "Standard"),
                       help="deployment mode (default: read from the object)")
    where.add_argument("--canary-name", default=None, help="Standard mode: the spec.canary entry")
    where.add_argument("--kubeconfig", default=None)
    where.add_argument("--context", default=None)
    where.add_argument("--dry-run", action="store_true", help="print the patches, do not apply them")
    where.add_argument("--url", default=None, help="cluster: stable's (or the service's) base URL")
    where.add_argument("--canary-url", default=None, help="cluster: the canary's own base URL")
    where.add_argument("--stable-url", default=None, help="local: a running stable stack")
    what = gate.add_argument_group("what")
    what.add_argument("--stable-bundle", type=Path, default=DEFAULT_BUNDLE)
    what.add_argument("--candidate-bundle", type=Path, default=DEFAULT_BUNDLE)
    what.add_argument("--traffic-bundle", type=Path, default=None,
                      help="bundle whose query log feeds the mix (default: the stable one)")
    what.add_argument("--search-env", action="append", default=[], metavar="KEY=VALUE",
                      help="local: a transformer setting of both stacks")
    what.add_argument("--canary-env", action="append", default=[], metavar="KEY=VALUE",
                      help="local: a transformer setting of the canary only (e.g. a fault)")
    how = gate.add_argument_group("how")
    how.add_argument("--steps", default="10,50,100", help="canary shares, e.g. 10,50,100")
    how.add_argument("--step-seconds", type=float, default=30.0, help="locust time per step")
    how.add_argument("--users", type=int, default=4, help="locust users")
    how.add_argument("--rate-per-user", type=float, default=2.0,
                     help="requests/s each user offers: the same offered load at every step "
                          "(0: back to back, where fast degraded answers would raise the load)")
    _add_slo_flags(how)
    defaults = Tolerance()
    how.add_argument("--latency-ratio", type=float, default=defaults.latency_ratio)
    how.add_argument("--latency-slack-ms", type=float, default=defaults.latency_slack_ms)
    how.add_argument("--ratio-slack", type=float, default=defaults.ratio_slack)
    how.add_argument("--min-requests", type=int, default=defaults.min_requests)
    how.add_argument("--max-ndcg-drop", type=float, default=defaults.max_ndcg_drop)
    how.add_argument("--max-holds", type=int, default=defaults.max_holds)
    how.add_argument("--min-tail-samples", type=int, default=defaults.min_tail_samples,
                     help="requests above a percentile each side needs before it is compared")
    how.add_argument("--confidence", type=float, default=defaults.confidence,
                     help="confidence of the whole gate, 0..1 (default %(default)s): an A/A gate "
                          "rolls back with at most 1 - this probability (Bonferroni over its tests)")
    how.add_argument("--repeat", type=int, default=1, metavar="N",
                     help="local: run the gate N times in a row on the same stacks and print a "
                          "table of outcomes (one bundle, no --canary-env: an A/A check)")
    how.add_argument("--out", type=Path, default=None, help="report folder")
    how.add_argument("--verbose", action="store_true", help="stream locust's output")
    gate.set_defaults(func=_cmd_gate)


__all__ = ["Decision", "KubeTraffic", "LocustMeasure", "latencies_of", "local_stacks",
           "read_request_entries", "register", "repeat_exit_code", "repeat_table"]
