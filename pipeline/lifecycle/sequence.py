"""The sequence recommender in the lifecycle: the ``train-sequence`` step and its bundle component.

``train-sequence`` trains the SASRec model of :mod:`training.sequence.build` on the run's
interaction log (a progress bar per epoch), evaluates it and writes its export into
``sequence-train/``: ``item_ids.npy``, ``item_embeddings.npy``, ``model.onnx`` and ``result.json``
(the manifest's ``params``, ``metrics`` and ``data``).

:func:`package_sequence` turns such an export into the bundle's ``sequence`` component::

    sequence/manifest.json                      sha256 of every file, params, metrics, data
    sequence/item_ids.npy                       catalog item id per model index (-1 at 0)
    sequence/item_embeddings.npy                float32 [n_items + 1, D]
    sequence/seq-recommender/config.pbtxt       GPU configuration (the default)
    sequence/seq-recommender/configs/cpu.pbtxt  CPU configuration (--model-config-name=cpu)
    sequence/seq-recommender/1/model.onnx       the graph both serve

The package step calls it; :func:`build_sequence_component` does training and packaging in one
call (the tests' tiny bundle).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.lifecycle.layout import RESULT_FILE, SEQUENCE_TRAIN_DIR, StepContext
from predictors.ranker.sequence_repo import SequenceServing, sequence_profiles, write_sequence_repository
from shopserve.artifacts import (
    SEQUENCE_COMPONENT,
    SEQUENCE_EMBEDDINGS_FILE,
    SEQUENCE_ITEM_IDS_FILE,
    SEQUENCE_WEIGHTS_FILE,
    Manifest,
    write_manifest,
)

if TYPE_CHECKING:
    import numpy as np

    from shopserve.interactions import Interactions
    from training.sequence.train import SequenceConfig

#: The graph's file in an export folder (``training.sequence.build.SEQUENCE_ONNX_FILE``).
ONNX_FILE = "model.onnx"


def train_and_export(
    log: Interactions, catalog_item_ids: np.ndarray, out: Path, config: SequenceConfig,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train and evaluate the sequence model, write its export and ``result.json`` into ``out``.

    Args:
        log: The interaction log (the order of each shopper's events counts).
        catalog_item_ids: Every catalog item id (the model's index space).
        out: The export folder (created).
        config: Architecture, optimisation, seed and progress bar.
        data: Summary of the data set to record beside the model's own counts.

    Returns:
        ``{"params": ..., "metrics": ..., "data": ...}``, as written to ``result.json``.
    """
    from training.sequence.build import export_sequence, train_sequence_model

    trained = train_sequence_model(log, catalog_item_ids, config)
    result = export_sequence(trained, out)
    result["data"] = {**dict(data or {}), **result["data"]}
    (Path(out) / RESULT_FILE).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def step_train_sequence(ctx: StepContext) -> str:
    """Train, evaluate and export the sequence model into ``sequence-train/``."""
    folder = ctx.path(SEQUENCE_TRAIN_DIR)
    if folder.exists():
        shutil.rmtree(folder)  # a step owns its folder: no leftovers of a failed attempt
    dataset = ctx.dataset()
    summary = dataset.summary()
    result = train_and_export(
        dataset.events.log, dataset.items.item_id, folder, ctx.config.sequence(progress=ctx.progress),
        data={"source": summary["source"], "seed": summary["seed"]},
    )
    metrics, params = result["metrics"], result["params"]
    return (f"NDCG@10 {metrics['ndcg_at_10']:.3f} (popularity {metrics['popularity_ndcg_at_10']:.3f}), "
            f"HR@10 {metrics['hit_rate_at_10']:.3f}; L={params['sequence_length']}, "
            f"{params['epochs']} epochs")


def package_sequence(
    source: Path,
    component: Path,
    version: str,
    *,
    parent: str | None = None,
    data: Mapping[str, Any] | None = None,
    serving: Mapping[str, Any] | None = None,
) -> Manifest:
    """Write the ``sequence`` component from an export folder (see the module docstring).

    Args:
        source: An export folder of :func:`train_and_export`.
        component: The component folder to write (created; must not hold other files).
        version: The bundle's version.
        parent: The parent version, if any.
        data: More data summary for the manifest (the export's own comes first).
        serving: ``SequenceServing`` batching fields over its defaults.

    Returns:
        The component's manifest (checksums of every file).

    Raises:
        BundleError: the graph is not the ``seq-recommender`` contract.
    """
    source, component = Path(source), Path(component)
    result = json.loads((source / RESULT_FILE).read_text())
    params, metrics = dict(result["params"]), dict(result["metrics"])
    config = SequenceServing.from_onnx(source / ONNX_FILE, int(params["n_items"]), **dict(serving or {}))
    if (config.sequence_length, config.top_k) != (params["sequence_length"], params["top_k"]):
        raise ValueError(f"{source}: the graph's L, K ({config.sequence_length}, {config.top_k}) "
                         f"differ from its result's ({params['sequence_length']}, {params['top_k']})")
    component.mkdir(parents=True, exist_ok=True)
    for name in (SEQUENCE_ITEM_IDS_FILE, SEQUENCE_EMBEDDINGS_FILE):
        shutil.copyfile(source / name, component / name)
    if (source / SEQUENCE_WEIGHTS_FILE).is_file():  # exports before the GPU rows have none
        shutil.copyfile(source / SEQUENCE_WEIGHTS_FILE, component / SEQUENCE_WEIGHTS_FILE)
    write_sequence_repository(component, source / ONNX_FILE, config)
    params.pop("model_file", None)  # the graph lives in the model folder: the profiles say where
    params["profiles"] = sequence_profiles()
    params["serving"] = {"max_batch_size": config.max_batch_size,
                         "preferred_batch_sizes": list(config.preferred_batch_sizes),
                         "max_queue_delay_us": config.max_queue_delay_us,
                         "instances": config.instances, "cpu_threads": config.threads,
                         "session_dim": config.dim}
    return write_manifest(component, SEQUENCE_COMPONENT, version,
                          data={**dict(data or {}), **result["data"]}, params=params,
                          metrics=metrics, parent=parent)


def build_sequence_component(
    log: Interactions, catalog_item_ids: np.ndarray, component: Path, config: SequenceConfig,
    version: str, *, data: Mapping[str, Any] | None = None,
) -> Manifest:
    """Train, export and package in one call (the export goes through a temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="shopserve-sequence-") as tmp:
        train_and_export(log, catalog_item_ids, Path(tmp), config, data)
        return package_sequence(Path(tmp), component, version)

