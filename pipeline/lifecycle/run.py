"""``shopserve pipeline run``: the lifecycle's steps in order, cached by content hash, resumable.

Steps (``pipeline.lifecycle.steps``), each writing one folder of the run (``run_dir``)::

    data -> train-recall -> train-ranker -> optimise-ranker -> train-sequence -> train-semantic
         -> evaluate -> package

**Content hashes.** A step's input hash is the sha256 of the configuration sections it reads and
the output hashes of the steps it reads from; its output hash is the sha256 of its output folder
(every file's path and sha256). A step is skipped when its last run succeeded with the same input
hash and its output folder still hashes to what that run recorded (so a deleted or edited output
re-runs it). The code's version is deliberately *not* part of the hash: a code change that should
re-train says so with ``--force STEP`` (or ``--force all``), so that a docstring edit does not
cost a training run. Hashes and statuses live in ``<run_dir>/state.json``.

**Resume.** A failing step is recorded as ``failed`` with its error and the run stops there;
the next run skips the earlier steps (unchanged) and starts again at the failed one.

**Output.** Progress lines and bars on stderr; a closing summary table (step, status, time, key
metric) on stdout, or one JSON document with ``--json``. ``--quiet`` drops progress.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.lifecycle.config import DEMO_CONFIG, ConfigError, PipelineConfig
from pipeline.lifecycle.layout import SEQUENCE_TRAIN_DIR
from pipeline.lifecycle.semantic import SEMANTIC_TRAIN_DIR, step_train_semantic
from pipeline.lifecycle.sequence import step_train_sequence
from pipeline.lifecycle.steps import (
    DATA_DIR,
    RANKER_OPTIMISE_DIR,
    RANKER_TRAIN_DIR,
    RECALL_DIR,
    REPORT_DIR,
    StepContext,
    StepOutcome,
    step_data,
    step_evaluate,
    step_optimise_ranker,
    step_package,
    step_train_ranker,
    step_train_recall,
)
from shopserve.artifacts import sha256_file

STATE_FILE = "state.json"
STATE_FORMAT = 1


@dataclass(frozen=True)
class Step:
    """One node of the step graph.

    Attributes:
        name: Step name (``data``, ``train-recall``, ...).
        sections: Configuration sections whose content goes into the input hash.
        inputs: Steps whose outputs it reads (their output hashes go into its input hash).
        folder: Its output folder inside the run (None: the step reports where it wrote).
        run: The step itself.
    """

    name: str
    sections: tuple[str, ...]
    inputs: tuple[str, ...]
    folder: str | None
    run: Callable[[StepContext], str | StepOutcome]


STEPS: tuple[Step, ...] = (
    Step("data", ("data",), (), DATA_DIR, step_data),
    Step("train-recall", ("recall",), ("data",), RECALL_DIR, step_train_recall),
    Step("train-ranker", ("ranker",), ("data",), RANKER_TRAIN_DIR, step_train_ranker),
    Step("optimise-ranker", ("ranker",), ("data", "train-ranker"), RANKER_OPTIMISE_DIR,
         step_optimise_ranker),
    Step("train-sequence", ("sequence",), ("data",), SEQUENCE_TRAIN_DIR, step_train_sequence),
    # The ranker section too: the semantic path trains on the ranker's training queries.
    Step("train-semantic", ("semantic", "ranker"), ("data",), SEMANTIC_TRAIN_DIR,
         step_train_semantic),
    Step("evaluate", ("evaluate", "recall", "ranker", "sequence"),
         ("data", "train-recall", "optimise-ranker", "train-sequence"), REPORT_DIR, step_evaluate),
    Step("package", ("package", "data", "recall", "ranker", "sequence", "semantic"),
         ("data", "train-recall", "optimise-ranker", "train-sequence", "train-semantic",
          "evaluate"), None, step_package),
)
STEP_NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)


class StepFailed(RuntimeError):
    """A step raised; the run stopped there (the state records it for the next run)."""


def tree_hash(folder: Path) -> str:
    """sha256 over every file's relative path and sha256 under ``folder`` (sorted)."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(b"\0" + sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


