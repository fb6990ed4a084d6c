"""The pipeline's steps: what each reads and writes inside a run folder.

``pipeline.lifecycle.run`` orders them, hashes their inputs and skips or resumes; each step here is a plain
function of a :class:`StepContext` that writes only its own output folder and returns its key
metric. The building blocks are the components' own: ``training.data.generator``,
``training.recall.build.build_recall``, ``training.ranker.build`` (``prepare_data``,
``train_teacher``, ``optimise_variants``, ``package``).

Run folder layout (``run_dir`` of the configuration)::

    data/             the generated world (Dataset.save)
    recall/           the recall component (manifest.json; version ``unpackaged``)
    ranker-train/     teacher/ (the fine-tuned cross-encoder, save_pretrained) and rows.json
    ranker-optimise/  the ONNX variants and result.json (evaluation rows, variants)
    sequence-train/   the sequence model's export and result.json (pipeline.lifecycle.sequence)
    semantic-train/   the semantic path's export and result.json (pipeline.lifecycle.semantic)
    report/           report.md, *.png, evaluation.json
    state.json        step statuses and content hashes (pipeline.lifecycle.run)

The package step writes ``<registry>/<version>/`` (see ``pipeline.lifecycle.registry``).
"""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.lifecycle.layout import (  # the run folder's layout, shared with the report
    DATA_DIR,
    EVALUATION_FILE,
    RANKER_OPTIMISE_DIR,
    RANKER_TRAIN_DIR,
    RECALL_DIR,
    REPORT_DIR,
    RESULT_FILE,
    ROWS_FILE,
    SEQUENCE_TRAIN_DIR,
    TEACHER_DIR,
    UNPACKAGED,
    StepContext,
    load_optimised,
    rows_from_json,
    rows_to_json,
)
from shopserve.artifacts import (
    CATALOG_COMPONENT,
    RANKER_COMPONENT,
    RECALL_COMPONENT,
    SEMANTIC_COMPONENT,
    SEQUENCE_COMPONENT,
    read_manifest,
    write_manifest,
)
from shopserve.release import ReleaseMetrics

if TYPE_CHECKING:
    from pipeline.lifecycle.config import PipelineConfig
    from training.data.generator import Dataset
    from training.ranker.build import RankerData, Row, TrainedTeacher

#: Package extras: ``"module:function"`` names called by the package step once every component
#: and the report are in the bundle and before ``bundle.json`` is written, each with the
#: :class:`PackageContext`. An extra writes its own folder under ``ctx.bundle`` (ideally with its
#: own ``manifest.json`` via ``shopserve.artifacts.write_manifest``, so servers and ``bundles
#: verify`` check it); files it leaves outside any component are still checksummed in
#: ``bundle.json``. Hook for monitoring: drift reference distributions are recorded here.
#: The configuration's ``package.extras`` list adds more names for one run.
PACKAGE_EXTRAS: tuple[str, ...] = ("pipeline.lifecycle.steps:record_drift_reference",)


@dataclass(frozen=True)
class StepOutcome:
    """What a step returns when its output is not its fixed run folder.

    Attributes:
        metric: The step's key metric, one line for the summary table.
        output: Where the step wrote (the package step: the new bundle's folder).
    """

    metric: str
    output: Path | None = None


@dataclass
class PackageContext:
    """What a package extra gets.

    Attributes:
        bundle: The bundle folder being packaged (``<registry>/<version>``).
        version: The bundle's version.
        parent: The parent version, if any.
        run_dir: The run folder (``data/``, ``recall/``, ... of this run).
        config: The pipeline configuration.
        dataset: Loads the run's data set (the world the release was trained on).
    """

    bundle: Path
    version: str
    parent: str | None
    run_dir: Path
    config: PipelineConfig
    dataset: Callable[[], Dataset]


def _fresh(folder: Path) -> Path:
    # A step owns its folder: leftovers of a failed attempt must not leak into the new output.
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------


def step_data(ctx: StepContext) -> str:
    """Generate the seeded catalog, behaviour log and queries into ``data/``."""
    from training.data.generator import generate

    out = _fresh(ctx.path(DATA_DIR))
    dataset = generate(ctx.config.generator())
    dataset.save(out)
    return (f"{len(dataset.items)} items, {len(dataset.users)} users, {len(dataset.events)} events, "
            f"{len(dataset.queries)} queries")


# --------------------------------------------------------------------------------------------------
# train recall
# --------------------------------------------------------------------------------------------------


