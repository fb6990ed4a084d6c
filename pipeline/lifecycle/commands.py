"""Lifecycle commands of ``shopserve``: data, train, optimise, evaluate, package, build-demo.

``pipeline run`` and ``bundles`` register themselves in :mod:`pipeline.lifecycle.run` and
:mod:`pipeline.lifecycle.registry`. Heavy imports (torch, the generator) happen inside the commands,
so ``shopserve --help`` stays quick.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.lifecycle.run import STEP_NAMES, add_run_flags
from pipeline.local import DEFAULT_BUNDLE, StackPorts, stack_components
from shopserve.artifacts import CATALOG_COMPONENT, RANKER_COMPONENT, read_manifest


def _cmd_data(args: argparse.Namespace) -> int:
    from training.data.generator import GeneratorConfig, generate

    presets = {"tiny": GeneratorConfig.tiny, "demo": GeneratorConfig.demo,
               "bench": GeneratorConfig.bench}
    start = time.perf_counter()
    dataset = generate(presets[args.size](seed=args.seed))
    dataset.save(args.out)
    print(json.dumps(dataset.summary(), indent=2))
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f}s")
    return 0


def _cmd_train_recall(args: argparse.Namespace) -> int:
    from shopserve.artifacts import new_version
    from training.data.generator import Dataset
    from training.data.movielens import load_movielens_100k
    from training.recall.build import RecallBuildConfig, build_recall
    from training.recall.train import MFParams

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
    from pipeline.lifecycle.demo import build_demo_bundle

    try:
        result = build_demo_bundle(args.out)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(result.table())
    print(f"copied to {args.out}")
    return 0


def _cmd_evaluate_stack(args: argparse.Namespace) -> int:
    import asyncio

    from pipeline.lifecycle.evaluate_stack import (
        EVALUATION_BUDGETS,
        VARIANTS,
        choose_k,
        format_classes,
        format_sweep,
        format_table,
        judge,
        send_queries,
        sweep_variants,
    )
    from pipeline.supervisor import Stack
    from training.data.generator import Dataset, split_queries

    bundle = Path(args.bundle)
    dataset = Dataset.load(bundle / CATALOG_COMPONENT)
    split = read_manifest(bundle / RANKER_COMPONENT).params.get("build", {})
    _, test_ids = split_queries(dataset, split.get("eval_fraction", 0.2), split.get("seed", 0))
    if args.limit:
        test_ids = test_ids[: args.limit]
    rows = dataset.queries.query_id.searchsorted(test_ids)
    texts = dataset.queries.text[rows].tolist()
    users = dataset.queries.user_id[rows]
    kinds, counts = np.unique(dataset.queries.kind[rows], return_counts=True)
    ports = StackPorts()
    components = stack_components(bundle, ports)
    sweep = sweep_variants()
    results = {}
    log_dir = bundle.parent / "logs"
    with Stack(components[:2], log_dir) as backends:
        backends.start()
        for variant in sorted((*VARIANTS, *sweep), key=lambda v: v.ranker_down):
            if variant.ranker_down and "ranker" in backends.processes:
                backends.stop(names=["ranker"])
            # Quality, not load: one request at a time, and budgets no answer should meet.
            search = stack_components(bundle, ports, {**EVALUATION_BUDGETS, **variant.search_env})[-1]
            with Stack([search], log_dir) as front:
                front.start()
                sent = np.full(users.shape, -1) if variant.anonymous else users
                answers = asyncio.run(send_queries(search.url, texts, sent.tolist(), top_n=50,
                                                   concurrency=1))
            results[variant.name] = judge(dataset, test_ids, users, answers)
            print(f"  {variant.name}: done", file=sys.stderr)
    table_rows = [(v.name, results[v.name]) for v in VARIANTS]
    sweep_rows = [(int(v.rank_candidates or 0), results[v.name]) for v in sweep]
    chosen = choose_k({k: j.ndcg_at_10 for k, j in sweep_rows})
    report = "\n\n".join([
        format_table(table_rows, len(test_ids), int((users >= 0).sum())),
        format_classes(table_rows, {str(k): int(n) for k, n in zip(kinds, counts, strict=True)}),
        format_sweep(sweep_rows, chosen),
    ])
    print(report)
    if args.out:
        Path(args.out).write_text(f"# Search pipeline quality\n\nCommand: `shopserve evaluate stack "
                                  f"--bundle {bundle}`\n\n{report}\n")
    return 0


def _cmd_step(steps: tuple[str, ...]) -> Callable[[argparse.Namespace], int]:
    """A command that runs these pipeline steps alone (their inputs must have run before)."""

    def run(args: argparse.Namespace) -> int:
        from pipeline.lifecycle.run import execute

        return execute(args, steps)

    return run


def _cmd_evaluate_report(args: argparse.Namespace) -> int:
    from pipeline.lifecycle.run import execute

    # Runs evaluate (and whatever it needs that is missing or changed), then points at the report.
    code = execute(args, STEP_NAMES[: STEP_NAMES.index("evaluate") + 1] if args.upstream else ("evaluate",))
    if code == 0 and not args.json:
        from pipeline.lifecycle.run import load_config
        from pipeline.lifecycle.steps import REPORT_DIR

        report = load_config(args).run_dir / REPORT_DIR
        print(f"report: {report / 'report.md'}; plots: "
              + ", ".join(sorted(p.name for p in report.glob('*.png'))))
    return code


def register(sub: argparse._SubParsersAction) -> None:
    """Add the lifecycle's one-step commands to the ``shopserve`` parser."""
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
    sequence = train_sub.add_parser(
        "sequence", help="train the sequential recommender (pipeline step train-sequence)")
    add_run_flags(sequence)
    sequence.set_defaults(func=_cmd_step(("train-sequence",)))
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

