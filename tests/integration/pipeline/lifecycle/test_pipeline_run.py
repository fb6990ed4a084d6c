"""``shopserve pipeline run`` on the tiny configuration, end to end, in a temporary folder.

One module-scoped run builds a bundle (about a minute or two on 2 cores); the tests then check the
bundle and its report, that a second run skips every step, that a failure is recorded and the next
run resumes from the failed step, that ``bundles verify`` and the servers refuse a tampered copy.
Tests run in file order: the resume test packages a second bundle whose parent is the first.

The configuration is ``configs/pipeline-tiny.yaml`` with fewer fine-tuning steps
(:data:`TEST_RANKER_OVERRIDES`), written beside the run: these tests are about the steps, their
cache, resume and packaging, not the ranker's quality, and the ranker's steps are most of the time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.lifecycle import report as report_module
from pipeline.lifecycle.config import TINY_CONFIG, PipelineConfig
from pipeline.lifecycle.registry import BUNDLE_MANIFEST, Registry, verify_bundle
from pipeline.lifecycle.run import STATE_FILE, STEP_NAMES, RunResult, load_state, run_pipeline
from tests.servers import ROOT, free_port, start_server

pytestmark = pytest.mark.integration

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: ``ranker.overrides`` added to the tiny configuration for this module: two fine-tuning and two
#: distillation steps instead of the tiny preset's eight and four. The tiny bundle's ranker, which
#: the serving tests use, keeps the preset.
TEST_RANKER_OVERRIDES = {"train": {"max_steps": 2}, "distill": {"max_steps": 2}}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> PipelineConfig:
    """The tiny configuration with :data:`TEST_RANKER_OVERRIDES`, as a file (the CLI reads it too)."""
    base = tmp_path_factory.mktemp("pipeline")
    raw = yaml.safe_load(TINY_CONFIG.read_text())
    raw["ranker"]["overrides"] = {**(raw["ranker"].get("overrides") or {}), **TEST_RANKER_OVERRIDES}
    path = base / "pipeline-test.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return PipelineConfig.load(path).with_overrides(run_dir=base / "run", registry=base / "bundles")


@pytest.fixture(scope="module")
def first(config: PipelineConfig) -> RunResult:
    return run_pipeline(config, progress=False)


def _cli(*args: str, config: PipelineConfig) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args, "--config", str(config.source),
         "--run-dir", str(config.run_dir), "--registry", str(config.registry)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )


def _tampered_copy(bundle: Path, dest: Path, rel: str) -> Path:
    shutil.copytree(bundle, dest)
    with open(dest / rel, "r+b") as handle:
        handle.seek(64)
        handle.write(b"\x00tampered\x00")
    return dest


def test_first_run_runs_every_step_and_packages_a_verified_bundle(first: RunResult) -> None:
    assert first.ok, first.table()
    assert [r.step for r in first.records] == list(STEP_NAMES)
    assert {r.status for r in first.records} == {"ran"}
    bundle = Path(str(first.bundle))
    for component in ("catalog", "recall", "ranker", "sequence"):
        assert (bundle / component / "manifest.json").is_file()
    assert all(not found for found in verify_bundle(bundle).values())
    manifest = json.loads((bundle / BUNDLE_MANIFEST).read_text())
    assert manifest["parent"] is None
    # drift: the package extra of the monitoring (pipeline.lifecycle.steps.PACKAGE_EXTRAS).
    assert set(manifest["components"]) == {"catalog", "recall", "ranker", "sequence", "semantic",
                                              "drift"}
    assert "report/report.md" in manifest["files"]
    assert manifest["metrics"]["ranker.variant"]
    # The sequence model's key numbers, from its component (train-sequence, then package).
    assert {"sequence.ndcg_at_10", "sequence.hit_rate_at_10", "sequence.mrr"} <= set(manifest["metrics"])
    assert "sequence/seq-recommender/1/model.onnx" not in manifest["files"]  # a component's file
    table = first.table()
    for header in ("step", "status", "time", "key metric"):
        assert header in table


def test_report_has_markdown_and_valid_pngs(first: RunResult) -> None:
    report = Path(str(first.bundle)) / "report"
    text = (report / "report.md").read_text()
    assert text.startswith("# Release report")
    assert "| key number | this release | previous | change |" in text
    for name in report_module.PLOTS.values():
        data = (report / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        assert len(data) > 5_000, name
        assert f"]({name})" in text
    evaluation = json.loads((report / "evaluation.json").read_text())
    assert set(evaluation["ranking"]) >= {"bm25", evaluation["chosen"]}
    classes = evaluation["ranking"]["bm25"]["classes"]
    assert {"exact", "synonym", "typo", "head", "tail"} <= set(classes)
    assert len(evaluation["recall"]["mf"]["ndcg"]) == len(evaluation["ks"])


def test_second_run_skips_every_step_json(first: RunResult, config: PipelineConfig) -> None:
    out = _cli("pipeline", "run", "--json", config=config)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ok"] is True
    assert [s["status"] for s in result["steps"]] == ["skipped"] * len(STEP_NAMES)
    assert result["bundle"] == first.bundle


def test_failed_step_is_recorded_and_the_next_run_resumes_there(
    first: RunResult, config: PipelineConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("injected failure while writing the report")

    monkeypatch.setattr(report_module, "write_report", broken)
    # Forced: unchanged, evaluate would be skipped and never reach the injected failure.
    failed = run_pipeline(config, progress=False, force=["evaluate"])
    statuses = {r.step: r.status for r in failed.records}
    assert statuses == {"data": "skipped", "train-recall": "skipped", "train-ranker": "skipped",
                        "optimise-ranker": "skipped", "train-sequence": "skipped",
                        "train-semantic": "skipped",
                        "evaluate": "failed", "package": "not run"}
    assert not failed.ok
    state = load_state(config.run_dir)
    assert state["steps"]["evaluate"]["status"] == "failed"
    assert "injected failure" in state["steps"]["evaluate"]["error"]

    monkeypatch.undo()
    resumed = run_pipeline(config, progress=False)
    statuses = {r.step: r.status for r in resumed.records}
    assert statuses == {"data": "skipped", "train-recall": "skipped", "train-ranker": "skipped",
                        "optimise-ranker": "skipped", "train-sequence": "skipped",
                        "train-semantic": "skipped",
                        "evaluate": "ran", "package": "ran"}
    # The new release follows the first one in the registry: lineage and the report's comparison.
    second = Path(str(resumed.bundle))
    assert second != Path(str(first.bundle))
    assert json.loads((second / BUNDLE_MANIFEST).read_text())["parent"] == Path(str(first.bundle)).name
    text = (second / "report" / "report.md").read_text()
    assert f"Previous bundle: `{Path(str(first.bundle)).name}`" in text
    assert [b.path for b in Registry(config.registry).bundles()] == [Path(str(first.bundle)), second]

    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "bundles", "diff", Path(str(first.bundle)).name,
         second.name, "--registry", str(config.registry)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "ranker.ndcg_at_10" in out.stdout


def test_state_file_is_in_the_run_folder(first: RunResult, config: PipelineConfig) -> None:
    assert (config.run_dir / STATE_FILE).is_file()


def test_bundles_verify_fails_loudly_on_a_tampered_bundle(first: RunResult, tmp_path: Path) -> None:
    rel = "ranker/bert-ranker/1/model.onnx"
    bad = _tampered_copy(Path(str(first.bundle)), tmp_path / "bad", rel)
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "bundles", "verify", str(bad)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 1
    assert f"{rel}: sha256 mismatch" in out.stdout
    assert "ranker     CORRUPT" in out.stdout
    assert "do not serve" in out.stderr

    # A file outside the components (the report) is covered by bundle.json.
    report = _tampered_copy(Path(str(first.bundle)), tmp_path / "report", "report/recall_curves.png")
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "bundles", "verify", str(report)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 1
    assert "report/recall_curves.png: sha256 mismatch" in out.stdout


def test_ranker_server_refuses_a_tampered_bundle(first: RunResult, tmp_path: Path) -> None:
    bad = _tampered_copy(Path(str(first.bundle)), tmp_path / "bad", "ranker/bert-ranker/1/model.onnx")
    with pytest.raises(RuntimeError, match=r"(?s)exited with 1.*bert-ranker/1/model.onnx: sha256 mismatch"):
        start_server("predictors.ranker",
                     {"RANKER_BUNDLE": str(bad / "ranker"), "RANKER_METRICS_PORT": str(free_port())},
                     tmp_path / "ranker.log", timeout=120)


def test_search_server_refuses_a_tampered_bundle(first: RunResult, tmp_path: Path) -> None:
    bad = _tampered_copy(Path(str(first.bundle)), tmp_path / "bad", "catalog/items.npz")
    port, grpc_port = free_port(), free_port()
    with pytest.raises(RuntimeError, match=r"(?s)exited with .*items.npz: sha256 mismatch"):
        start_server("transformers_pre",
                     {"SEARCH_BUNDLE_DIR": str(bad), "SEARCH_HTTP_PORT": str(port),
                      "SEARCH_GRPC_PORT": str(grpc_port)},
                     tmp_path / "search.log", http_port=port, grpc_port=grpc_port, timeout=120)


def test_pytest_process_never_imported_kserve() -> None:
    assert "kserve" not in sys.modules
