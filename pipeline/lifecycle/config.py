"""The pipeline's configuration file (``pipeline.yaml``): sizes and parameters of every step.

One YAML file per configuration; ``configs/pipeline-tiny.yaml`` (tests, seconds) and
``configs/pipeline-demo.yaml`` (the demo bundle, minutes) are checked in. Sections::

    name: demo                      # names the run; shown in the summary
    run_dir: artifacts/runs/demo    # step outputs and the state file (relative to the file's cwd)
    registry: artifacts/bundles     # where packaged bundles go
    data:     {preset: demo, seed: 0, overrides: {...GeneratorConfig fields}}
    recall:   {params: {...MFParams fields} | null (tune), grid: {...}, holdout_fraction: 0.2}
    ranker:   {preset: demo, overrides: {...RankerBuildConfig fields; train/distill as dicts}}
    sequence: {preset: demo, seed: 0, overrides: {...SequenceConfig fields}}
    semantic: {preset: demo, seed: 0, overrides: {...SemanticConfig fields; index as a dict}}
    evaluate: {ks: [1, 3, 5, 10, 20, 50]}
    package:  {torchserve: false, extras: ["module:function", ...]}

Each step's content hash covers the sections it reads (see ``pipeline.lifecycle.run``), so editing the
ranker section re-runs the ranker steps and what follows them, never the data or recall steps.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    # Imported where used: the ranker pulls torch, which the CLI's --help must not wait for.
    from training.data.generator import GeneratorConfig
    from training.ranker.build import RankerBuildConfig
    from training.recall.build import RecallBuildConfig
    from training.semantic.train import SemanticConfig
    from training.sequence.train import SequenceConfig

#: The checked-in configurations: ``configs/`` beside the code in a checkout; an installed copy (the
#: pipeline image) has no checkout around it and is told where they are by ``SHOPSERVE_CONFIG_DIR``.
CONFIG_DIR = Path(os.environ.get("SHOPSERVE_CONFIG_DIR")
                  or Path(__file__).resolve().parents[2] / "configs")
DEMO_CONFIG = CONFIG_DIR / "pipeline-demo.yaml"
TINY_CONFIG = CONFIG_DIR / "pipeline-tiny.yaml"

SECTIONS = ("data", "recall", "ranker", "sequence", "semantic", "evaluate", "package")

#: The sequence model's presets: ``SequenceConfig`` fields over its defaults. ``demo`` is the
#: defaults (the demo bundle's budget); ``tiny`` trains in seconds on the tiny world, for tests
#: (a few epochs of a one-block model: its quality is not the point).
SEQUENCE_PRESETS: dict[str, dict[str, Any]] = {
    "demo": {},
    "tiny": {"max_length": 8, "dim": 16, "layers": 1, "heads": 1, "epochs": 4, "patience": 4,
             "top_k": 50, "threads": 1},
}


#: The semantic path's presets: ``SemanticConfig`` fields over its defaults. ``demo`` is the
#: defaults (the demo bundle's budget: 60 query-tower steps); ``tiny`` builds in seconds on the
#: tiny world, for tests (a few steps: its quality is not the point).
SEMANTIC_PRESETS: dict[str, dict[str, Any]] = {
    "demo": {},
    "tiny": {"steps": 4, "batch_size": 8, "export_check_queries": 4, "threads": 1},
}


class ConfigError(ValueError):
    """A pipeline configuration that cannot be used (unknown key, bad value)."""


@dataclass
class PipelineConfig:
    """A parsed ``pipeline.yaml``.

    Attributes:
        name: Name of the configuration (``tiny``, ``demo``).
        run_dir: Folder of step outputs and the run's state file.
        registry: Bundle registry folder (``artifacts/bundles``).
        sections: The raw per-step sections (``data``, ``recall``, ``ranker``, ``sequence``,
            ``semantic``, ``evaluate``, ``package``), what the content hashes cover.
        source: File the configuration was read from, if any.
    """

    name: str
    run_dir: Path
    registry: Path
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: Path | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: Path | None = None) -> PipelineConfig:
        """Parse and validate a configuration mapping.

        Raises:
            ConfigError: unknown top-level keys or sections, or a section that is not a mapping.
        """
        unknown = set(raw) - {"name", "run_dir", "registry", *SECTIONS}
        if unknown:
            raise ConfigError(f"unknown keys in pipeline config: {', '.join(sorted(unknown))}")
        sections: dict[str, dict[str, Any]] = {}
        for name in SECTIONS:
            value = raw.get(name) or {}
            if not isinstance(value, Mapping):
                raise ConfigError(f"section '{name}' must be a mapping, got {type(value).__name__}")
            sections[name] = dict(value)
        config = cls(
            name=str(raw.get("name", "pipeline")),
            run_dir=Path(raw.get("run_dir", f"artifacts/runs/{raw.get('name', 'pipeline')}")),
            registry=Path(raw.get("registry", "artifacts/bundles")),
            sections=sections,
            source=source,
        )
        # Build every step's settings once now, so a typo fails before any step runs.
        config.generator()
        config.recall()
        config.ranker()
        config.sequence()
        config.semantic()
        config.ks()
        return config

    @classmethod
    def load(cls, path: Path | str) -> PipelineConfig:
        """Read a YAML configuration file."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read pipeline config ({exc})") from exc
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{path}: a pipeline config is a mapping")
        return cls.from_dict(raw, source=path)

    def with_overrides(self, *, run_dir: Path | None = None, registry: Path | None = None) -> PipelineConfig:
        """A copy with the run folder or the registry moved (CLI flags)."""
        return replace(self, run_dir=run_dir or self.run_dir, registry=registry or self.registry)

    def section(self, name: str) -> dict[str, Any]:
        """One raw section (empty when absent)."""
        return self.sections.get(name, {})

    def generator(self) -> GeneratorConfig:
        """The data generator's settings: a preset plus field overrides."""
        from training.data.generator import GeneratorConfig

        data = self.section("data")
        presets = {"tiny": GeneratorConfig.tiny, "demo": GeneratorConfig.demo}
        preset = data.get("preset", "demo")
        if preset not in presets:
            raise ConfigError(f"data.preset must be one of {sorted(presets)}, got {preset!r}")
        base = presets[preset](seed=int(data.get("seed", 0)))
        return _replace(base, data.get("overrides") or {}, "data.overrides")

    def recall(self, progress: bool = True) -> RecallBuildConfig:
        """Recall build settings: fixed ``params`` or, when absent, tuning over ``grid``."""
        from training.recall.build import RecallBuildConfig
        from training.recall.train import MFParams

        section = self.section("recall")
        params = section.get("params")
        mf = None if params is None else _replace(MFParams(), params, "recall.params")
        kwargs: dict[str, Any] = {"params": mf, "show_progress": progress}
        if section.get("grid"):
            kwargs["grid"] = {k: tuple(v) for k, v in dict(section["grid"]).items()}
        if "holdout_fraction" in section:
            kwargs["holdout_fraction"] = float(section["holdout_fraction"])
        return RecallBuildConfig(**kwargs)

    def ranker(self, progress: bool = True) -> RankerBuildConfig:
        """Ranker build settings: a preset (``tiny``, ``demo``) plus field overrides."""
        from training.ranker.build import RankerBuildConfig

        section = self.section("ranker")
        presets = {"tiny": RankerBuildConfig.tiny, "demo": RankerBuildConfig.demo}
        preset = section.get("preset", "demo")
        if preset not in presets:
            raise ConfigError(f"ranker.preset must be one of {sorted(presets)}, got {preset!r}")
        base = presets[preset](seed=int(section.get("seed", 0)))
        overrides = dict(section.get("overrides") or {})
        for nested in ("train", "distill"):
            if nested in overrides:
                overrides[nested] = _replace(getattr(base, nested), overrides[nested],
                                             f"ranker.overrides.{nested}")
        for listed in ("keep_layers", "variants"):
            if listed in overrides:
                overrides[listed] = tuple(overrides[listed])
        config = _replace(base, overrides, "ranker.overrides")
        if not progress:
            config = replace(config, progress=False)
        return config

    def sequence(self, progress: bool = True) -> SequenceConfig:
        """Sequence model settings: a preset (:data:`SEQUENCE_PRESETS`) plus field overrides."""
        return sequence_config(self.section("sequence"), progress)

    def semantic(self, progress: bool = True) -> SemanticConfig:
        """Semantic path settings: a preset (:data:`SEMANTIC_PRESETS`) plus field overrides."""
        return semantic_config(self.section("semantic"), progress)

    def ks(self) -> tuple[int, ...]:
        """Cut-offs of the report's NDCG@K and Recall@K curves."""
        ks = tuple(int(k) for k in self.section("evaluate").get("ks", (1, 3, 5, 10, 20, 50)))
        if not ks or min(ks) < 1:
            raise ConfigError(f"evaluate.ks must be positive integers, got {list(ks)}")
        return tuple(sorted(set(ks)))