def step_train_recall(ctx: StepContext) -> str:
    """Tune (optionally), train, evaluate and write the recall component into ``recall/``."""
    from training.recall.build import build_recall

    dataset = ctx.dataset()
    summary = dataset.summary()
    out = _fresh(ctx.path(RECALL_DIR))
    manifest = build_recall(
        dataset.events.log, out, UNPACKAGED, items=dataset.item_map,
        config=ctx.config.recall(progress=ctx.progress),
        data={"source": summary["source"], "seed": summary["seed"]},
    )
    recall = ReleaseMetrics.from_manifests(recall=manifest)
    return (f"NDCG@10 {recall.recall_ndcg_at_10:.3f} (popularity "
            f"{recall.recall_popularity_ndcg_at_10:.3f}), Recall@20 {recall.recall_recall_at_20:.3f}")


# --------------------------------------------------------------------------------------------------
# train ranker, optimise ranker
# --------------------------------------------------------------------------------------------------


def _ranker_data(ctx: StepContext) -> RankerData:
    from training.ranker.build import prepare_data

    return prepare_data(ctx.dataset(), ctx.config.ranker(progress=ctx.progress))


def _log_row(ctx: StepContext) -> Callable[[Row], None]:
    def emit(row: Row) -> None:
        ms = f", {row.ms_p50:.1f} ms/request" if row.ms_p50 is not None else ""
        ctx.log(f"    {row.name}: NDCG@10 {row.report.ndcg:.4f}{ms}")

    return emit


def step_train_ranker(ctx: StepContext) -> str:
    """Fine-tune the 6-layer cross-encoder; save it and the baseline rows into ``ranker-train/``."""
    from training.ranker.build import train_teacher

    config = ctx.config.ranker(progress=ctx.progress)
    prepared = _ranker_data(ctx)
    trained = train_teacher(prepared, config, on_row=_log_row(ctx))
    out = _fresh(ctx.path(RANKER_TRAIN_DIR))
    trained.model.save_pretrained(str(out / TEACHER_DIR))
    (out / ROWS_FILE).write_text(json.dumps(rows_to_json(trained.rows), indent=2) + "\n")
    fp32 = trained.rows[-1]
    bm25 = next(r for r in trained.rows if r.name == "bm25")
    return f"torch fp32 NDCG@10 {fp32.report.ndcg:.3f} (BM25 {bm25.report.ndcg:.3f})"


def load_teacher(ctx: StepContext) -> TrainedTeacher:
    """The ``train ranker`` step's output, back in memory."""
    from training.ranker.build import TrainedTeacher
    from training.ranker.modeling import load_cross_encoder

    folder = ctx.path(RANKER_TRAIN_DIR)
    rows = rows_from_json(json.loads((folder / ROWS_FILE).read_text()))
    return TrainedTeacher(load_cross_encoder(folder / TEACHER_DIR), rows)


def step_optimise_ranker(ctx: StepContext) -> str:
    """Export, quantise, prune and evaluate the ONNX variants into ``ranker-optimise/``."""
    from training.ranker.build import optimise_variants
    from training.ranker.optimise import select_variant

    config = ctx.config.ranker(progress=ctx.progress)
    out = _fresh(ctx.path(RANKER_OPTIMISE_DIR))
    result = optimise_variants(_ranker_data(ctx), load_teacher(ctx), config, out, on_row=_log_row(ctx))
    payload = {
        "rows": rows_to_json(result.rows),
        "variants": [
            {**asdict(v), "path": Path(v.path).name,
             "fp32_path": None if v.fp32_path is None else Path(v.fp32_path).name}
            for v in result.variants
        ],
        "max_length": result.max_length,
        "data": result.data,
    }
    (out / RESULT_FILE).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    chosen = select_variant(result.variants, result.reference_ndcg, config.max_ndcg_drop)
    return (f"{len(result.variants)} variants; guard picks {chosen.name} NDCG@10 {chosen.ndcg:.3f}, "
            f"{chosen.ms_per_request:.1f} ms/request")


# --------------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------------


def step_evaluate(ctx: StepContext) -> str:
    """Offline evaluation with plots: ``report/report.md``, ``report/*.png``, ``evaluation.json``."""
    from pipeline.lifecycle.registry import Registry
    from pipeline.lifecycle.report import evaluate_offline, write_report

    registry = Registry(ctx.config.registry)
    own = (ctx.state.get("package") or {}).get("output")
    # The previous release: the newest bundle in the registry. A bundle this very run packaged
    # earlier counts as previous too (its successor replaces it).
    previous = registry.latest()
    evaluation = evaluate_offline(ctx, previous.path if previous else None)
    evaluation["parent"] = previous.version if previous else None
    evaluation["replaces_own"] = bool(previous and own and Path(own).name == previous.version)
    out = _fresh(ctx.path(REPORT_DIR))
    write_report(evaluation, out)
    key = ReleaseMetrics.from_key_metrics(evaluation["key_metrics"])
    return (f"ranker NDCG@10 {key.ranker_ndcg_at_10:.3f}, recall NDCG@10 {key.recall_ndcg_at_10:.3f}; "
            f"{len(list(out.glob('*.png')))} plots")


