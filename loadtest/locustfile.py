"""locust users that speak v2 to ``search``, with load shapes and an SLO verdict for CI.

Run headless (``shopserve loadtest`` does this for you)::

    python -m locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8080 \\
        -u 8 -r 4 -t 60s --bundle artifacts/demo --slo loadtest/slo.yaml \\
        --csv out/load --html out/load.html --summary-json out/summary.json

Every request is a v2 inference request of the traffic mix (:mod:`loadtest.traffic`): searches
drawn from the bundle's generated query log by traffic share, and a long tail (``--tail-share``,
default 0.4, env ``SHOPSERVE_TAIL_SHARE``) of queries composed fresh from the catalog's vocabulary
that occur once in the run (:mod:`loadtest.tail`). Each locust process sends one seeded stream
(``--seed``, env ``SHOPSERVE_LOAD_SEED``, and the worker's index), shared by its users, so a
process's requests are the same from run to run and its composed queries never repeat. Each
request has ``x-request-id`` set (and echoed as the v2 ``id``), named
``search`` or ``recommend`` so that URLs group by kind. A response counts as a success only when
its body is a well-formed answer: status 200, the echoed id, ``item_ids``/``scores``/``titles`` of
shape ``[1, top_n]``; one whose ``degraded`` parameter names a stage is a success that is counted
as degraded (for the degraded ratio of the SLO).

With ``--canary-host`` each request goes to the canary with probability ``--canary-percent``/100
and to ``--host`` (stable) otherwise; names get a ``[canary]`` or ``[stable]`` suffix so the two
sides keep separate statistics (used by ``shopserve gate``).

At the end the ``quitting`` listener checks the SLO over all requests, prints the verdict, writes
the ``--summary-json`` (per target and total) and sets the exit code: 0 when every objective is
met, 1 otherwise (locust's default of 1 on any failure gives way to ``max_failure_ratio``).

This file imports locust, which monkey-patches the process with gevent: load it only in a locust
process, never into the CLI or tests.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from locust import FastHttpUser, LoadTestShape, constant, constant_throughput, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import StatsEntry

from loadtest.shapes import SHAPES, Shape, make_shape
from loadtest.slo import SLO, LoadStats, check, load_slo
from loadtest.traffic import INFER_PATH, MixConfig, TrafficMix, TrafficStream, stream_rng
from shopserve.protocol import DEGRADED, ITEM_IDS, SCORES, SEARCH_MODEL, TITLES

log = logging.getLogger("shopserve.loadtest")

STABLE = "stable"
CANARY = "canary"
#: Degraded answers per target ("" when traffic is not split); merged from workers on the master.
DEGRADED_COUNTS: Counter[str] = Counter()
_MIX: dict[str, TrafficMix] = {}
#: The process's one stream of calls, shared by its users (gevent: one draw at a time).
_STREAM: dict[str, TrafficStream] = {}
#: Numbers the users of this process, for their own seeded canary draws.
_USER_NUMBERS = itertools.count()


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("shopserve")
    group.add_argument("--bundle", default=os.environ.get("SHOPSERVE_BUNDLE", "artifacts/demo"),
                       help="bundle whose catalog/ query log feeds the traffic mix")
    group.add_argument("--shape", choices=SHAPES, default="steady",
                       help="load plan: steady (-u for -t), step (ramp), spike")
    group.add_argument("--step-users", type=int, default=5, help="step shape: users added per step")
    group.add_argument("--step-seconds", type=float, default=30.0, help="step shape: seconds per step")
    group.add_argument("--steps", type=int, default=5, help="step shape: number of steps")
    group.add_argument("--spike-users", type=int, default=20, help="spike shape: extra users")
    group.add_argument("--spike-seconds", type=float, default=10.0, help="spike shape: spike length")
    group.add_argument("--spike-at", type=float, default=None,
                       help="spike shape: spike start, s (default a third of the run time)")
    group.add_argument("--rate-per-user", type=float, default=0.0,
                       help="requests/s each user offers (constant throughput); 0: back to back")
    group.add_argument("--slo", default="", help="SLO file (YAML/JSON) or key=value,... pairs")
    group.add_argument("--slo-p95-ms", type=float, default=None)
    group.add_argument("--slo-p99-ms", type=float, default=None)
    group.add_argument("--slo-max-failure-ratio", type=float, default=None)
    group.add_argument("--slo-max-degraded-ratio", type=float, default=None)
    group.add_argument("--slo-min-requests", type=int, default=None)
    group.add_argument("--canary-host", default="", help="split traffic: the canary's base URL")
    group.add_argument("--canary-percent", type=float, default=0.0,
                       help="share of requests sent to --canary-host, 0..100")
    group.add_argument("--recommend-share", type=float, default=MixConfig.recommend_share)
    group.add_argument("--anonymous-share", type=float, default=MixConfig.anonymous_share)
    group.add_argument("--filter-share", type=float, default=MixConfig.filter_share)
    group.add_argument("--top-n", type=int, default=MixConfig.top_n)
    group.add_argument("--tail-share", type=float,
                       default=float(os.environ.get("SHOPSERVE_TAIL_SHARE", MixConfig.tail_share)),
                       help="share of searches composed fresh from the catalog (queries seen once), "
                            "0..1; the rest are drawn from the logged queries by traffic share")
    group.add_argument("--seed", type=int, default=int(os.environ.get("SHOPSERVE_LOAD_SEED", "0")),
                       help="seed of the request stream (each worker process adds its index)")
    group.add_argument("--summary-json", default="", help="write the per-target summary here")


def _mix(options: Any) -> TrafficMix:
    # Loaded once per process: every user shares it.
    if "mix" not in _MIX:
        config = MixConfig(options.recommend_share, options.anonymous_share, options.filter_share,
                           options.top_n, options.tail_share)
        _MIX["mix"] = TrafficMix.from_bundle(options.bundle, config)
    return _MIX["mix"]


def _worker_index(environment: Environment) -> int:
    runner = environment.runner
    return int(runner.worker_index) if isinstance(runner, WorkerRunner) else 0


def _stream(environment: Environment) -> TrafficStream:
    # One stream per process: its composed queries are kept apart across all of its users.
    if "stream" not in _STREAM:
        options = environment.parsed_options
        _STREAM["stream"] = _mix(options).stream(options.seed, _worker_index(environment))
    return _STREAM["stream"]


def slo_from_options(options: Any) -> SLO:
    """The SLO of the file or pairs in ``--slo``, with the single-limit flags on top."""
    return load_slo(options.slo or None).merged(
        p95_ms=options.slo_p95_ms, p99_ms=options.slo_p99_ms,
        max_failure_ratio=options.slo_max_failure_ratio,
        max_degraded_ratio=options.slo_max_degraded_ratio,
        min_requests=options.slo_min_requests,
    )


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None or isinstance(environment.runner, MasterRunner):
        return
    slo_from_options(options)  # fail at start, not at the end, on a bad SLO
    if not 0 <= options.canary_percent <= 100:
        raise ValueError(f"--canary-percent must be in [0, 100], got {options.canary_percent}")
    _mix(options)


class SearchUser(FastHttpUser):
    """A shopper (or visitor) sending the v2 traffic mix to ``search``."""

    # Fail a stuck request in bounded time rather than hang the test.
    network_timeout = 30.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        """The process's seeded call stream, and this user's own seeded canary draws."""
        options = self.environment.parsed_options
        self.stream = _stream(self.environment)
        self.rng = stream_rng(options.seed, _worker_index(self.environment), "user",
                              next(_USER_NUMBERS))
        self.canary_host = (options.canary_host or "").rstrip("/")
        self.canary_share = options.canary_percent / 100.0
        rate = options.rate_per_user
        self._pace = constant_throughput(rate) if rate > 0 else constant(0)

    def wait_time(self) -> float:
        """Constant throughput of ``--rate-per-user`` requests/s, or none (back to back)."""
        return self._pace(self)

    @task
    def search(self) -> None:
        """One request of the mix, validated by body."""
        call = self.stream.next()
        target, url, name = "", INFER_PATH, call.kind
        if self.canary_host:
            target = CANARY if self.rng.random() < self.canary_share else STABLE
            if target == CANARY:
                url = self.canary_host + INFER_PATH
            name = f"{call.kind} [{target}]"
        request_id = uuid.uuid4().hex
        body = {"id": request_id, **call.body}
        with self.rest("POST", url, name=name, json=body,
                       headers={"x-request-id": request_id}) as resp:
            if resp.js is None:
                return  # rest() already marked it failed (no body or not JSON)
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.js.get('error', resp.text[:200])}")
                return
            problem = validate(resp.js, request_id, call.body["parameters"]["top_n"])
            if problem:
                resp.failure(problem)
                return
            if (resp.js.get("parameters") or {}).get(DEGRADED):
                DEGRADED_COUNTS[target] += 1


def validate(answer: dict[str, Any], request_id: str, top_n: int) -> str | None:
    """What is wrong with a 200 answer of ``search``, or ``None`` when it is well formed."""
    if answer.get("model_name") != SEARCH_MODEL:
        return f"model_name {answer.get('model_name')!r}, expected {SEARCH_MODEL!r}"
    if answer.get("id") != request_id:
        return f"id {answer.get('id')!r} does not echo the request id"
    outputs = {o.get("name"): o for o in answer.get("outputs") or []}
    for name in (ITEM_IDS, SCORES, TITLES):
        out = outputs.get(name)
        if out is None:
            return f"output {name!r} missing"
        if out.get("shape") != [1, top_n] or len(out.get("data") or []) != top_n:
            return f"output {name!r} has shape {out.get('shape')}, expected [1, {top_n}]"
    return None


class ConfiguredShape(LoadTestShape):
    """The plan named by ``--shape`` (:mod:`loadtest.shapes`), reading ``-u``, ``-r`` and ``-t``."""

    use_common_options = True

    def __init__(self) -> None:
        super().__init__()
        self.plan: Shape | None = None

    def tick(self) -> tuple[int, float] | None:
        """Users and spawn rate now, or ``None`` to stop."""
        if self.plan is None:
            assert self.runner is not None
            o = self.runner.environment.parsed_options
            self.plan = make_shape(
                o.shape, users=o.num_users or 1, spawn_rate=o.spawn_rate or 1.0,
                run_time_s=o.run_time, step_users=o.step_users, step_seconds=o.step_seconds,
                steps=o.steps, spike_users=o.spike_users, spike_seconds=o.spike_seconds,
                spike_at=o.spike_at)
        return self.plan.tick(self.get_run_time())


# ------------------------------------------------------------------------------------ results


@events.report_to_master.add_listener
def _send_degraded(client_id: str, data: dict[str, Any]) -> None:
    data["shopserve_degraded"] = dict(DEGRADED_COUNTS)
    DEGRADED_COUNTS.clear()


@events.worker_report.add_listener
def _merge_degraded(client_id: str, data: dict[str, Any]) -> None:
    DEGRADED_COUNTS.update(data.get("shopserve_degraded") or {})


def _stats_of(entries: list[StatsEntry], environment: Environment, degraded: int,
              elapsed_s: float) -> LoadStats:
    merged = StatsEntry(environment.stats, "merged", "", use_response_times_cache=False)
    for entry in entries:
        merged.extend(entry)
    if not merged.num_requests:
        return LoadStats(0, 0, degraded)
    return LoadStats(
        requests=merged.num_requests, failures=merged.num_failures, degraded=degraded,
        p50_ms=float(merged.get_response_time_percentile(0.5)),
        p95_ms=float(merged.get_response_time_percentile(0.95)),
        p99_ms=float(merged.get_response_time_percentile(0.99)),
        rps=merged.num_requests / elapsed_s if elapsed_s > 0 else 0.0,
    )


def summarise(environment: Environment) -> dict[str, Any]:
    """Totals and per-target statistics of the run, the SLO and its violations."""
    stats = environment.stats
    entries = list(stats.entries.values())
    elapsed = max(stats.last_request_timestamp - stats.start_time, 1e-9) \
        if stats.last_request_timestamp else 0.0
    total = _stats_of(entries, environment, sum(DEGRADED_COUNTS.values()), elapsed)
    targets = {}
    for target in (STABLE, CANARY):
        chosen = [e for e in entries if e.name.endswith(f"[{target}]")]
        if chosen or DEGRADED_COUNTS.get(target):
            targets[target] = _stats_of(chosen, environment, DEGRADED_COUNTS.get(target, 0),
                                        elapsed).as_dict()
    slo = slo_from_options(environment.parsed_options)
    violations = check(slo, total)
    return {
        "total": total.as_dict(),
        "targets": targets,
        "by_name": {e.name: e.num_requests for e in entries},
        "slo": slo.as_dict(),
        "violations": [{"metric": v.metric, "observed": v.observed, "limit": v.limit,
                        "message": str(v)} for v in violations],
    }


@events.quitting.add_listener
def _verdict(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    summary = summarise(environment)
    total = LoadStats.from_dict(summary["total"])
    slo = SLO.from_mapping(summary["slo"])
    print(f"shopserve: {total.requests} requests, {total.failure_ratio:.2%} failed, "
          f"{total.degraded_ratio:.2%} degraded, p50 {total.p50_ms:.0f} ms, p95 {total.p95_ms:.0f} ms, "
          f"p99 {total.p99_ms:.0f} ms, {total.rps:.1f} req/s")
    if summary["violations"]:
        print(f"shopserve: SLO MISSED ({slo.describe()}): "
              + "; ".join(v["message"] for v in summary["violations"]))
        environment.process_exit_code = 1
    else:
        print(f"shopserve: SLO met ({slo.describe()})")
        environment.process_exit_code = 0
    out = environment.parsed_options.summary_json
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(summary, indent=2))
