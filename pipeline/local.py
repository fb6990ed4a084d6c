"""The local stack: which servers it runs, on which ports, and ``shopserve up``.

Each component runs exactly as in a pod (``python -m <package>``), configured by environment
variables, bound to 127.0.0.1, under :mod:`pipeline.supervisor`. ``up`` (``make up``), the stack
evaluation, the canary rehearsal and the benchmarks all take the stack from here.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import httpx

from pipeline.supervisor import Component, Stack, free_port
from shopserve.artifacts import (
    CATALOG_COMPONENT,
    MANIFEST,
    RANKER_COMPONENT,
    RECALL_COMPONENT,
    SEQUENCE_COMPONENT,
)
from shopserve.catalog_files import CatalogFiles
from shopserve.protocol import (
    DEGRADED,
    ITEM_IDS,
    QUERY,
    SCORES,
    SEARCH_MODEL,
    STAGE_MS,
    TITLES,
    USER_ID,
)

#: The bundle ``make up`` builds and serves.
DEFAULT_BUNDLE = Path("artifacts/demo")


@dataclass(frozen=True)
class StackPorts:
    """Ports of the local stack (DESIGN.md, "Local ports")."""

    search_http: int = 8080
    search_grpc: int = 8081
    recall_http: int = 8090
    recall_grpc: int = 8091
    ranker_http: int = 8000
    ranker_grpc: int = 8001
    ranker_metrics: int = 8002

    @classmethod
    def free(cls) -> StackPorts:
        """Every port free on loopback right now (a second stack beside the default one)."""
        return cls(*(free_port() for _ in fields(cls)))


def stack_components(
    bundle: Path, ports: StackPorts, search_env: dict[str, str] | None = None
) -> list[Component]:
    """The three servers of the local stack on a bundle, dependencies first."""
    return [
        Component("recall", "predictors.recall", ports.recall_http, {
            "RECALL_BUNDLE_DIR": str(bundle / RECALL_COMPONENT),
            "RECALL_HTTP_PORT": str(ports.recall_http),
            "RECALL_GRPC_PORT": str(ports.recall_grpc),
        }),
        Component("ranker", "predictors.ranker", ports.ranker_http, {
            "RANKER_BUNDLE": str(bundle / RANKER_COMPONENT),
            # The same Triton serves seq-recommender when the bundle has one ("": it has none).
            "RANKER_SEQUENCE_BUNDLE": (str(bundle / SEQUENCE_COMPONENT)
                                       if (bundle / SEQUENCE_COMPONENT / MANIFEST).is_file() else ""),
            "RANKER_HTTP_PORT": str(ports.ranker_http),
            "RANKER_GRPC_PORT": str(ports.ranker_grpc),
            "RANKER_METRICS_PORT": str(ports.ranker_metrics),
        }),
        Component("search", "transformers_pre", ports.search_http, {
            "SEARCH_BUNDLE_DIR": str(bundle),
            "SEARCH_HTTP_PORT": str(ports.search_http),
            "SEARCH_GRPC_PORT": str(ports.search_grpc),
            "SEARCH_RECALL_HOST": f"127.0.0.1:{ports.recall_grpc}",
            "SEARCH_RANKER_HOST": f"127.0.0.1:{ports.ranker_grpc}",
            # The local Triton serves the sequence recommender beside the ranker.
            "SEARCH_SEQUENCE_HOST": f"127.0.0.1:{ports.ranker_grpc}",
            # ... and the query encoder of the semantic path.
            "SEARCH_SEMANTIC_HOST": f"127.0.0.1:{ports.ranker_grpc}",
            **(search_env or {}),
        }),
    ]


class _Interrupted(Exception):
    """SIGINT or SIGTERM arrived while the stack was starting."""


def _interrupt(signum: int, frame: object) -> None:
    raise _Interrupted(signal.Signals(signum).name)


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings as a dict.

    Raises:
        ValueError: one has no ``=``.
    """
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def _cmd_up(args: argparse.Namespace) -> int:
    bundle = Path(args.bundle)
    for component in (CATALOG_COMPONENT, RECALL_COMPONENT, RANKER_COMPONENT):
        if not (bundle / component / MANIFEST).is_file():
            print(f"no {component} component in {bundle}; run `make up` or "
                  f"`shopserve build-demo --out {bundle}` first", file=sys.stderr)
            return 2
    ports = StackPorts.free() if args.ports == "free" else StackPorts()
    components = stack_components(bundle, ports)
    # Ctrl-C or SIGTERM while starting stops what has started (the children are in sessions of
    # their own: nothing else would); once running, the supervisor handles both.
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    stack = Stack(components, bundle.parent / "logs")
    reason, failure = "", ""
    try:
        reason = _run_up(args, bundle, ports, stack)
    except _Interrupted as exc:
        reason = f"{exc} while starting"
    except RuntimeError as exc:  # CrashLoop, or a component that did not start the first time
        failure = str(exc)
    finally:
        # A second Ctrl-C must not cut the stop short and leave servers behind.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        if stack.processes:
            print("stopping ...", flush=True)
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failure:
        print(failure, file=sys.stderr)
        print(f"stopped: {failure.splitlines()[0]}", flush=True)
        return 1
    print(f"stopped: {reason}", flush=True)
    return 0