# --------------------------------------------------------------------------------------------------
# package
# --------------------------------------------------------------------------------------------------


def _extras(ctx: StepContext) -> list[Callable[[PackageContext], None]]:
    names = [*PACKAGE_EXTRAS, *ctx.config.section("package").get("extras", [])]
    out = []
    for name in names:
        module, _, attr = str(name).partition(":")
        out.append(getattr(importlib.import_module(module), attr))
    return out


def _save_synonyms(ctx: StepContext, catalog: Path, dataset: Dataset) -> dict[str, int]:
    """Mine the transformer's query-rewrite synonyms from the ranker's *training* queries only."""
    from training.data.generator import split_queries
    from training.synonyms import mine_into

    ranker = ctx.config.ranker(progress=False)
    train_ids, _ = split_queries(dataset, ranker.eval_fraction, ranker.seed)
    return mine_into(catalog, dataset, train_ids)


def record_drift_reference(ctx: PackageContext) -> None:
    """Package extra: the ``drift`` component the transformer's drift monitor compares with."""
    from pipeline.lifecycle.drift_reference import record_reference

    record_reference(ctx.bundle, version=ctx.version)


def step_package(ctx: StepContext) -> StepOutcome:
    """Assemble ``<registry>/<version>/``: catalog, recall, ranker, sequence, semantic, report,
    extras, bundle.json."""
    from pipeline.lifecycle.registry import Registry, key_metrics, write_bundle_manifest
    from pipeline.lifecycle.semantic import SEMANTIC_TRAIN_DIR, package_semantic
    from pipeline.lifecycle.sequence import package_sequence
    from training.ranker.build import package
    from transformers_pre.catalog import write_lexical_index

    registry = Registry(ctx.config.registry)
    evaluation = json.loads((ctx.path(REPORT_DIR) / EVALUATION_FILE).read_text())
    parent = evaluation.get("parent")
    version = registry.new_version()
    bundle = registry.root / version
    # Build beside the registry and rename at the end: a half-written bundle never has a
    # version folder (and never a bundle.json), so nothing lists or serves it.
    staging = registry.root / f".{version}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        dataset_dir = ctx.path(DATA_DIR)
        dataset = ctx.dataset()
        summary = json.loads((dataset_dir / "dataset.json").read_text()).get("summary") \
            or dataset.summary()
        catalog = staging / CATALOG_COMPONENT
        shutil.copytree(dataset_dir, catalog)
        catalog_params = {"generator": ctx.config.section("data"),
                          **_save_synonyms(ctx, catalog, dataset)}
        write_lexical_index(catalog)  # the transformer loads it instead of indexing at each start
        write_manifest(catalog, CATALOG_COMPONENT, version, data=summary,
                       params=catalog_params, parent=parent)

        recall = staging / RECALL_COMPONENT
        shutil.copytree(ctx.path(RECALL_DIR), recall)
        old = read_manifest(recall)
        (recall / "manifest.json").unlink()
        write_manifest(recall, RECALL_COMPONENT, version, data=old.data, params=old.params,
                       metrics=old.metrics, parent=parent)

        config = ctx.config.ranker(progress=False)
        # ``package.torchserve: true`` also writes the TorchServe model store (the optional
        # ``torchserve`` extra) that the chart's ``ranker.server: torchserve`` serves.
        optimised = load_optimised(ctx)
        # The ranker's fp16 export ships the evaluation pairs (pre-tokenised, with the CPU
        # graphs' scores); the lists are derived deterministically from the data and config.
        optimised.eval_lists = _ranker_data(ctx).eval_lists
        package(optimised, staging / RANKER_COMPONENT, config,
                data=summary, version=version, parent=parent,
                torchserve=bool(ctx.config.section("package").get("torchserve", False)))
        # seq-recommender: its Triton repository written around the train-sequence export.
        package_sequence(ctx.path(SEQUENCE_TRAIN_DIR), staging / SEQUENCE_COMPONENT, version,
                         parent=parent)
        # query-encoder: its Triton repository written around the train-semantic export.
        package_semantic(ctx.path(SEMANTIC_TRAIN_DIR), staging / SEMANTIC_COMPONENT, version,
                         parent=parent)

        shutil.copytree(ctx.path(REPORT_DIR), staging / REPORT_DIR)
        for extra in _extras(ctx):
            extra(PackageContext(staging, version, parent, ctx.run_dir, ctx.config,
                                 lambda: dataset))
        write_bundle_manifest(
            staging, version, parent=parent, data=summary,
            params={"pipeline": ctx.config.name, **ctx.config.sections},
            metrics=key_metrics(staging),
        )
        staging.rename(bundle)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return StepOutcome(f"bundle {version} (parent {parent or '-'})", bundle)
