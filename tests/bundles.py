"""A tiny but complete bundle (catalog, recall, ranker, sequence, semantic) for tests that start the
real servers.

Built in seconds: the tiny generated world, a quick MF, the tiny ranker build, a few epochs of
the tiny sequence model (``SEQUENCE_PRESETS["tiny"]``) and the tiny semantic path
(``SEMANTIC_PRESETS["tiny"]``: the catalog embedded, a few query-tower steps, the HNSW index).
The ranker's training is most of that time, so it is a step of its own (:func:`train_tiny_ranker`):
a test session trains it once and packages it as often as tests need (packaging again, e.g. with
TorchServe's model store, takes seconds). Importing this module imports the training code, never kserve.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.lifecycle.config import semantic_config, sequence_config
from pipeline.lifecycle.demo import save_catalog
from pipeline.lifecycle.semantic import build_semantic_component
from pipeline.lifecycle.sequence import build_sequence_component
from shopserve.artifacts import SEMANTIC_COMPONENT, SEQUENCE_COMPONENT, Manifest
from training.data.generator import Dataset, GeneratorConfig, generate
from training.ranker.build import BuildResult, RankerBuildConfig, package, train_and_optimise
from training.recall.build import RecallBuildConfig, build_recall
from training.recall.train import MFParams


@dataclass(frozen=True)
class TinyRanker:
    """The tiny ranker trained and optimised but not packaged: :meth:`package` writes it as a
    ranker component as often as needed.

    Attributes:
        dataset: The tiny world it was trained on.
        config: ``RankerBuildConfig.tiny()``.
        result: The build result; its ONNX variants live in the work folder it was trained in.
    """

    dataset: Dataset
    config: RankerBuildConfig
    result: BuildResult

    def package(self, out: Path, version: str, *, torchserve: bool = False) -> Manifest:
        """Write the ranker component into ``out``: what ``build_ranker`` writes after training."""
        return package(self.result, out, self.config, data=self.dataset.summary(), version=version,
                       torchserve=torchserve)  # fmt: skip


def train_tiny_ranker(workdir: Path, dataset: Dataset | None = None) -> TinyRanker:
    """Train and optimise the tiny ranker on the tiny world (``dataset``, default generated).

    ``workdir`` keeps the ONNX variants: it must outlive every :meth:`TinyRanker.package`.
    """
    dataset = dataset if dataset is not None else generate(GeneratorConfig.tiny())
    config = RankerBuildConfig.tiny()
    result = train_and_optimise(dataset, config, workdir)
    # Packaging reads the ONNX variants, never the torch models: a session need not hold them.
    return TinyRanker(dataset, config, replace(result, teacher=None, student=None))


def build_tiny_bundle(bundle: Path, version: str = "test-1", ranker: TinyRanker | None = None) -> Dataset:
    """Write ``catalog/``, ``recall/``, ``ranker/``, ``sequence/`` and ``semantic/`` of a tiny bundle
    into ``bundle``.

    Args:
        bundle: Folder to write.
        version: Version of every component.
        ranker: A tiny ranker trained already (:func:`train_tiny_ranker`), packaged here; default:
            one is trained (in a temporary folder) on the world built here.

    Returns:
        The generated dataset the bundle was built from.
    """
    dataset = ranker.dataset if ranker is not None else generate(GeneratorConfig.tiny())
    save_catalog(dataset, bundle / "catalog", version)
    build_recall(dataset.events.log, bundle / "recall", version, items=dataset.item_map,
                 config=RecallBuildConfig(params=MFParams(factors=16, iterations=5),
                                          show_progress=False))
    if ranker is not None:
        ranker.package(bundle / "ranker", version)
    else:
        with tempfile.TemporaryDirectory(prefix="tiny-ranker-") as work:
            train_tiny_ranker(Path(work), dataset).package(bundle / "ranker", version)
    build_sequence_component(dataset.events.log, dataset.items.item_id, bundle / SEQUENCE_COMPONENT,
                             sequence_config({"preset": "tiny"}, progress=False), version)
    # The semantic path on the ranker's split, as the pipeline builds it (SEMANTIC_PRESETS["tiny"]).
    split = RankerBuildConfig.tiny()
    build_semantic_component(dataset, bundle / SEMANTIC_COMPONENT,
                             semantic_config({"preset": "tiny"}, progress=False), version,
                             eval_fraction=split.eval_fraction, split_seed=split.seed)
    return dataset
