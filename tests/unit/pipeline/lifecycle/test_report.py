"""``shopserve evaluate``'s report: the sequence model's section and plot, from a small fake run folder
and bundle (no training: the records are written by hand, as the train-sequence step and the package
step write them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.lifecycle.config import PipelineConfig
from pipeline.lifecycle.layout import RESULT_FILE, SEQUENCE_TRAIN_DIR, UNPACKAGED, StepContext
from pipeline.lifecycle.report import (
    PLOTS,
    REPORT,
    SEQUENCE_PLOT,
    previous_sequence,
    read_sequence_record,
    sequence_evaluation,
    sequence_record,
    write_report,
)
from shopserve.artifacts import write_manifest
from shopserve.release import NDCG_AT_10, ReleaseMetrics

PNG = b"\x89PNG\r\n\x1a\n"
#: What ``training.sequence.build.export_sequence`` returns (``result.json`` of the export).
RESULT = {
    "params": {"sequence_length": 8, "top_k": 50, "dim": 16, "layers": 1, "heads": 1, "n_items": 120,
               "epochs": 4, "best_epoch": 3, "objective": "full-softmax cross-entropy (next item)",
               "seed": 0},
    "metrics": {"ndcg_at_10": 0.31, "hit_rate_at_10": 0.52, "mrr": 0.21, "users": 40,
                "popularity_ndcg_at_10": 0.05, "popularity_hit_rate_at_10": 0.1,
                "popularity_mrr": 0.04, "valid_ndcg_at_10": 0.3, "train_seconds": 2.5},
    "data": {"shoppers": 50, "items": 120},
}


def _export(folder: Path, result: dict[str, Any] = RESULT) -> Path:
    folder.mkdir(parents=True)
    (folder / RESULT_FILE).write_text(json.dumps(result))
    return folder


def _component(folder: Path, metrics: dict[str, Any], version: str = "20260102.000000") -> Path:
    folder.mkdir(parents=True)
    (folder / "item_ids.npy").write_bytes(b"ids")
    write_manifest(folder, "sequence", version, params=RESULT["params"], metrics=metrics)
    return folder


def _ctx(tmp_path: Path, state: dict[str, Any] | None = None) -> StepContext:
    config = PipelineConfig.from_dict({"name": "tiny", "run_dir": str(tmp_path / "run"),
                                       "registry": str(tmp_path / "bundles")})
    return StepContext(config, progress=False, state=state or {})


# ------------------------------------------------------------------------------------ records


def test_record_from_the_run_export_and_from_a_packaged_component(tmp_path: Path) -> None:
    export = read_sequence_record(_export(tmp_path / "export"))
    assert export is not None and export.version == UNPACKAGED
    packaged = read_sequence_record(_component(tmp_path / "bundle" / "sequence", RESULT["metrics"]))
    assert packaged is not None and packaged.version == "20260102.000000"
    assert sequence_evaluation(export) == sequence_evaluation(packaged) | {"version": UNPACKAGED}
    assert read_sequence_record(tmp_path / "nothing") is None


def test_run_prefers_its_export_then_its_packaged_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "bundles" / "20260102.000000"
    _component(bundle / "sequence", {**RESULT["metrics"], "ndcg_at_10": 0.2})
    ctx = _ctx(tmp_path, {"package": {"output": str(bundle)}})
    record = sequence_record(ctx)
    assert record is not None and record.metrics["ndcg_at_10"] == 0.2
    _export(ctx.path(SEQUENCE_TRAIN_DIR))
    record = sequence_record(ctx)
    assert record is not None and record.metrics["ndcg_at_10"] == 0.31
    assert sequence_record(_ctx(tmp_path / "empty")) is None


def test_evaluation_and_key_metrics_of_the_sequence_model(tmp_path: Path) -> None:
    record = read_sequence_record(_export(tmp_path / "export"))
    evaluation = sequence_evaluation(record)
    assert evaluation is not None
    assert evaluation["model"] == {"ndcg_at_10": 0.31, "hit_rate_at_10": 0.52, "mrr": 0.21}
    assert evaluation["popularity"] == {"ndcg_at_10": 0.05, "hit_rate_at_10": 0.1, "mrr": 0.04}
    assert evaluation["params"]["sequence_length"] == 8 and "seed" not in evaluation["params"]
    assert (evaluation["users"], evaluation["valid_ndcg_at_10"]) == (40, 0.3)
    # The key numbers of the release (bundle.json's, the gate's) read the same record.
    key = ReleaseMetrics.from_manifests(sequence=record).key_metrics()
    assert key == {"sequence.ndcg_at_10": 0.31, "sequence.hit_rate_at_10": 0.52, "sequence.mrr": 0.21,
                   "sequence.popularity_ndcg_at_10": 0.05}
    assert sequence_evaluation(None) is None
    partial = sequence_evaluation(read_sequence_record(_export(tmp_path / "partial", {
        "params": {}, "metrics": {"ndcg_at_10": 0.3, "mrr": "high"}})))
    assert partial is not None
    assert partial["model"] == {"ndcg_at_10": 0.3, "hit_rate_at_10": None, "mrr": None}


def test_previous_sequence_from_key_metrics() -> None:
    assert previous_sequence({"sequence.ndcg_at_10": 0.25, "ranker.ndcg_at_10": 0.9}) == {
        "ndcg_at_10": 0.25, "hit_rate_at_10": None, "mrr": None}
    assert previous_sequence({"ranker.ndcg_at_10": 0.9}) is None
    assert previous_sequence(None) is None


# ------------------------------------------------------------------------------------ the report


def _evaluation(sequence: dict[str, Any] | None, previous: dict[str, Any] | None) -> dict[str, Any]:
    """The smallest evaluation ``write_report`` takes: two rankers, MF and popularity, three cut-offs."""
    ks = [1, 5, 10]
    curve = {"ndcg": [0.1, 0.2, 0.3], "recall": [0.1, 0.3, 0.5], "users": [10]}
    ranked = {"ndcg": [0.5, 0.6, 0.7], "recall": [0.4, 0.6, 0.8],
              "classes": {"exact": 0.8, "synonym": 0.4, "head": 0.7, "tail": 0.5},
              "class_queries": {"exact": 3, "synonym": 2, "head": 4, "tail": 1}}
    key = {"ranker.ndcg_at_10": 0.7, "recall.ndcg_at_10": 0.3}
    if sequence is not None:
        key |= {"sequence.ndcg_at_10": 0.31, "sequence.hit_rate_at_10": 0.52}
    return {
        "config": "tiny", "ks": ks, "key_metrics": key, "previous": previous,
        "parent": "20260101.000000" if previous is not None else None,
        "recall": {"mf": curve, "popularity": curve}, "ranking": {"bm25": ranked, "onnx-int8": ranked},
        "chosen": "onnx-int8",
        "variants": [{"name": "bm25", NDCG_AT_10: 0.6, "ms_p50": None},
                     {"name": "onnx-int8", NDCG_AT_10: 0.7, "ms_p50": 3.0, "layers": 4, "size_mib": 22.0}],
        "scores_by_grade": {"exact": [0.9, 0.8], "irrelevant": [0.1, 0.3]},
        "sequence": sequence,
    }


def test_report_shows_the_sequence_model_with_a_plot(tmp_path: Path) -> None:
    sequence = sequence_evaluation(read_sequence_record(_export(tmp_path / "export")))
    previous = {"ranker.ndcg_at_10": 0.69, "sequence.ndcg_at_10": 0.28, "sequence.hit_rate_at_10": 0.5,
                "sequence.mrr": 0.2}
    files = write_report(_evaluation(sequence, previous), tmp_path / "report")
    assert tmp_path / "report" / SEQUENCE_PLOT in files
    assert (tmp_path / "report" / SEQUENCE_PLOT).read_bytes().startswith(PNG)
    text = (tmp_path / "report" / REPORT).read_text()
    assert "## Sequence recommender (next item)" in text
    assert f"![sequence recommender]({SEQUENCE_PLOT})" in text
    assert "| sequence model | 0.3100 | 0.5200 | 0.2100 |" in text
    assert "| popularity | 0.0500 | 0.1000 | 0.0400 |" in text
    assert "| previous release (20260101.000000) | 0.2800 | 0.5000 | 0.2000 |" in text
    assert "40 shoppers" in text and "sequence_length 8" in text
    # The opening table has the sequence model's key numbers against the previous release's.
    assert "| Sequence model NDCG@10 (next item) | 0.3100 | 0.2800 |" in text
    saved = json.loads((tmp_path / "report" / "evaluation.json").read_text())
    assert saved["sequence"]["model"]["ndcg_at_10"] == 0.31


@pytest.mark.parametrize("previous", [None, {"ranker.ndcg_at_10": 0.69}], ids=["first", "no-previous-model"])
def test_report_previous_without_a_sequence_model(tmp_path: Path, previous: dict[str, Any] | None) -> None:
    sequence = sequence_evaluation(read_sequence_record(_export(tmp_path / "export")))
    write_report(_evaluation(sequence, previous), tmp_path / "report")
    text = (tmp_path / "report" / REPORT).read_text()
    assert "| sequence model | 0.3100 |" in text and "previous release" not in text


def test_report_without_a_sequence_model_says_so(tmp_path: Path) -> None:
    files = write_report(_evaluation(None, None), tmp_path / "report")
    assert not (tmp_path / "report" / SEQUENCE_PLOT).exists()
    assert {f.name for f in files} == {REPORT, *PLOTS.values(), "evaluation.json"}
    text = (tmp_path / "report" / REPORT).read_text()
    assert "This run has no sequence model" in text and "sequence.enabled: false" in text


def test_report_with_a_partial_sequence_record(tmp_path: Path) -> None:
    """A record without some metrics (an older export) still plots; the table shows '-'."""
    sequence = sequence_evaluation(read_sequence_record(_export(tmp_path / "export", {
        "params": {}, "metrics": {"ndcg_at_10": 0.3}})))
    write_report(_evaluation(sequence, None), tmp_path / "report")
    assert (tmp_path / "report" / SEQUENCE_PLOT).read_bytes().startswith(PNG)
    assert "| sequence model | 0.3000 | - | - |" in (tmp_path / "report" / REPORT).read_text()