def sequence_config(section: Mapping[str, Any], progress: bool = True) -> SequenceConfig:
    """A ``SequenceConfig`` from a ``sequence`` section: ``preset``, ``seed``, ``overrides``.

    Raises:
        ConfigError: an unknown preset or field, or a bad value.
    """
    from training.sequence.train import SequenceConfig

    preset = section.get("preset", "demo")
    if preset not in SEQUENCE_PRESETS:
        raise ConfigError(f"sequence.preset must be one of {sorted(SEQUENCE_PRESETS)}, got {preset!r}")
    try:
        base = SequenceConfig(**{**SEQUENCE_PRESETS[preset], "seed": int(section.get("seed", 0))})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"sequence.preset {preset}: {exc}") from exc
    config = _replace(base, dict(section.get("overrides") or {}), "sequence.overrides")
    return replace(config, progress=False) if not progress else config


def semantic_config(section: Mapping[str, Any], progress: bool = True) -> SemanticConfig:
    """A ``SemanticConfig`` from a ``semantic`` section: ``preset``, ``seed``, ``overrides``.

    Raises:
        ConfigError: an unknown preset or field, or a bad value.
    """
    from training.semantic.train import SemanticConfig

    preset = section.get("preset", "demo")
    if preset not in SEMANTIC_PRESETS:
        raise ConfigError(f"semantic.preset must be one of {sorted(SEMANTIC_PRESETS)}, got {preset!r}")
    try:
        base = SemanticConfig(**{**SEMANTIC_PRESETS[preset], "seed": int(section.get("seed", 0))})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"semantic.preset {preset}: {exc}") from exc
    config = _replace(base, dict(section.get("overrides") or {}), "semantic.overrides")
    return replace(config, progress=False) if not progress else config


def _replace(base: Any, overrides: Mapping[str, Any], where: str) -> Any:
    """``dataclasses.replace`` that names the unknown field instead of a TypeError."""
    known = {f.name for f in fields(base)}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    try:
        return replace(base, **dict(overrides))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
