"""A pipeline run folder's layout and what reads it back: step folders and files, the context
every step gets, the optimise step's result.

Shared by the steps (:mod:`pipeline.lifecycle.steps`, which write the run folder) and the report
(:mod:`pipeline.lifecycle.report`, which reads it), so neither imports the other.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.lifecycle.config import PipelineConfig
    from training.data.generator import Dataset
    from training.ranker.build import BuildResult, Row

#: Version written into component manifests inside a run folder; the package step replaces it.
UNPACKAGED = "unpackaged"

DATA_DIR = "data"
RECALL_DIR = "recall"
RANKER_TRAIN_DIR = "ranker-train"
RANKER_OPTIMISE_DIR = "ranker-optimise"
#: The sequence model's export (item ids, embeddings, ONNX graph) and its result.json.
SEQUENCE_TRAIN_DIR = "sequence-train"
REPORT_DIR = "report"
TEACHER_DIR = "teacher"
ROWS_FILE = "rows.json"
RESULT_FILE = "result.json"
EVALUATION_FILE = "evaluation.json"


@dataclass
class StepContext:
    """What every step gets.

    Attributes:
        config: The pipeline configuration.
        progress: Show progress bars (off with ``--quiet`` or ``--json``).
        log: Where progress lines go (stderr).
        state: The run's recorded state of earlier steps (e.g. the packaged version).
    """

    config: PipelineConfig
    progress: bool = True
    log: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        """The run folder."""
        return Path(self.config.run_dir)

    def path(self, name: str) -> Path:
        """A folder of the run."""
        return self.run_dir / name

    def dataset(self) -> Dataset:
        """The generated data set of the ``data`` step."""
        from training.data.generator import Dataset

        return Dataset.load(self.path(DATA_DIR))


def rows_to_json(rows: list[Row]) -> list[dict[str, Any]]:
    """Evaluation rows as JSON-ready dicts (inverse: :func:`rows_from_json`)."""
    return [asdict(r) for r in rows]


def rows_from_json(raw: list[dict[str, Any]]) -> list[Row]:
    """Evaluation rows back from :func:`rows_to_json`."""
    from training.ranker.build import Row
    from training.ranker.evaluate import RerankReport

    return [Row(**{**r, "report": RerankReport(**r["report"])}) for r in raw]


def load_optimised(ctx: StepContext) -> BuildResult:
    """The ``optimize ranker`` step's output as a ``BuildResult`` (no torch models: not needed)."""
    from training.ranker.build import BuildResult
    from training.ranker.modeling import load_tokenizer
    from training.ranker.optimise import Variant

    folder = ctx.path(RANKER_OPTIMISE_DIR)
    raw = json.loads((folder / RESULT_FILE).read_text())
    variants = [
        Variant(**{**v, "path": folder / v["path"],
                   "fp32_path": None if v["fp32_path"] is None else folder / v["fp32_path"]})
        for v in raw["variants"]
    ]
    return BuildResult(rows_from_json(raw["rows"]), variants, None, None, load_tokenizer(),
                       int(raw["max_length"]), [], dict(raw["data"]))  # fmt: skip
