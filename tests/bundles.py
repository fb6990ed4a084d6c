"""A tiny but complete bundle (catalog, recall, ranker, sequence) for tests that start the real
servers.

Built in seconds: the tiny generated world, a quick MF, the tiny ranker build and a few epochs of
the tiny sequence model (``SEQUENCE_PRESETS["tiny"]``). Importing this module imports the
training code, never kserve.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.lifecycle.config import sequence_config
from pipeline.lifecycle.demo import save_catalog
from pipeline.lifecycle.sequence import build_sequence_component
from shopserve.artifacts import SEQUENCE_COMPONENT
from training.data.generator import Dataset, GeneratorConfig, generate
from training.ranker.build import RankerBuildConfig, build_ranker
from training.recall.build import RecallBuildConfig, build_recall
from training.recall.train import MFParams


def build_tiny_bundle(bundle: Path, version: str = "test-1") -> Dataset:
    """Write ``catalog/``, ``recall/``, ``ranker/`` and ``sequence/`` of a tiny bundle into ``bundle``.

    Returns:
        The generated dataset the bundle was built from.
    """
    dataset = generate(GeneratorConfig.tiny())
    save_catalog(dataset, bundle / "catalog", version)
    build_recall(dataset.events.log, bundle / "recall", version, items=dataset.item_map,
                 config=RecallBuildConfig(params=MFParams(factors=16, iterations=5),
                                          show_progress=False))
    build_ranker(dataset, bundle / "ranker", RankerBuildConfig.tiny(), version=version)
    build_sequence_component(dataset.events.log, dataset.items.item_id, bundle / SEQUENCE_COMPONENT,
                             sequence_config({"preset": "tiny"}, progress=False), version)
    return dataset
