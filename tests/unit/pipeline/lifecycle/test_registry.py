"""The bundle registry: list order, lineage, diff of metrics, verify of bundle.json, versions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from pipeline.lifecycle.registry import (
    BUNDLE_MANIFEST,
    MetricChange,
    Registry,
    _cmd_list,
    diff,
    flat_metrics,
    format_diff,
    key_metrics,
    verify_bundle,
    write_bundle_manifest,
)
from pipeline.lifecycle.report import KEY_LABELS
from shopserve.artifacts import write_manifest
from shopserve.errors import BundleError
from shopserve.release import KEY_METRICS


def _legacy_bundle_json(bundle: Path) -> None:
    """Rewrite ``bundle.json``'s key metrics as releases before the one spelling wrote them."""
    raw = json.loads((bundle / BUNDLE_MANIFEST).read_text())
    raw["metrics"] = {k.replace("_at_", "@"): v for k, v in raw["metrics"].items()}
    (bundle / BUNDLE_MANIFEST).write_text(json.dumps(raw))


def _bundle(root: Path, version: str, parent: str | None, ndcg: float, variant: str = "onnx-int8",
            *, legacy: bool = False) -> Path:
    """A bundle; ``legacy``: the ranker's metrics and ``bundle.json`` with the old ``@10`` keys."""
    at10 = "@10" if legacy else "_at_10"
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
                   metrics={f"ndcg{at10}": ndcg, "ms_per_request_p50": 10.0, f"reference_ndcg{at10}": 0.9,
                            "evaluation": [{"name": "bm25", f"ndcg{at10}": 0.5},
                                           {"name": variant, f"ndcg{at10}": ndcg, "mrr": 0.7}]})
    (bundle / "report").mkdir()
    (bundle / "report" / "report.md").write_text(f"# report {version}\n")
    write_bundle_manifest(bundle, version, parent=parent)
    if legacy:
        _legacy_bundle_json(bundle)
    return bundle


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    root = tmp_path / "bundles"
    _bundle(root, "20260101.000000", None, 0.80)
    _bundle(root, "20260102.000000", "20260101.000000", 0.85)
    return Registry(root)


@pytest.fixture
def mixed(tmp_path: Path) -> Registry:
    """A registry whose older bundle was written with the legacy spellings."""
    root = tmp_path / "mixed"
    _bundle(root, "20260101.000000", None, 0.80, legacy=True)
    _bundle(root, "20260102.000000", "20260101.000000", 0.85)
    return Registry(root)


def test_list_is_oldest_first_with_key_metrics(registry: Registry) -> None:
    bundles = registry.bundles()
    assert [b.version for b in bundles] == ["20260101.000000", "20260102.000000"]
    assert bundles[1].parent == "20260101.000000"
    assert bundles[1].metrics["ranker.ndcg_at_10"] == 0.85
    assert bundles[1].release.ranker_ndcg_at_10 == 0.85
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
    assert rows["ranker.ndcg_at_10"].delta == pytest.approx(0.05)
    assert rows["ranker.evaluation.onnx-int8.mrr"].delta == 0
    assert [r.metric for r in diff(a, b, changed_only=True)] == [
        "ranker.evaluation.onnx-int8.ndcg_at_10", "ranker.ndcg_at_10"]
    text = format_diff(diff(a, b, changed_only=True), "A", "B")
    assert "+0.05 (+6.2%)" in text


@pytest.mark.parametrize(("before", "after", "expected"), [
    (1.0, 1.5, 0.5), (None, 1.0, None), (2.0, None, None),
])
def test_metric_change_delta(before: float | None, after: float | None, expected: float | None) -> None:
    assert MetricChange("m", before, after).delta == expected


def test_diff_keys_evaluation_rows_by_name(registry: Registry) -> None:
    flat = flat_metrics(registry.root / "20260101.000000")
    assert flat["ranker.evaluation.bm25.ndcg_at_10"] == 0.5
    assert flat["recall.model.ndcg_at_10"] == 0.2


def test_key_metrics(registry: Registry) -> None:
    key = key_metrics(registry.root / "20260102.000000")
    assert key == {
        "recall.ndcg_at_10": 0.2, "recall.recall_at_20": 0.3, "recall.popularity_ndcg_at_10": 0.1,
        "ranker.variant": "onnx-int8", "ranker.layers": 4, "ranker.ndcg_at_10": 0.85,
        "ranker.reference_ndcg_at_10": 0.9, "ranker.ms_p50": 10.0, "ranker.bm25_ndcg_at_10": 0.5,
    }
    assert json.loads((registry.root / "20260102.000000" / BUNDLE_MANIFEST).read_text())["metrics"] == key


def test_legacy_bundle_reads_as_a_new_one(mixed: Registry) -> None:
    old, new = mixed.root / "20260101.000000", mixed.root / "20260102.000000"
    assert "ranker.ndcg@10" in json.loads((old / BUNDLE_MANIFEST).read_text())["metrics"]
    assert set(key_metrics(old)) == set(key_metrics(new))
    assert key_metrics(old)["ranker.ndcg_at_10"] == 0.80
    assert key_metrics(old)["ranker.bm25_ndcg_at_10"] == 0.5
    listed = mixed.bundles()
    assert set(listed[0].metrics) == set(listed[1].metrics)
    assert listed[0].release.ranker_reference_ndcg_at_10 == 0.9


def test_diff_across_spellings_compares_the_same_metric(mixed: Registry) -> None:
    a, b = mixed.root / "20260101.000000", mixed.root / "20260102.000000"
    assert [r.metric for r in diff(a, b, changed_only=True)] == [
        "ranker.evaluation.onnx-int8.ndcg_at_10", "ranker.ndcg_at_10"]
    assert flat_metrics(a).keys() == flat_metrics(b).keys()


def test_list_command_shows_both_spellings(mixed: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cmd_list(argparse.Namespace(registry=mixed.root, json=False)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "0.8500" in lines[1] and "0.2000" in lines[1] and "onnx-int8" in lines[1]
    assert "0.8000" in lines[2] and "0.2000" in lines[2] and "onnx-int8" in lines[2]


def test_report_labels_every_key_metric() -> None:
    assert set(KEY_LABELS) == set(KEY_METRICS.values())


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
        raw["metrics"]["ndcg_at_10"] = 0.99  # a manifest edited by hand: bundle.json catches it
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