def input_hash(step: Step, config: PipelineConfig, upstream: dict[str, str]) -> str:
    """The content hash of what ``step`` reads: its config sections and its inputs' outputs."""
    payload = {
        "step": step.name,
        "sections": {s: config.section(s) for s in step.sections},
        "inputs": {name: upstream[name] for name in step.inputs},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class StepRecord:
    """One step's line in the state file and the summary.

    Attributes:
        step: Step name.
        status: ``ran``, ``skipped`` (unchanged), ``failed``, ``not run`` (after a failure, or not
            selected).
        seconds: Time spent in this run (0 when skipped).
        metric: The key metric (from the run that produced the output, when skipped).
        input_hash: Content hash of the inputs it ran on.
        output_hash: Hash of its output folder.
        output: Its output folder.
        error: The error of a failed step.
        finished: UTC time the step last finished.
    """

    step: str
    status: str
    seconds: float = 0.0
    metric: str = ""
    input_hash: str | None = None
    output_hash: str | None = None
    output: str | None = None
    error: str | None = None
    finished: str | None = None


@dataclass
class RunResult:
    """What ``run_pipeline`` did.

    Attributes:
        config: Configuration name.
        run_dir: The run folder.
        records: One per step, in order.
    """

    config: str
    run_dir: Path
    records: list[StepRecord] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No step failed."""
        return all(r.status != "failed" for r in self.records)

    @property
    def bundle(self) -> str | None:
        """The packaged bundle's folder, when the package step ran or was skipped."""
        rec = next((r for r in self.records if r.step == "package"), None)
        return rec.output if rec and rec.status in ("ran", "skipped") else None

    def table(self) -> str:
        """The closing summary table: step, status, time, key metric."""
        width = max(len(s) for s in STEP_NAMES)
        lines = [f"{'step':<{width}}  {'status':<8} {'time':>8}  key metric",
                 f"{'-' * width}  {'-' * 8} {'-' * 8}  {'-' * 60}"]
        for r in self.records:
            metric = r.error if r.status == "failed" else r.metric
            lines.append(f"{r.step:<{width}}  {r.status:<8} {r.seconds:>7.1f}s  {metric}")
        total = sum(r.seconds for r in self.records)
        tail = f"bundle {self.bundle}" if self.bundle else "no bundle"
        lines.append(f"{'total':<{width}}  {'ok' if self.ok else 'FAILED':<8} {total:>7.1f}s  {tail}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The run as a JSON-ready dict (``--json``)."""
        return {"config": self.config, "run_dir": str(self.run_dir), "ok": self.ok,
                "bundle": self.bundle, "steps": [asdict(r) for r in self.records]}


def load_state(run_dir: Path) -> dict[str, Any]:
    """The run's state file (an empty state when there is none or it is unreadable)."""
    path = Path(run_dir) / STATE_FILE
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {"format": STATE_FORMAT, "steps": {}}
    if raw.get("format") != STATE_FORMAT:
        return {"format": STATE_FORMAT, "steps": {}}
    return raw


def _save_state(run_dir: Path, state: dict[str, Any]) -> None:
    path = Path(run_dir) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)  # atomic: a killed run never leaves half a state file


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _output_intact(record: dict[str, Any]) -> bool:
    output = record.get("output")
    return bool(output) and Path(output).is_dir() and tree_hash(Path(output)) == record.get("output_hash")


def run_pipeline(
    config: PipelineConfig,
    *,
    only: Iterable[str] | None = None,
    force: Iterable[str] = (),
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Run the steps in order, skipping unchanged ones and stopping at the first failure.

    Args:
        config: The pipeline configuration.
        only: Run just these steps (their inputs must have run before); None runs them all.
        force: Steps to run even when unchanged (``all`` for every step).
        progress: Progress lines and bars.
        log: Where progress lines go (default stderr; silent when ``progress`` is off).
    """
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = load_state(run_dir)
    state["config"] = config.name
    records: dict[str, dict[str, Any]] = state.setdefault("steps", {})
    emit = log or ((lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda _: None))
    selected = set(STEP_NAMES if only is None else only)
    unknown = selected - set(STEP_NAMES)
    if unknown:
        raise ConfigError(f"unknown step(s) {', '.join(sorted(unknown))}; steps: {', '.join(STEP_NAMES)}")
    forced = set(STEP_NAMES) if "all" in set(force) else set(force)
    ctx = StepContext(config, progress=progress, log=emit, state=records)
    result = RunResult(config.name, run_dir)
    upstream: dict[str, str] = {}
    stopped = False
    for number, step in enumerate(STEPS, 1):
        prev = records.get(step.name, {})
        if stopped or step.name not in selected:
            # Not run now: an earlier output still feeds later steps when it is intact.
            if prev.get("status") in ("ran", "skipped") and prev.get("output_hash"):
                upstream[step.name] = prev["output_hash"]
            result.records.append(StepRecord(step.name, "not run", metric=prev.get("metric", "")))
            continue
        missing = [name for name in step.inputs if name not in upstream]
        if missing:
            error = f"needs the output of {', '.join(missing)}: run those steps first"
            result.records.append(StepRecord(step.name, "failed", error=error))
            records[step.name] = {**prev, "status": "failed", "error": error, "finished": _now()}
            _save_state(run_dir, state)
            stopped = True
            continue
        digest = input_hash(step, config, upstream)
        if (step.name not in forced and prev.get("status") in ("ran", "skipped")
                and prev.get("input_hash") == digest and _output_intact(prev)):
            emit(f"[{number}/{len(STEPS)}] {step.name}: unchanged, skipped")
            record = StepRecord(step.name, "skipped", 0.0, prev.get("metric", ""), digest,
                                prev["output_hash"], prev["output"], None, prev.get("finished"))
            records[step.name] = {**asdict(record), "status": prev["status"]}
            upstream[step.name] = prev["output_hash"]
            result.records.append(record)
            continue
        emit(f"[{number}/{len(STEPS)}] {step.name}: running")
        start = time.perf_counter()
        try:
            outcome = step.run(ctx)
        except Exception as exc:  # noqa: BLE001 - any step failure is recorded and reported
            seconds = time.perf_counter() - start
            error = f"{type(exc).__name__}: {exc}"
            emit(f"[{number}/{len(STEPS)}] {step.name}: FAILED after {seconds:.1f}s: {error}")
            emit(traceback.format_exc())
            record = StepRecord(step.name, "failed", seconds, "", digest, None, None, error, _now())
            records[step.name] = asdict(record)
            _save_state(run_dir, state)
            result.records.append(record)
            stopped = True
            continue
        seconds = time.perf_counter() - start
        if isinstance(outcome, StepOutcome):
            metric, output = outcome.metric, outcome.output
        else:
            metric, output = outcome, None
        folder = Path(output) if output is not None else run_dir / str(step.folder)
        record = StepRecord(step.name, "ran", seconds, metric, digest, tree_hash(folder), str(folder),
                            None, _now())
        records[step.name] = asdict(record)
        upstream[step.name] = str(record.output_hash)
        _save_state(run_dir, state)
        emit(f"[{number}/{len(STEPS)}] {step.name}: done in {seconds:.1f}s: {metric}")
        result.records.append(record)
    _save_state(run_dir, state)
    return result


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every pipeline-step command shares: config, folders, output style."""
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG,
                        help="pipeline configuration (default: %(default)s)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="run folder (default: the configuration's run_dir)")
    parser.add_argument("--registry", type=Path, default=None,
                        help="bundle registry folder (default: the configuration's registry)")
    parser.add_argument("--force", action="store_true", help="run even when the inputs are unchanged")
    parser.add_argument("--quiet", action="store_true", help="no progress output, only the summary")
    parser.add_argument("--json", action="store_true",
                        help="print the result as one JSON document (implies --quiet)")


def load_config(args: argparse.Namespace) -> PipelineConfig:
    """The configuration named by ``--config`` with ``--run-dir`` / ``--registry`` applied."""
    return PipelineConfig.load(args.config).with_overrides(run_dir=args.run_dir, registry=args.registry)


def execute(args: argparse.Namespace, only: Sequence[str] | None, force: Iterable[str] = ()) -> int:
    """Run steps for a command line and print the summary (table or JSON); the exit code."""
    try:
        config = load_config(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    quiet = args.quiet or args.json
    forced = set(force) | (set(only or STEP_NAMES) if getattr(args, "force", False) else set())
    try:
        result = run_pipeline(config, only=only, force=forced, progress=not quiet)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.table())
    return 0 if result.ok else 1


def _cmd_pipeline_run(args: argparse.Namespace) -> int:
    only = None
    if args.steps:
        only = [s.strip() for s in args.steps.split(",") if s.strip()]
    return execute(args, only, force=args.force_steps or ())


def _cmd_pipeline_status(args: argparse.Namespace) -> int:
    config = load_config(args)
    state = load_state(config.run_dir)
    records = state.get("steps", {})
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    print(f"run {config.run_dir} (config {config.name})")
    for name in STEP_NAMES:
        rec = records.get(name)
        if rec is None:
            print(f"  {name:<16} never run")
        else:
            detail = rec.get("error") if rec.get("status") == "failed" else rec.get("metric", "")
            print(f"  {name:<16} {rec.get('status', '?'):<8} {rec.get('finished') or '':<26} {detail}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``pipeline run`` and ``pipeline status`` to the ``shopserve`` parser."""
    pipeline = sub.add_parser("pipeline", help="run the whole lifecycle: data -> ... -> package")
    actions = pipeline.add_subparsers(dest="action", required=True)
    run = actions.add_parser(
        "run", help="run every step in order, skipping unchanged ones, resuming after a failure",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_flags(run)
    run.set_defaults(force=False)
    run.add_argument("--steps", default="",
                     help=f"comma-separated subset of {','.join(STEP_NAMES)} (default: all)")
    run.add_argument("--force-step", dest="force_steps", action="append", metavar="STEP",
                     help="run STEP even when unchanged (repeatable; 'all' for every step)")
    run.set_defaults(func=_cmd_pipeline_run)
    status = actions.add_parser("status", help="each step's last status, time and metric")
    add_run_flags(status)
    status.set_defaults(func=_cmd_pipeline_status)
