"""Train, evaluate and package the recall component of a bundle (the lifecycle's recall step)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from predictors.recall.index import IndexConfig, build_index
from predictors.recall.recommender import COMPONENT, FACTORS, SEEN, index_dirname
from shopserve.artifacts import Manifest, save_npz, write_manifest
from shopserve.interactions import IdMap, Interactions, temporal_split
from training.recall.train import (
    DEFAULT_GRID,
    MFModel,
    MFParams,
    evaluate_model,
    evaluate_popularity,
    fit,
    to_csr,
    tune,
)


@dataclass(frozen=True)
class RecallBuildConfig:
    """How to build the recall component.

    Attributes:
        params: Fixed hyper-parameters; ``None`` tunes them on a validation split first.
        grid: Search space when tuning.
        holdout_fraction: Latest share of each user's interactions held out for evaluation.
        index: Also ship a prebuilt approximate index of this kind (``None``: build at load).
        show_progress: Progress bars while training.
    """

    params: MFParams | None = None
    grid: Mapping[str, Sequence[Any]] = field(default_factory=lambda: dict(DEFAULT_GRID))
    holdout_fraction: float = 0.2
    index: IndexConfig | None = None
    show_progress: bool = True


def build_recall(
    log: Interactions,
    out: Path,
    version: str,
    *,
    items: IdMap | None = None,
    config: RecallBuildConfig = RecallBuildConfig(),
    data: Mapping[str, Any] | None = None,
    parent: str | None = None,
) -> Manifest:
    """Tune (optionally), train, evaluate and package the recall model.

    Evaluation trains on all but each user's latest interactions and scores the held-out ones
    against the popularity baseline; the served model is then retrained on the whole log with the
    same parameters, so it knows the most recent behaviour.

    Args:
        log: Interaction log (e.g. views, carts and purchases with weights).
        out: The recall component folder to write.
        version: Bundle version.
        items: Item universe (the catalog), so items without interactions still have a row.
        config: Build settings.
        data: Extra data summary for the manifest.
        parent: Version of the bundle this one replaces.
    """
    train, test = temporal_split(log, config.holdout_fraction)
    tuning: list[dict[str, Any]] = []
    if config.params is None:
        params, rows = tune(train, grid=config.grid, holdout_fraction=config.holdout_fraction)
        tuning = [{**_short(r.params), **r.result.as_dict()} for r in rows[:10]]
    else:
        params = config.params
    held_out = fit(train, params, items=items, show_progress=config.show_progress)
    metrics = {
        "model": evaluate_model(held_out, train, test).as_dict(),
        "popularity": evaluate_popularity(train, test).as_dict(),
        "train_seconds": round(held_out.train_seconds, 3),
    }
    served = fit(log, params, items=items, show_progress=config.show_progress)
    return save_recall(
        Path(out), served, log, version, index=config.index,
        data={**log.summary(), **dict(data or {})},
        params={"mf": asdict(params), "tuning_top10": tuning,
                "holdout_fraction": config.holdout_fraction},
        metrics=metrics, parent=parent,
    )


def _short(params: MFParams) -> dict[str, Any]:
    return {k: v for k, v in asdict(params).items()
            if k in ("algorithm", "factors", "regularization", "alpha", "bm25", "iterations")}


def save_recall(
    folder: Path,
    model: MFModel,
    seen_log: Interactions,
    version: str,
    *,
    index: IndexConfig | None = None,
    data: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    parent: str | None = None,
) -> Manifest:
    """Write a recall component folder and its manifest.

    Args:
        folder: Destination (created).
        model: Trained factors and id maps.
        seen_log: Interactions whose items each user has seen (usually the training log).
        version: Bundle version.
        index: Also prebuild and ship this approximate index.
        data, params, metrics, parent: Manifest fields.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_npz(
        folder / FACTORS,
        user_factors=model.user_factors, item_factors=model.item_factors,
        user_ids=model.users.ids, item_ids=model.items.ids, popularity=model.popularity,
    )
    seen = to_csr(seen_log, model.users, model.items)
    save_npz(folder / SEEN, indptr=seen.indptr.astype(np.int64),
             indices=seen.indices.astype(np.int32))
    if index is not None and index.kind != "exact":
        (folder / index_dirname(index)).mkdir(exist_ok=True)
        build_index(model.item_factors, index).save(folder / index_dirname(index))
    return write_manifest(folder, COMPONENT, version, data=data, params=params, metrics=metrics,
                          parent=parent)
