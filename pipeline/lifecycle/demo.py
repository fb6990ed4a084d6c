"""Build the demo bundle: the pipeline on the demo configuration, copied to ``artifacts/demo``.

``make up`` runs ``shopserve build-demo`` when ``artifacts/demo`` has no ranker yet. It runs
``shopserve pipeline run --config configs/pipeline-demo.yaml`` (data, train, optimise, the
sequence model, the semantic path, evaluate, package into the registry, steps cached in
``artifacts/runs/demo``) and copies the packaged bundle to ``--out``, whose layout (``catalog/``,
``recall/``, ``ranker/``, ``sequence/``, ``semantic/``, each with ``manifest.json``) the local
stack, the tests and the benchmarks read.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shopserve.artifacts import CATALOG_COMPONENT, Manifest, write_manifest
from training.data.generator import Dataset
from training.synonyms import mine_into
from transformers_pre.catalog import write_lexical_index

if TYPE_CHECKING:
    from pipeline.lifecycle.run import RunResult


def save_catalog(dataset: Dataset, folder: Path, version: str,
                 train_query_ids: np.ndarray | None = None) -> Manifest:
    """Store the generated world as the bundle's ``catalog`` component, its lexical index built.

    With ``train_query_ids`` (the ranker's training split, never its held-out queries) the
    transformer's query-rewrite synonyms are mined from those queries and stored beside it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    dataset.save(folder)
    params = mine_into(folder, dataset, train_query_ids) if train_query_ids is not None else {}
    write_lexical_index(folder)
    return write_manifest(folder, CATALOG_COMPONENT, version, data=dataset.summary(),
                          params=params)


def build_demo_bundle(
    out: Path,
    config: Path | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Run the pipeline on the demo configuration and copy its bundle to ``out``.

    Args:
        out: Bundle folder to write (``<out>/catalog``, ``<out>/recall``, ``<out>/ranker``,
            ``<out>/sequence``, ``<out>/semantic``, plus ``report/`` and ``bundle.json``);
            replaced whole once the copy is complete.
        config: Pipeline configuration (default ``configs/pipeline-demo.yaml``).
        progress: Progress lines and bars.
        log: Where progress lines go (default stderr).

    Raises:
        RuntimeError: a step failed (the run folder keeps what succeeded; rerun to resume).
    """
    from pipeline.lifecycle.config import DEMO_CONFIG, PipelineConfig
    from pipeline.lifecycle.run import run_pipeline

    result = run_pipeline(PipelineConfig.load(config or DEMO_CONFIG), progress=progress, log=log)
    if not result.ok or result.bundle is None:
        raise RuntimeError("the demo pipeline failed:\n" + result.table())
    out = Path(out)
    staging = out.with_name(f".{out.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(result.bundle, staging)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return result
