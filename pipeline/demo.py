"""Build the demo bundle: catalog, recall (and the ranker once it is packaged) in one folder.

Steps, each with a progress line and its time in the closing summary:

1. ``data``: generate the seeded demo world and store it as the ``catalog`` component;
2. ``recall``: tune, train, evaluate and package the MF recall model;
3. ``ranker``: fine-tune, optimise and package the BERT cross-encoder behind a quality guard.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from predictors.ranker.build import RankerBuildConfig, build_ranker
from predictors.recall.build import RecallBuildConfig, build_recall
from shopserve.artifacts import (
    CATALOG_COMPONENT,
    RANKER_COMPONENT,
    RECALL_COMPONENT,
    Manifest,
    new_version,
    write_manifest,
)
from shopserve.data.generator import Dataset, GeneratorConfig, generate

#: Small grid for the demo bundle: seconds, not minutes, on 2 cores.
DEMO_GRID: dict[str, tuple[Any, ...]] = {
    "factors": (32, 64),
    "regularization": (0.1, 1.0),
    "alpha": (1.0, 5.0),
    "bm25": (True, False),
    "iterations": (15,),
}


@dataclass
class StepResult:
    """One row of the build summary."""

    step: str
    seconds: float
    detail: str


@dataclass
class BuildReport:
    """What a bundle build produced."""

    bundle: Path
    version: str
    steps: list[StepResult] = field(default_factory=list)

    def table(self) -> str:
        """The closing summary as aligned text."""
        lines = [f"{'step':<10} {'seconds':>8}  result", f"{'-' * 10} {'-' * 8}  {'-' * 50}"]
        lines += [f"{s.step:<10} {s.seconds:>8.1f}  {s.detail}" for s in self.steps]
        total = sum(s.seconds for s in self.steps)
        lines.append(f"{'total':<10} {total:>8.1f}  bundle {self.version} in {self.bundle}")
        return "\n".join(lines)


def save_catalog(dataset: Dataset, folder: Path, version: str) -> Manifest:
    """Store the generated world as the bundle's ``catalog`` component."""
    folder.mkdir(parents=True, exist_ok=True)
    dataset.save(folder)
    return write_manifest(folder, CATALOG_COMPONENT, version, data=dataset.summary())


def build_demo_bundle(
    out: Path,
    config: GeneratorConfig | None = None,
    recall: RecallBuildConfig | None = None,
    ranker: RankerBuildConfig | None = None,
    log: Callable[[str], None] = print,
) -> BuildReport:
    """Build every component of a bundle into ``out``.

    Args:
        out: Bundle folder (``<out>/catalog``, ``<out>/recall``, ``<out>/ranker``).
        config: Data generator preset (default: the demo size).
        recall: Recall build settings (default: the demo grid).
        ranker: Ranker build settings (default: the demo preset, a few minutes on 2 cores).
        log: Where progress lines go.
    """
    out = Path(out)
    version = new_version()
    report = BuildReport(out, version)
    config = config or GeneratorConfig.demo()
    recall = recall or RecallBuildConfig(grid=DEMO_GRID)
    ranker = ranker or RankerBuildConfig.demo()

    start = time.perf_counter()
    log("[1/3] data: generating the demo catalog and behaviour log")
    dataset = generate(config)
    save_catalog(dataset, out / CATALOG_COMPONENT, version)
    summary = dataset.summary()
    report.steps.append(StepResult(
        "data", time.perf_counter() - start,
        f"{len(dataset.items)} items, {len(dataset.users)} users, {len(dataset.events)} events, "
        f"{len(dataset.queries)} queries",
    ))

    start = time.perf_counter()
    log("[2/3] recall: tuning and training MF (implicit ALS)")
    manifest = build_recall(
        dataset.events.log, out / RECALL_COMPONENT, version, items=dataset.item_map, config=recall,
        data={"source": summary["source"], "seed": summary["seed"]},
    )
    model, pop = manifest.metrics["model"], manifest.metrics["popularity"]
    report.steps.append(StepResult(
        "recall", time.perf_counter() - start,
        f"NDCG@10 {model['ndcg_at_10']:.3f} (popularity {pop['ndcg_at_10']:.3f}), "
        f"Recall@20 {model['recall_at_20']:.3f}",
    ))

    start = time.perf_counter()
    log("[3/3] ranker: fine-tuning, optimising and packaging the BERT cross-encoder")
    manifest = build_ranker(dataset, out / RANKER_COMPONENT, ranker, version=version)
    report.steps.append(StepResult(
        "ranker", time.perf_counter() - start,
        f"variant {manifest.params['variant']}, NDCG@10 {manifest.metrics['ndcg@10']:.3f} "
        f"(fp32 {manifest.metrics['reference_ndcg@10']:.3f}), "
        f"{manifest.metrics['ms_per_request_p50']:.1f} ms per request (p50)",
    ))
    return report
