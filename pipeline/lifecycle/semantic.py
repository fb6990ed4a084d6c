"""The semantic retrieval path in the lifecycle: the ``train-semantic`` step and its bundle component.

``train-semantic`` embeds the catalog with the bi-encoder, fine-tunes its query tower on the
ranker's *training* queries (the same split, so a release has one held-out set), measures it on
the held-out ones and writes its export into ``semantic-train/``: ``model.onnx``,
``model-int8.onnx`` (when it passed the int8 guard), ``item_embeddings.npz``, ``index.faiss``,
``tokenizer.json`` and ``result.json`` (the manifest's
``params``, ``metrics`` and ``data``); see :mod:`training.semantic.build`.

:func:`package_semantic` turns such an export into the bundle's ``semantic`` component::

    semantic/manifest.json                     sha256 of every file, params, metrics, data
    semantic/item_embeddings.npz               item_id int64 [N], vectors float32 [N, D]
    semantic/index.faiss                       HNSW (inner product) over the vectors
    semantic/tokenizer.json                    the query tokenizer (truncates at max_query_length)
    semantic/query-encoder/config.pbtxt        GPU configuration (the default)
    semantic/query-encoder/configs/cpu.pbtxt   CPU configuration (--model-config-name=cpu)
    semantic/query-encoder/1/model.onnx        the CPU's graph (int8 if it passed the guard,
                                               else fp32 and the GPU's too)
    semantic/query-encoder/1/model-fp32.onnx   the GPU's graph (fp32; only beside an int8 one)

The package step calls it; :func:`build_semantic_component` does training and packaging in one
call (the tests' tiny bundle).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.lifecycle.layout import RESULT_FILE, StepContext
from predictors.ranker.encoder_repo import EncoderServing, encoder_profiles, write_encoder_repository
from shopserve.artifacts import (
    SEMANTIC_COMPONENT,
    SEMANTIC_DIM,
    SEMANTIC_EMBEDDINGS_FILE,
    SEMANTIC_INDEX_FILE,
    SEMANTIC_MAX_QUERY_LENGTH,
    SEMANTIC_TOKENIZER_FILE,
    SEMANTIC_VECTORS,
    Manifest,
    load_npz,
    write_manifest,
)
from shopserve.errors import BundleError

if TYPE_CHECKING:
    from training.data.generator import Dataset
    from training.semantic.train import SemanticConfig

#: The step's folder in the run: the export (graph, embeddings, index, tokenizer) and result.json.
SEMANTIC_TRAIN_DIR = "semantic-train"
#: The graph's file in an export folder (``training.semantic.build.SEMANTIC_ONNX_FILE``).
ONNX_FILE = "model.onnx"
#: Its int8 graph, when the build's guard passed it (``training.semantic.build.SEMANTIC_INT8_FILE``).
INT8_FILE = "model-int8.onnx"
#: The export's files copied into the component as they are.
COMPONENT_FILES = (SEMANTIC_EMBEDDINGS_FILE, SEMANTIC_INDEX_FILE, SEMANTIC_TOKENIZER_FILE)


def train_and_export(
    dataset: Dataset, out: Path, config: SemanticConfig, *, eval_fraction: float = 0.2,
    split_seed: int = 0, data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build and measure the semantic path, write its export and ``result.json`` into ``out``.

    Args:
        dataset: The generated world.
        out: The export folder (created).
        config: Fine-tuning, embedding and index settings.
        eval_fraction, split_seed: The query split (``split_queries``): the ranker's, so that
            the semantic path never trains on a query the release is evaluated on.
        data: Summary of the data set to record beside the component's own counts.

    Returns:
        ``{"params": ..., "metrics": ..., "data": ...}``, as written to ``result.json``.
    """
    from training.data.generator import split_queries
    from training.semantic.build import export_semantic, train_semantic

    train_ids, test_ids = split_queries(dataset, eval_fraction, split_seed)
    trained = train_semantic(dataset, train_ids, test_ids, config,
                             split={"eval_fraction": eval_fraction, "seed": split_seed})
    result = export_semantic(trained, dataset, out)
    result["data"] = {**dict(data or {}), **result["data"]}
    (Path(out) / RESULT_FILE).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def step_train_semantic(ctx: StepContext) -> str:
    """Build, measure and export the semantic path into ``semantic-train/``."""
    folder = ctx.path(SEMANTIC_TRAIN_DIR)
    if folder.exists():
        shutil.rmtree(folder)  # a step owns its folder: no leftovers of a failed attempt
    dataset = ctx.dataset()
    summary = dataset.summary()
    ranker = ctx.config.ranker(progress=False)
    result = train_and_export(
        dataset, folder, ctx.config.semantic(progress=ctx.progress),
        eval_fraction=ranker.eval_fraction, split_seed=ranker.seed,
        data={"source": summary["source"], "seed": summary["seed"]},
    )
    metrics, params = result["metrics"], result["params"]
    return (f"Recall@50 {metrics['semantic_recall_at_50']:.3f} (untuned "
            f"{metrics['base_recall_at_50']:.3f}, BM25 {metrics['bm25_recall_at_50']:.3f}); "
            f"{params['encoder']['steps']} steps, index recall@50 "
            f"{metrics['index_recall_at_50']:.3f}, {metrics['seconds']['total']:.0f} s")


