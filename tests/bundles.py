"""A tiny but complete bundle (catalog, recall, ranker) for tests that start the real servers.

Built in seconds: the tiny generated world, a quick MF, and the tiny ranker build. Importing this
module imports the training code, never kserve.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.lifecycle.demo import save_catalog
from training.data.generator import Dataset, GeneratorConfig, generate
from training.ranker.build import RankerBuildConfig, build_ranker
from training.recall.build import RecallBuildConfig, build_recall
from training.recall.train import MFParams


def build_tiny_bundle(bundle: Path, version: str = "test-1") -> Dataset:
    """Write ``catalog/``, ``recall/`` and ``ranker/`` of a tiny bundle into ``bundle``.

    Returns:
        The generated dataset the bundle was built from.
    """
    dataset = generate(GeneratorConfig.tiny())
    save_catalog(dataset, bundle / "catalog", version)
    build_recall(dataset.events.log, bundle / "recall", version, items=dataset.item_map,
                 config=RecallBuildConfig(params=MFParams(factors=16, iterations=5),
                                          show_progress=False))
    build_ranker(dataset, bundle / "ranker", RankerBuildConfig.tiny(), version=version)
    return dataset
