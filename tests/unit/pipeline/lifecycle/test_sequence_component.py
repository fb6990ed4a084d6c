"""The ``sequence`` bundle component as the package step writes it, the ``train-sequence`` step in the
graph, the ``sequence`` configuration section, and the sequence key numbers of ``bundle.json``."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.lifecycle.config import (
    SEQUENCE_PRESETS,
    TINY_CONFIG,
    ConfigError,
    PipelineConfig,
    sequence_config,
)
from pipeline.lifecycle.layout import RESULT_FILE, SEQUENCE_TRAIN_DIR
from pipeline.lifecycle.registry import key_metrics
from pipeline.lifecycle.run import STEPS
from pipeline.lifecycle.sequence import ONNX_FILE, package_sequence
from predictors.ranker.triton_repo import read_config
from shopserve.artifacts import (
    SEQUENCE_COMPONENT,
    SEQUENCE_EMBEDDINGS_FILE,
    SEQUENCE_ITEM_IDS_FILE,
    SEQUENCE_LENGTH,
    SEQUENCE_TOP_K,
    load_component,
    sha256_file,
    verify,
)
from shopserve.errors import BundleError
from shopserve.interactions import IdMap
from shopserve.protocol import SEQUENCE_MODEL
from shopserve.release import ReleaseMetrics
from training.sequence.data import ItemIndex
from training.sequence.export import export_onnx
from training.sequence.model import SASRec
from transformers_pre.session import SessionModel

CATALOG = np.arange(100, 130, dtype=np.int64)  # 30 items: catalog ids 100..129
LENGTH, DIM, TOP_K = 5, 8, 10
METRICS = {"ndcg_at_10": 0.21, "hit_rate_at_10": 0.4, "mrr": 0.17, "users": 12,
           "popularity_ndcg_at_10": 0.05, "popularity_hit_rate_at_10": 0.1, "popularity_mrr": 0.04,
           "valid_ndcg_at_10": 0.2, "train_seconds": 1.0}


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export folder as ``train-sequence`` leaves it (an untrained toy model: same files)."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("export")
    model = SASRec(len(CATALOG), LENGTH, dim=DIM, layers=1, heads=1, dropout=0.0).eval()
    export_onnx(model, out / ONNX_FILE, TOP_K)
    np.save(out / SEQUENCE_ITEM_IDS_FILE, ItemIndex.from_ids(CATALOG).ids_by_index(), allow_pickle=False)
    np.save(out / SEQUENCE_EMBEDDINGS_FILE, model.embeddings.detach().numpy(), allow_pickle=False)
    result = {"params": {SEQUENCE_LENGTH: LENGTH, SEQUENCE_TOP_K: TOP_K, "dim": DIM,
                         "n_items": len(CATALOG), "model_file": ONNX_FILE, "seed": 0},
              "metrics": METRICS, "data": {"shoppers": 12, "source": "generated"}}
    (out / RESULT_FILE).write_text(json.dumps(result))
    return out


@pytest.fixture
def bundle(export: Path, tmp_path: Path) -> Path:
    package_sequence(export, tmp_path / "bundle" / SEQUENCE_COMPONENT, "v1", parent="v0",
                     data={"seed": 0})
    return tmp_path / "bundle"


def test_component_files_and_checksums(bundle: Path, export: Path) -> None:
    component = bundle / SEQUENCE_COMPONENT
    manifest = load_component(component, SEQUENCE_COMPONENT)
    on_disk = {p.relative_to(component).as_posix() for p in component.rglob("*")
               if p.is_file() and p.name != "manifest.json"}
    assert set(manifest.files) == on_disk == {
        SEQUENCE_ITEM_IDS_FILE, SEQUENCE_EMBEDDINGS_FILE, f"{SEQUENCE_MODEL}/config.pbtxt",
        f"{SEQUENCE_MODEL}/configs/cpu.pbtxt", f"{SEQUENCE_MODEL}/1/model.onnx"}
    for rel, digest in manifest.files.items():
        assert sha256_file(component / rel) == digest
    assert (component / SEQUENCE_MODEL / "1" / "model.onnx").read_bytes() == (
        export / ONNX_FILE).read_bytes()
    assert not (component / ONNX_FILE).exists()  # the graph lives in the model folder only
    assert (manifest.version, manifest.parent, manifest.component) == ("v1", "v0", SEQUENCE_COMPONENT)


def test_manifest_params_metrics_and_data(bundle: Path) -> None:
    manifest = load_component(bundle / SEQUENCE_COMPONENT, SEQUENCE_COMPONENT)
    assert manifest.params[SEQUENCE_LENGTH] == LENGTH and manifest.params[SEQUENCE_TOP_K] == TOP_K
    assert manifest.params["profiles"]["cpu"]["model_config_name"] == "cpu"
    assert manifest.params["serving"]["session_dim"] == DIM
    assert "model_file" not in manifest.params
    assert manifest.metrics == METRICS
    # The one spelling: a metric at a cut-off is <metric>_at_<k>.
    assert all("@" not in key for key in manifest.metrics)
    assert {k for k in manifest.metrics if re.search(r"_at_\d+$", k)} >= {"ndcg_at_10", "hit_rate_at_10"}
    assert manifest.data == {"seed": 0, "shoppers": 12, "source": "generated"}
    config = read_config(bundle / SEQUENCE_COMPONENT / SEQUENCE_MODEL / "config.pbtxt")
    assert config.parameters[SEQUENCE_LENGTH] == str(LENGTH)


def test_a_changed_file_is_refused(bundle: Path) -> None:
    graph = bundle / SEQUENCE_COMPONENT / SEQUENCE_MODEL / "1" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:-8])
    assert verify(bundle / SEQUENCE_COMPONENT) == [f"{SEQUENCE_MODEL}/1/model.onnx: sha256 mismatch"]
    with pytest.raises(BundleError, match="sha256 mismatch"):
        load_component(bundle / SEQUENCE_COMPONENT, SEQUENCE_COMPONENT)


def test_the_transformer_reads_it(bundle: Path) -> None:
    session = SessionModel.load(bundle / SEQUENCE_COMPONENT, IdMap.from_ids(CATALOG))
    assert (session.length, session.top_k) == (LENGTH, TOP_K)
    assert session.embeddings.shape == (len(CATALOG) + 1, DIM)
    assert session.sequence((0, 1)).tolist() == [[0, 0, 0, 1, 2]]


def test_bundle_key_metrics_gain_the_sequence_model(bundle: Path) -> None:
    release = ReleaseMetrics.from_bundle(bundle)
    assert (release.sequence_ndcg_at_10, release.sequence_hit_rate_at_10, release.sequence_mrr,
            release.sequence_popularity_ndcg_at_10) == (0.21, 0.4, 0.17, 0.05)
    assert key_metrics(bundle) == {"sequence.ndcg_at_10": 0.21, "sequence.hit_rate_at_10": 0.4,
                                   "sequence.mrr": 0.17, "sequence.popularity_ndcg_at_10": 0.05}
    assert ReleaseMetrics.from_key_metrics(key_metrics(bundle)) == release


def test_an_export_whose_graph_disagrees_with_its_result_is_refused(export: Path, tmp_path: Path) -> None:
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    result = json.loads((copy / RESULT_FILE).read_text())
    result["params"][SEQUENCE_LENGTH] = LENGTH + 1
    (copy / RESULT_FILE).write_text(json.dumps(result))
    with pytest.raises(ValueError, match="differ"):
        package_sequence(copy, tmp_path / "sequence", "v1")


def test_train_sequence_is_a_step_the_evaluate_and_package_steps_read() -> None:
    steps = {s.name: s for s in STEPS}
    train = steps["train-sequence"]
    assert (train.sections, train.inputs, train.folder) == (("sequence",), ("data",), SEQUENCE_TRAIN_DIR)
    # evaluate reports the sequence model from its export: a new model must re-run it.
    for reader in ("evaluate", "package"):
        assert "train-sequence" in steps[reader].inputs and "sequence" in steps[reader].sections
    names = [s.name for s in STEPS]
    assert names.index("train-sequence") < names.index("evaluate") < names.index("package")


def test_sequence_section_presets_and_overrides() -> None:
    tiny = PipelineConfig.load(TINY_CONFIG).sequence(progress=False)
    assert (tiny.max_length, tiny.dim, tiny.top_k, tiny.progress) == (
        SEQUENCE_PRESETS["tiny"]["max_length"], SEQUENCE_PRESETS["tiny"]["dim"],
        SEQUENCE_PRESETS["tiny"]["top_k"], False)
    demo = sequence_config({})
    assert demo.progress and demo.max_length == 20  # SequenceConfig's defaults
    assert sequence_config({"preset": "tiny", "seed": 3, "overrides": {"epochs": 2}}).epochs == 2
    assert sequence_config({"seed": 3}).seed == 3
    with pytest.raises(ConfigError, match="sequence.preset"):
        sequence_config({"preset": "huge"})
    with pytest.raises(ConfigError, match="unknown field"):
        sequence_config({"overrides": {"epoch": 2}})
    with pytest.raises(ConfigError, match="sequence.overrides"):
        sequence_config({"overrides": {"dropout": 2.0}})
