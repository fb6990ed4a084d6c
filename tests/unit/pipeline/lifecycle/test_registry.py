"""The bundle registry: list order, lineage, diff of metrics, verify of bundle.json, versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.lifecycle.registry import (
    BUNDLE_MANIFEST,
    MetricChange,
    Registry,
    diff,
    flat_metrics,
    format_diff,
    key_metrics,
    verify_bundle,
    write_bundle_manifest,
)
from shopserve.artifacts import write_manifest
from shopserve.errors import BundleError


def _bundle(root: Path, version: str, parent: str | None, ndcg: float, variant: str = "onnx-int8") -> Path:
    bundle = root / version
    recall = bundle / "recall"
    recall.mkdir(parents=True)
    (recall / "factors.npz").write_bytes(b"factors" + version.encode())
    write_manifest(recall, "recall", version, parent=parent, metrics={
        "model": {"ndcg_at_10": 0.2, "recall_at_20": 0.3}, "popularity": {"ndcg_at_10": 0.1}})
    ranker = bundle / "ranker"
    ranker.mkdir()
    (ranker / "model.onnx").write_bytes(b"onnx" + version.encode())
    write_manifest(ranker, "ranker", version, parent=parent, params={"variant": variant, "layers": 4},
                   metrics={"ndcg@10": ndcg, "ms_per_request_p50": 10.0, "reference_ndcg@10": 0.9,
                            "evaluation": [{"name": "bm25", "ndcg@10": 0.5},
                                           {"name": variant, "ndcg@10": ndcg, "mrr": 0.7}]})
    (bundle / "report").mkdir()
    (bundle / "report" / "report.md").write_text(f"# report {version}\n")
    write_bundle_manifest(bundle, version, parent=parent)
    return bundle


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    root = tmp_path / "bundles"
    _bundle(root, "20260101.000000", None, 0.80)
    _bundle(root, "20260102.000000", "20260101.000000", 0.85)
    return Registry(root)


def test_list_is_oldest_first_with_key_metrics(registry: Registry) -> None:
    bundles = registry.bundles()
    assert [b.version for b in bundles] == ["20260101.000000", "20260102.000000"]
    assert bundles[1].parent == "20260101.000000"
    assert bundles[1].metrics["ranker.ndcg@10"] == 0.85
    assert registry.latest() is not None and registry.latest().version == "20260102.000000"  # type: ignore[union-attr]


def test_lineage_and_resolve(registry: Registry, tmp_path: Path) -> None:
    assert registry.lineage("latest") == ["20260102.000000", "20260101.000000"]
    assert registry.resolve("20260101.000000") == registry.root / "20260101.000000"
    with pytest.raises(BundleError, match="no bundle 'nope'"):
        registry.resolve("nope")
    assert Registry(tmp_path / "empty").bundles() == []


def test_diff_reports_metric_changes(registry: Registry) -> None:
    a, b = registry.root / "20260101.000000", registry.root / "20260102.000000"
    rows = {r.metric: r for r in diff(a, b)}
    assert rows["ranker.ndcg@10"].delta == pytest.approx(0.05)
    assert rows["ranker.evaluation.onnx-int8.mrr"].delta == 0
    assert [r.metric for r in diff(a, b, changed_only=True)] == [
        "ranker.evaluation.onnx-int8.ndcg@10", "ranker.ndcg@10"]
    text = format_diff(diff(a, b, changed_only=True), "A", "B")
    assert "+0.05 (+6.2%)" in text


@pytest.mark.parametrize(("before", "after", "expected"), [
    (1.0, 1.5, 0.5), (None, 1.0, None), (2.0, None, None),
])
def test_metric_change_delta(before: float | None, after: float | None, expected: float | None) -> None:
    assert MetricChange("m", before, after).delta == expected


def test_diff_keys_evaluation_rows_by_name(registry: Registry) -> None:
    flat = flat_metrics(registry.root / "20260101.000000")
    assert flat["ranker.evaluation.bm25.ndcg@10"] == 0.5
    assert flat["recall.model.ndcg_at_10"] == 0.2


def test_key_metrics(registry: Registry) -> None:
    key = key_metrics(registry.root / "20260102.000000")
    assert key["ranker.variant"] == "onnx-int8"
    assert key["ranker.bm25_ndcg@10"] == 0.5
    assert key["recall.popularity_ndcg@10"] == 0.1


@pytest.mark.parametrize(("rel", "problem"), [
    ("ranker/model.onnx", "ranker/model.onnx: sha256 mismatch"),
    ("report/report.md", "report/report.md: sha256 mismatch"),
    ("ranker/manifest.json", "ranker/manifest.json: sha256 mismatch"),
])
def test_verify_names_the_tampered_file(registry: Registry, rel: str, problem: str) -> None:
    bundle = registry.root / "20260102.000000"
    assert all(not p for p in verify_bundle(bundle).values())
    path = bundle / rel
    if rel.endswith("manifest.json"):
        raw = json.loads(path.read_text())
        raw["metrics"]["ndcg@10"] = 0.99  # a manifest edited by hand: bundle.json catches it
        path.write_text(json.dumps(raw))
    else:
        path.write_bytes(path.read_bytes() + b"x")
    found = [p for ps in verify_bundle(bundle).values() for p in ps]
    assert problem in found


def test_verify_missing_component(registry: Registry) -> None:
    bundle = registry.root / "20260102.000000"
    import shutil

    shutil.rmtree(bundle / "recall")
    found = verify_bundle(bundle)["bundle"]
    assert any("recall/manifest.json: missing" in p for p in found)


def test_new_version_never_collides(registry: Registry) -> None:
    first = registry.new_version()
    (registry.root / first).mkdir()
    second = registry.new_version()
    assert second != first and second.startswith(first.split("-")[0][:8])
    assert (registry.root / "20260101.000000" / BUNDLE_MANIFEST).is_file()
