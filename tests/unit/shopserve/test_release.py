"""Release metrics: the one spelling, bundles written with the legacy spelling, missing metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shopserve.artifacts import write_manifest
from shopserve.release import (
    KEY_METRICS,
    NDCG_AT_10,
    REFERENCE_NDCG_AT_10,
    ReleaseMetrics,
    at_k,
    current_key,
    current_keys,
)

RECALL = {"model": {"recall_at_20": 0.3, "ndcg_at_10": 0.2, "hit_rate_at_10": 0.4, "users": 10},
          "popularity": {"recall_at_20": 0.1, "ndcg_at_10": 0.05, "hit_rate_at_10": 0.2, "users": 10},
          "train_seconds": 1.5}
CURRENT_RANKER = {"ndcg_at_10": 0.91, "reference_ndcg_at_10": 0.92, "ms_per_request_p50": 3.5,
                  "evaluation": [{"name": "bm25", "ndcg_at_10": 0.6, "ndcg_at_10_synonym": 0.1},
                                 {"name": "onnx-int8", "ndcg_at_10": 0.91, "mrr": 0.8}]}
#: What ranker manifests held before the one spelling.
LEGACY_RANKER = {"ndcg@10": 0.91, "reference_ndcg@10": 0.92, "ms_per_request_p50": 3.5,
                 "evaluation": [{"name": "bm25", "ndcg@10": 0.6, "ndcg@10_synonym": 0.1},
                                {"name": "onnx-int8", "ndcg@10": 0.91, "mrr": 0.8}]}
EXPECTED = ReleaseMetrics(
    recall_ndcg_at_10=0.2, recall_recall_at_20=0.3, recall_popularity_ndcg_at_10=0.05,
    ranker_variant="onnx-int8", ranker_layers=4, ranker_ndcg_at_10=0.91,
    ranker_reference_ndcg_at_10=0.92, ranker_ms_p50=3.5, ranker_bm25_ndcg_at_10=0.6,
    catalog_items=120, catalog_queries=30,
)


def _bundle(folder: Path, ranker: dict[str, Any], *, recall: bool = True, catalog: bool = True) -> Path:
    for name in ("catalog", "recall", "ranker"):
        (folder / name).mkdir(parents=True)
    if catalog:
        write_manifest(folder / "catalog", "catalog", "v1", data={"items": 120, "queries": {"total": 30}})
    if recall:
        write_manifest(folder / "recall", "recall", "v1", metrics=RECALL)
    write_manifest(folder / "ranker", "ranker", "v1", params={"variant": "onnx-int8", "layers": 4},
                   metrics=ranker)
    return folder


def test_the_one_spelling() -> None:
    assert at_k("ndcg", 10) == NDCG_AT_10 == "ndcg_at_10"
    assert REFERENCE_NDCG_AT_10 == "reference_ndcg_at_10"
    assert KEY_METRICS["ranker_ndcg_at_10"] == "ranker.ndcg_at_10"
    assert KEY_METRICS["recall_popularity_ndcg_at_10"] == "recall.popularity_ndcg_at_10"
    assert all(key.isidentifier() for key in (k.replace(".", "_") for k in KEY_METRICS.values()))


@pytest.mark.parametrize(("legacy", "current"), [
    ("ndcg@10", "ndcg_at_10"),
    ("reference_ndcg@10", "reference_ndcg_at_10"),
    ("ndcg@10_synonym", "ndcg_at_10_synonym"),
    ("ranker.bm25_ndcg@10", "ranker.bm25_ndcg_at_10"),
    ("recall.recall@20", "recall.recall_at_20"),
    ("ndcg_at_10", "ndcg_at_10"),
    ("mrr", "mrr"),
])
def test_legacy_keys_read_in_the_current_spelling(legacy: str, current: str) -> None:
    assert current_key(legacy) == current


def test_current_keys_reaches_into_rows() -> None:
    assert current_keys(LEGACY_RANKER) == CURRENT_RANKER


@pytest.mark.parametrize("ranker", [CURRENT_RANKER, LEGACY_RANKER], ids=["current", "legacy"])
def test_from_bundle_reads_both_spellings(tmp_path: Path, ranker: dict[str, Any]) -> None:
    assert ReleaseMetrics.from_bundle(_bundle(tmp_path, ranker)) == EXPECTED


def test_key_metrics_round_trip() -> None:
    key = EXPECTED.key_metrics()
    assert key["ranker.ndcg_at_10"] == 0.91 and key["recall.recall_at_20"] == 0.3
    assert ReleaseMetrics.from_key_metrics(key) == EXPECTED


def test_legacy_key_metrics_of_bundle_json() -> None:
    legacy = {"recall.ndcg@10": 0.2, "recall.recall@20": 0.3, "recall.popularity_ndcg@10": 0.05,
              "ranker.variant": "onnx-int8", "ranker.layers": 4, "ranker.ndcg@10": 0.91,
              "ranker.reference_ndcg@10": 0.92, "ranker.ms_p50": 3.5, "ranker.bm25_ndcg@10": 0.6,
              "catalog.items": 120, "catalog.queries": 30}
    assert ReleaseMetrics.from_key_metrics(legacy) == EXPECTED


def test_missing_metrics_are_none_and_left_out(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, {"evaluation": [{"name": "onnx-int8", "mrr": 0.8}]}, recall=False,
                     catalog=False)
    release = ReleaseMetrics.from_bundle(bundle)
    assert release.ranker_ndcg_at_10 is None and release.ranker_bm25_ndcg_at_10 is None
    assert release.recall_ndcg_at_10 is None and release.catalog_items is None
    assert release.key_metrics() == {"ranker.variant": "onnx-int8", "ranker.layers": 4}
    assert ReleaseMetrics.from_bundle(tmp_path / "nothing") == ReleaseMetrics()
    assert ReleaseMetrics.from_key_metrics({}) == ReleaseMetrics()


def test_values_of_the_wrong_type_are_not_read(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, {"ndcg_at_10": "high", "evaluation": "none"}, recall=False)
    release = ReleaseMetrics.from_bundle(bundle)
    assert release.ranker_ndcg_at_10 is None and release.ranker_bm25_ndcg_at_10 is None
    assert ReleaseMetrics.from_key_metrics({"ranker.ndcg_at_10": True}).ranker_ndcg_at_10 is None


#: What ``training.sequence.build.export_sequence`` records in the sequence component's manifest.
SEQUENCE = {"ndcg_at_10": 0.31, "hit_rate_at_10": 0.52, "mrr": 0.21, "users": 40,
            "popularity_ndcg_at_10": 0.05, "popularity_hit_rate_at_10": 0.1, "popularity_mrr": 0.04,
            "valid_ndcg_at_10": 0.3, "train_seconds": 2.5}


def test_sequence_component_metrics(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, CURRENT_RANKER)
    (bundle / "sequence").mkdir()
    write_manifest(bundle / "sequence", "sequence", "v1", metrics=SEQUENCE)
    release = ReleaseMetrics.from_bundle(bundle)
    assert (release.sequence_ndcg_at_10, release.sequence_hit_rate_at_10, release.sequence_mrr,
            release.sequence_popularity_ndcg_at_10) == (0.31, 0.52, 0.21, 0.05)
    key = release.key_metrics()
    assert key["sequence.ndcg_at_10"] == 0.31 and key["sequence.popularity_ndcg_at_10"] == 0.05
    assert ReleaseMetrics.from_key_metrics(key) == release
    assert KEY_METRICS["sequence_ndcg_at_10"] == "sequence.ndcg_at_10"


def test_a_bundle_without_a_sequence_component_has_no_sequence_keys(tmp_path: Path) -> None:
    release = ReleaseMetrics.from_bundle(_bundle(tmp_path, CURRENT_RANKER))
    assert release == EXPECTED and release.sequence_ndcg_at_10 is None
    assert not [k for k in release.key_metrics() if k.startswith("sequence.")]