def package_semantic(
    source: Path,
    component: Path,
    version: str,
    *,
    parent: str | None = None,
    data: Mapping[str, Any] | None = None,
    serving: Mapping[str, Any] | None = None,
) -> Manifest:
    """Write the ``semantic`` component from an export folder (see the module docstring).

    Args:
        source: An export folder of :func:`train_and_export`.
        component: The component folder to write (created; must not hold other files).
        version: The bundle's version.
        parent: The parent version, if any.
        data: More data summary for the manifest (the export's own comes first).
        serving: ``EncoderServing`` batching fields over its defaults.

    Returns:
        The component's manifest (checksums of every file).

    Raises:
        BundleError: the graph is not the ``query-encoder`` contract, or its embedding size is
            not the item embeddings'.
    """
    source, component = Path(source), Path(component)
    result = json.loads((source / RESULT_FILE).read_text())
    params, metrics = dict(result["params"]), dict(result["metrics"])
    config = EncoderServing.from_onnx(
        source / ONNX_FILE, max_query_length=int(params[SEMANTIC_MAX_QUERY_LENGTH]),
        vocab_size=int(params["vocab_size"]), **dict(serving or {}))
    vectors = load_npz(source / SEMANTIC_EMBEDDINGS_FILE)[SEMANTIC_VECTORS]
    if not config.dim == int(params[SEMANTIC_DIM]) == vectors.shape[1]:
        raise BundleError(f"{source}: the graph's embedding size {config.dim}, the result's "
                          f"{params[SEMANTIC_DIM]} and the item vectors' {vectors.shape[1]} differ")
    component.mkdir(parents=True, exist_ok=True)
    for name in COMPONENT_FILES:
        shutil.copyfile(source / name, component / name)
    int8 = source / INT8_FILE
    write_encoder_repository(component, source / ONNX_FILE, config,
                             cpu_onnx=int8 if int8.exists() else None)
    params["profiles"] = encoder_profiles("int8" if int8.exists() else "fp32")
    params["serving"] = {"max_batch_size": config.max_batch_size,
                         "preferred_batch_sizes": list(config.preferred_batch_sizes),
                         "max_queue_delay_us": config.max_queue_delay_us,
                         "instances": config.instances, "cpu_threads": config.threads}
    return write_manifest(component, SEMANTIC_COMPONENT, version,
                          data={**dict(data or {}), **result["data"]}, params=params,
                          metrics=metrics, parent=parent)


def build_semantic_component(
    dataset: Dataset, component: Path, config: SemanticConfig, version: str, *,
    eval_fraction: float = 0.2, split_seed: int = 0, data: Mapping[str, Any] | None = None,
) -> Manifest:
    """Build, export and package in one call (the export goes through a temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="shopserve-semantic-") as tmp:
        train_and_export(dataset, Path(tmp), config, eval_fraction=eval_fraction,
                         split_seed=split_seed, data=data)
        return package_semantic(Path(tmp), component, version)