def _run_up(args: argparse.Namespace, bundle: Path, ports: StackPorts, stack: Stack) -> str:
    """Start the stack, show it, supervise it; why it stopped (raises when it could not run)."""
    start = time.perf_counter()
    try:
        ready = stack.start()
    except RuntimeError as exc:
        raise RuntimeError(f"the stack did not start: {exc}") from exc
    print(f"ready in {time.perf_counter() - start:.1f}s ("
          + ", ".join(f"{n} {s:.1f}s" for n, s in ready.items()) + ")")
    print(f"  search      http://127.0.0.1:{ports.search_http}  grpc :{ports.search_grpc}  "
          "metrics /metrics")
    print(f"  mf-recall   http://127.0.0.1:{ports.recall_http}  grpc :{ports.recall_grpc}  "
          "metrics /metrics")
    print(f"  bert-ranker http://127.0.0.1:{ports.ranker_http}  grpc :{ports.ranker_grpc}  "
          f"metrics :{ports.ranker_metrics}/metrics (Triton)")
    if (bundle / SEQUENCE_COMPONENT / MANIFEST).is_file():
        print(f"  seq-recommender on the same Triton (http :{ports.ranker_http}, "
              f"grpc :{ports.ranker_grpc})")
    print(f"  logs in {stack.log_dir}")
    _sample_search_request(bundle, stack.components[-1].url)
    if args.check:
        return "--check: started and answered"
    print(f"\nPress Ctrl-C to stop. A component that exits is restarted (backoff "
          f"{stack.backoff_initial_s:g}s doubling to {stack.backoff_max_s:g}s; more than "
          f"{stack.max_restarts} restarts within {stack.restart_window_s:g}s stop everything).",
          flush=True)
    reason = stack.supervise()
    return f"{reason} received" if reason.startswith("SIG") else reason


def _sample_search_request(bundle: Path, url: str) -> None:
    user = int(CatalogFiles.open(bundle / CATALOG_COMPONENT).events().user_ids[-1])
    for title, query in (("Search", "red sneakers"), ("Recommendations (no query)", "")):
        body = {"inputs": [
            {"name": QUERY, "shape": [1], "datatype": "BYTES", "data": [query]},
            {"name": USER_ID, "shape": [1], "datatype": "INT64", "data": [user]},
        ], "parameters": {"top_n": 5}}
        print(f"\n{title} for user {user}:")
        print(f"  curl -s {url}/v2/models/{SEARCH_MODEL}/infer -H 'Content-Type: application/json' "
              f"-d '{json.dumps(body)}'")
        response = httpx.post(f"{url}/v2/models/{SEARCH_MODEL}/infer", json=body, timeout=30)
        response.raise_for_status()
        payload = response.json()
        outputs = {o["name"]: o for o in payload["outputs"]}
        params = payload.get("parameters") or {}
        for rank, (item, score, name) in enumerate(zip(
                outputs[ITEM_IDS]["data"], outputs[SCORES]["data"], outputs[TITLES]["data"],
                strict=True), 1):
            print(f"  {rank}. {name}  (item {item}, score {score:.3f})")
        print(f"  degraded: {params.get(DEGRADED) or 'none'}; stage ms: {params.get(STAGE_MS)}")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``up`` to the ``shopserve`` parser."""
    up = sub.add_parser("up", help="run the local stack on a bundle, restarting a component that "
                                   "exits (see Stack.supervise)")
    up.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    up.add_argument("--check", action="store_true",
                    help="start, send the sample request, then stop (for scripts)")
    up.add_argument("--ports", choices=["default", "free"], default="default",
                    help="default: the documented ports (DESIGN.md); free: any free loopback "
                         "ports (a second stack beside the default one, tests)")
    up.set_defaults(func=_cmd_up)
