"""``shopserve``: the lifecycle command line.

Subcommands (``shopserve <command> --help`` for each):

* ``data``: generate the seeded catalog/behaviour/query world into a folder;
* ``train recall``: tune, train, evaluate and package the MF recall component;
* ``build-demo``: build the whole demo bundle (``make up`` runs it when the bundle is missing);
* ``up``: start the local stack on a bundle, wait until ready, show a sample request, stop on Ctrl-C;
* ``train ranker``, ``optimize ranker``, ``evaluate``, ``package``: one pipeline step each;
* ``pipeline run``: data -> train -> optimise -> evaluate -> package, cached and resumable;
* ``bundles list|show|diff|verify``: the bundle registry and lineage;
* ``deploy``: helm upgrade --install a bundle into dev, staging or prod (``--dry-run`` renders).
* ``promote``, ``rollback``: one canary traffic step through the Kubernetes API (``pipeline.kube``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np

from pipeline import deploy, registry
from pipeline import run as pipeline_run
from pipeline.run import STEP_NAMES, add_run_flags
from shopserve.artifacts import (
    CATALOG_COMPONENT,
    MANIFEST,
    RANKER_COMPONENT,
    RECALL_COMPONENT,
    read_manifest,
)
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

if TYPE_CHECKING:
    from pipeline.stack import Component

DEFAULT_BUNDLE = Path("artifacts/demo")

#: Modules that add their own subcommands: each has ``register(sub)``, which takes the
#: ``add_subparsers()`` object and adds its parsers (with ``set_defaults(func=...)``).
#: Keep a command's logic in its module; this file only assembles the parser.
COMMAND_MODULES: tuple[str, ...] = ("pipeline.kube_cli", "pipeline.canary", "pipeline.monitor")


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
        from pipeline.stack import free_port

        return cls(*(free_port() for _ in fields(cls)))


def _cmd_data(args: argparse.Namespace) -> int:
    from shopserve.data.generator import GeneratorConfig, generate

    presets = {"tiny": GeneratorConfig.tiny, "demo": GeneratorConfig.demo,
               "bench": GeneratorConfig.bench}
    start = time.perf_counter()
    dataset = generate(presets[args.size](seed=args.seed))
    dataset.save(args.out)
    print(json.dumps(dataset.summary(), indent=2))
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f}s")
    return 0


def _cmd_train_recall(args: argparse.Namespace) -> int:
    from predictors.recall.build import RecallBuildConfig, build_recall
    from predictors.recall.train import MFParams
    from shopserve.artifacts import new_version
    from shopserve.data.generator import Dataset
    from shopserve.data.movielens import load_movielens_100k

    if args.data == "movielens":
        log, items = load_movielens_100k(), None
    else:
        dataset = Dataset.load(args.data)
        log, items = dataset.events.log, dataset.item_map
    config = RecallBuildConfig(
        params=None if args.tune else MFParams(factors=args.factors, iterations=args.iterations),
    )
    manifest = build_recall(log, args.out, args.version or new_version(), items=items,
                            config=config)
    print(json.dumps(manifest.metrics, indent=2))
    return 0


def _cmd_build_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import build_demo_bundle

    try:
        result = build_demo_bundle(args.out)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(result.table())
    print(f"copied to {args.out}")
    return 0


def stack_components(
    bundle: Path, ports: StackPorts, search_env: dict[str, str] | None = None
) -> list[Component]:
    """The three servers of the local stack on a bundle, dependencies first."""
    from pipeline.stack import Component

    return [
        Component("recall", "predictors.recall", ports.recall_http, {
            "RECALL_BUNDLE_DIR": str(bundle / RECALL_COMPONENT),
            "RECALL_HTTP_PORT": str(ports.recall_http),
            "RECALL_GRPC_PORT": str(ports.recall_grpc),
        }),
        Component("ranker", "predictors.ranker", ports.ranker_http, {
            "RANKER_BUNDLE": str(bundle / RANKER_COMPONENT),
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
            **(search_env or {}),
        }),
    ]


def _cmd_up(args: argparse.Namespace) -> int:
    from pipeline.stack import Stack

    bundle = Path(args.bundle)
    for component in (CATALOG_COMPONENT, RECALL_COMPONENT, RANKER_COMPONENT):
        if not (bundle / component / MANIFEST).is_file():
            print(f"no {component} component in {bundle}; run `make up` or "
                  f"`shopserve build-demo --out {bundle}` first", file=sys.stderr)
            return 2
    ports = StackPorts()
    components = stack_components(bundle, ports)
    start = time.perf_counter()
    with Stack(components, bundle.parent / "logs") as stack:
        try:
            ready = stack.start()
        except RuntimeError as exc:
            print(f"the stack did not start: {exc}", file=sys.stderr)
            return 1
        print(f"ready in {time.perf_counter() - start:.1f}s ("
              + ", ".join(f"{n} {s:.1f}s" for n, s in ready.items()) + ")")
        print(f"  search      http://127.0.0.1:{ports.search_http}  grpc :{ports.search_grpc}  "
              "metrics /metrics")
        print(f"  mf-recall   http://127.0.0.1:{ports.recall_http}  grpc :{ports.recall_grpc}  "
              "metrics /metrics")
        print(f"  bert-ranker http://127.0.0.1:{ports.ranker_http}  grpc :{ports.ranker_grpc}  "
              f"metrics :{ports.ranker_metrics}/metrics (Triton)")
        print(f"  logs in {stack.log_dir}")
        _sample_search_request(bundle, components[-1].url)
        if args.check:
            return 0
        print("\nPress Ctrl-C to stop.")
        stack.wait()
        print("stopping ...")
    print("stopped.")
    return 0


def _sample_search_request(bundle: Path, url: str) -> None:
    from shopserve.data.generator import Dataset

    dataset = Dataset.load(bundle / CATALOG_COMPONENT)
    user = int(dataset.events.log.user_ids[-1])
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


def _cmd_evaluate_stack(args: argparse.Namespace) -> int:
    import asyncio

    from pipeline.evaluate_stack import (
        EVALUATION_BUDGETS,
        VARIANTS,
        format_table,
        judge,
        send_queries,
    )
    from pipeline.stack import Stack
    from shopserve.data.generator import Dataset, split_queries

    bundle = Path(args.bundle)
    dataset = Dataset.load(bundle / CATALOG_COMPONENT)
    split = read_manifest(bundle / RANKER_COMPONENT).params.get("build", {})
    _, test_ids = split_queries(dataset, split.get("eval_fraction", 0.2), split.get("seed", 0))
    if args.limit:
        test_ids = test_ids[: args.limit]
    rows = dataset.queries.query_id.searchsorted(test_ids)
    texts = dataset.queries.text[rows].tolist()
    users = dataset.queries.user_id[rows]
    ports = StackPorts()
    components = stack_components(bundle, ports)
    results = []
    log_dir = bundle.parent / "logs"
    with Stack(components[:2], log_dir) as backends:
        backends.start()
        for variant in sorted(VARIANTS, key=lambda v: v.ranker_down):
            if variant.ranker_down and "ranker" in backends.processes:
                backends.stop(names=["ranker"])
            # Quality, not load: one request at a time, and budgets no answer should meet.
            search = stack_components(bundle, ports, {**EVALUATION_BUDGETS, **variant.search_env})[-1]
            with Stack([search], log_dir) as front:
                front.start()
                sent = np.full(users.shape, -1) if variant.anonymous else users
                answers = asyncio.run(send_queries(search.url, texts, sent.tolist(), top_n=50,
                                                   concurrency=1))
            results.append((variant.name, judge(dataset, test_ids, users, answers)))
            print(f"  {variant.name}: done", file=sys.stderr)
    order = {v.name: i for i, v in enumerate(VARIANTS)}
    results.sort(key=lambda r: order[r[0]])
    table = format_table(results, len(test_ids), int((users >= 0).sum()))
    print(table)
    if args.out:
        Path(args.out).write_text(f"# Search pipeline quality\n\nCommand: `shopserve evaluate stack "
                                  f"--bundle {bundle}`\n\n{table}\n")
    return 0


def _cmd_step(steps: tuple[str, ...]) -> Callable[[argparse.Namespace], int]:
    """A command that runs these pipeline steps alone (their inputs must have run before)."""

    def run(args: argparse.Namespace) -> int:
        from pipeline.run import execute

        return execute(args, steps)

    return run


def _cmd_evaluate_report(args: argparse.Namespace) -> int:
    from pipeline.run import execute

    # Runs evaluate (and whatever it needs that is missing or changed), then points at the report.
    code = execute(args, STEP_NAMES[: STEP_NAMES.index("evaluate") + 1] if args.upstream else ("evaluate",))
    if code == 0 and not args.json:
        from pipeline.run import load_config
        from pipeline.steps import REPORT_DIR

        report = load_config(args).run_dir / REPORT_DIR
        print(f"report: {report / 'report.md'}; plots: "
              + ", ".join(sorted(p.name for p in report.glob('*.png'))))
    return code


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="shopserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="generate the seeded catalog, behaviour log and queries")
    data.add_argument("--size", choices=("tiny", "demo", "bench"), default="demo")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--out", type=Path, required=True)
    data.set_defaults(func=_cmd_data)

    train = sub.add_parser("train", help="train and package a component")
    train_sub = train.add_subparsers(dest="component", required=True)
    recall = train_sub.add_parser("recall", help="tune, train, evaluate and package MF recall")
    recall.add_argument("--data", default="movielens",
                        help="a dataset folder from `shopserve data`, or 'movielens'")
    recall.add_argument("--out", type=Path, required=True, help="recall component folder")
    recall.add_argument("--tune", action="store_true", help="grid-search hyper-parameters first")
    recall.add_argument("--factors", type=int, default=64)
    recall.add_argument("--iterations", type=int, default=15)
    recall.add_argument("--version", default=None)
    recall.set_defaults(func=_cmd_train_recall)

    demo = sub.add_parser("build-demo", help="build the demo bundle")
    demo.add_argument("--out", type=Path, default=DEFAULT_BUNDLE)
    demo.set_defaults(func=_cmd_build_demo)

    up = sub.add_parser("up", help="run the local stack on a bundle")
    up.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    up.add_argument("--check", action="store_true",
                    help="start, send the sample request, then stop (for scripts)")
    up.set_defaults(func=_cmd_up)

    evaluate = sub.add_parser(
        "evaluate", help="offline evaluation: report.md and PNG plots of a run (or `evaluate stack`)")
    evaluate_sub = evaluate.add_subparsers(dest="target", required=False)
    stack_eval = evaluate_sub.add_parser(
        "stack", help="held-out queries through the running stack over v2, per pipeline variant")
    stack_eval.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    stack_eval.add_argument("--limit", type=int, default=0, help="evaluate only the first N queries")
    stack_eval.add_argument("--out", type=Path, default=None, help="also write the table here")
    stack_eval.set_defaults(func=_cmd_evaluate_stack)

    evaluate.add_argument("--upstream", action="store_true",
                          help="also run the earlier steps that are missing or changed")
    add_run_flags(evaluate)
    evaluate.set_defaults(func=_cmd_evaluate_report)

    ranker = train_sub.add_parser(
        "ranker", help="fine-tune the BERT cross-encoder (pipeline step train-ranker)")
    add_run_flags(ranker)
    ranker.set_defaults(func=_cmd_step(("train-ranker",)))
    optimize = sub.add_parser("optimize", aliases=["optimise"], help="optimise a trained model")
    optimize_sub = optimize.add_subparsers(dest="component", required=True)
    opt_ranker = optimize_sub.add_parser(
        "ranker", help="ONNX export, int8, layer pruning, quality guard (pipeline step optimise-ranker)")
    add_run_flags(opt_ranker)
    opt_ranker.set_defaults(func=_cmd_step(("optimise-ranker",)))
    package = sub.add_parser(
        "package", help="assemble the run's components and report into a versioned bundle")
    add_run_flags(package)
    package.set_defaults(func=_cmd_step(("package",)))

    # Commands whose parsers live with their logic.
    pipeline_run.register(sub)
    registry.register(sub)
    deploy.register(sub)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``shopserve`` command."""
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
