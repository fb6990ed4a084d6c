"""The ``semantic`` bundle component as ``train-semantic`` and the package step write it (the tiny
world, the tiny preset): its files and checksums, the manifest's contract fields, embeddings and
index that agree with each other and with the served graph, the Triton configurations, and the same
component again for the same seed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
from tokenizers import Tokenizer

from pipeline.lifecycle.config import semantic_config
from pipeline.lifecycle.semantic import build_semantic_component, package_semantic, train_and_export
from predictors.ranker.triton_repo import read_config
from shopserve.artifacts import (
    MANIFEST,
    SEMANTIC_COMPONENT,
    SEMANTIC_EMBEDDINGS_FILE,
    SEMANTIC_INDEX_FILE,
    SEMANTIC_TOKENIZER_FILE,
    Manifest,
    load_component,
    load_npz,
)
from shopserve.errors import BundleError
from shopserve.protocol import ATTENTION_MASK, INPUT_IDS, QUERY_EMBEDDING, QUERY_ENCODER_MODEL
from training.data.generator import Dataset, split_queries
from training.semantic.build import int8_guard
from training.semantic.export import run_onnx

GRAPH = f"{QUERY_ENCODER_MODEL}/1/model.onnx"
"""The CPU's graph (int8 when it passed the guard), the one the local Triton serves."""
GPU_GRAPH = f"{QUERY_ENCODER_MODEL}/1/model-fp32.onnx"
LAYOUT = {SEMANTIC_EMBEDDINGS_FILE, SEMANTIC_INDEX_FILE, SEMANTIC_TOKENIZER_FILE,
          f"{QUERY_ENCODER_MODEL}/config.pbtxt", f"{QUERY_ENCODER_MODEL}/configs/cpu.pbtxt", GRAPH}


def _layout(manifest: Manifest) -> set[str]:
    """The files of a component: an fp32 graph for the GPU beside an int8 one for the CPU."""
    return LAYOUT | ({GPU_GRAPH} if manifest.params["encoder"]["cpu_precision"] == "int8" else set())


def _embed(folder: Path, texts: list[str]) -> np.ndarray:
    """Queries embedded as the transformer and Triton will: the shipped tokenizer, the graph."""
    tokenizer = Tokenizer.from_file(str(folder / SEMANTIC_TOKENIZER_FILE))
    rows = []
    for text in texts:
        ids = np.asarray([tokenizer.encode(text).ids], dtype=np.int64)
        rows.append(run_onnx(folder / GRAPH, {INPUT_IDS: ids, ATTENTION_MASK: np.ones_like(ids)})[0])
    return np.stack(rows)


def test_the_layout_is_the_contract_and_every_file_is_checksummed(
    tiny_component: tuple[Path, Manifest]
) -> None:
    folder, manifest = tiny_component
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert files == _layout(manifest) | {MANIFEST}
    assert set(manifest.files) == _layout(manifest)
    assert load_component(folder, SEMANTIC_COMPONENT).files == manifest.files


@pytest.mark.parametrize("victim", [SEMANTIC_INDEX_FILE, SEMANTIC_EMBEDDINGS_FILE, GRAPH])
def test_a_changed_file_is_refused(
    tiny_component: tuple[Path, Manifest], tmp_path: Path, victim: str
) -> None:
    copy = tmp_path / "semantic"
    shutil.copytree(tiny_component[0], copy)
    with open(copy / victim, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        load_component(copy, SEMANTIC_COMPONENT)


def test_the_manifest_has_the_fields_the_transformer_reads(
    tiny_component: tuple[Path, Manifest], tiny_world: Dataset
) -> None:
    params, metrics = tiny_component[1].params, tiny_component[1].metrics
    assert params["dim"] == 384 and params["max_query_length"] == 32
    assert params["normalised"] is True and params["metric"] == "inner_product"
    assert params["n_items"] == len(tiny_world.items)
    index = params["index"]
    assert index["type"] == "HNSW32,Flat" and index["ef_search"] == 128
    assert 0.95 <= index["recall_at_50"] <= 1.0
    encoder = params["encoder"]
    assert encoder["steps"] == 4 and "MultipleNegativesRankingLoss" in encoder["loss"]
    assert "all-MiniLM-L6-v2" in encoder["base"] and encoder["item_tower"].startswith("untuned")
    assert params["split"]["eval_fraction"] == 0.2 and params["split"]["test_queries"] > 0
    assert params["profiles"]["cpu"]["model_config_name"] == "cpu"
    for name in ("semantic", "base", "bm25"):
        assert 0.0 <= metrics[f"{name}_recall_at_50"] <= 1.0
        assert {"all", "exact"} <= set(metrics["by_kind"][name]["recall_at_50"])
    assert metrics["onnx_max_abs_diff"] <= 1e-4
    int8 = encoder["int8"]
    assert int8["reduce_range"] is True and int8["per_channel"] is True
    assert encoder["cpu_precision"] == ("int8" if int8["passes"] else "fp32")
    assert params["profiles"]["cpu"]["precision"] == encoder["cpu_precision"]
    assert params["profiles"]["gpu"]["precision"] == "fp32"
    assert int8["passes"] == (int8["fp32_recall_at_50"] - int8["int8_recall_at_50"]
                              <= int8["max_recall_drop"])
    assert {"all", "exact"} <= set(metrics["by_kind"]["semantic_int8"]["recall_at_50"])
    assert set(metrics["seconds"]) >= {"embed_items", "fine_tune", "export", "index", "total"}


def test_embeddings_index_and_graph_agree(
    tiny_component: tuple[Path, Manifest], tiny_world: Dataset
) -> None:
    folder, manifest = tiny_component
    arrays = load_npz(folder / SEMANTIC_EMBEDDINGS_FILE)
    ids, vectors = arrays["item_id"], arrays["vectors"]
    assert ids.dtype == np.int64 and vectors.dtype == np.float32
    np.testing.assert_array_equal(ids, tiny_world.items.item_id)
    assert vectors.shape == (len(ids), manifest.params["dim"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    index = faiss.read_index(str(folder / SEMANTIC_INDEX_FILE))
    assert index.ntotal == len(ids) and index.d == vectors.shape[1]
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT
    index.hnsw.efSearch = manifest.params["index"]["ef_search"]
    _, labels = index.search(vectors[:20], 1)
    assert labels[:, 0].tolist() == list(range(20))  # row i is item_id[i]
    # An exact query through the shipped tokenizer and graph finds one of its exact items.
    _, test_ids = split_queries(tiny_world, 0.2, 0)
    queries = tiny_world.queries
    exact = [q for q in test_ids if queries.kind[queries.query_id.searchsorted(q)] == "exact"][:3]
    texts = [str(queries.text[queries.query_id.searchsorted(q)]) for q in exact]
    embedded = _embed(folder, texts)
    assert embedded.shape == (len(texts), vectors.shape[1])
    _, labels = index.search(embedded, 10)
    for qid, row in zip(exact, labels, strict=True):
        grades = tiny_world.grade(np.full(10, qid), ids[row])
        assert (grades == 3).any(), (qid, grades)


def test_the_triton_configurations(tiny_component: tuple[Path, Manifest]) -> None:
    folder, manifest = tiny_component
    gpu = read_config(folder / QUERY_ENCODER_MODEL / "config.pbtxt")
    cpu = read_config(folder / QUERY_ENCODER_MODEL / "configs" / "cpu.pbtxt")
    assert (gpu.platform, gpu.instance_kind) == ("onnxruntime_onnx", "KIND_GPU")
    assert (cpu.platform, cpu.instance_kind) == ("onnxruntime_onnx", "KIND_CPU")
    assert cpu.default_model_filename == "model.onnx"
    assert gpu.default_model_filename == Path(manifest.params["profiles"]["gpu"]["model"]).name
    # The tiny build's int8 query tower passes the guard (deterministic: 7-bit weights compute the
    # same integers on every x86 CPU), so the GPU serves a graph of its own, in fp32.
    assert gpu.default_model_filename == "model-fp32.onnx"
    for config in (gpu, cpu):
        assert config.name == QUERY_ENCODER_MODEL
        assert [(t.name, t.datatype, t.dims) for t in config.inputs] == [
            (INPUT_IDS, "INT64", (-1,)), (ATTENTION_MASK, "INT64", (-1,))]
        assert [(t.name, t.datatype, t.dims) for t in config.outputs] == [
            (QUERY_EMBEDDING, "FP32", (manifest.params["dim"],))]
        assert config.parameters["max_query_length"] == "32"
        assert config.parameters["vocab_size"] == str(manifest.params["vocab_size"])
    assert cpu.parameters["intra_op_thread_count"] == "1"
    assert "intra_op_thread_count" not in gpu.parameters


def test_the_same_seed_builds_the_same_component(
    tiny_component: tuple[Path, Manifest], tiny_world: Dataset, tmp_path: Path
) -> None:
    folder, manifest = tiny_component
    again = build_semantic_component(tiny_world, tmp_path / "semantic",
                                     semantic_config({"preset": "tiny"}, progress=False), "t-1")
    for name in (SEMANTIC_EMBEDDINGS_FILE, SEMANTIC_INDEX_FILE, SEMANTIC_TOKENIZER_FILE):
        assert again.files[name] == manifest.files[name], name
    texts = ["red lamp", "shoes not made of leather"]
    np.testing.assert_array_equal(_embed(tmp_path / "semantic", texts), _embed(folder, texts))
    assert again.params == manifest.params


def test_without_int8_both_configurations_serve_the_fp32_graph(
    tiny_world: Dataset, tmp_path: Path
) -> None:
    manifest = build_semantic_component(
        tiny_world, tmp_path / "semantic",
        semantic_config({"preset": "tiny", "overrides": {"steps": 0, "int8": False}},
                        progress=False), "t-1")
    assert set(manifest.files) == LAYOUT
    assert manifest.params["encoder"]["cpu_precision"] == "fp32"
    assert manifest.params["encoder"]["int8"] is None
    for config in ("config.pbtxt", "configs/cpu.pbtxt"):
        assert read_config(tmp_path / "semantic" / QUERY_ENCODER_MODEL / config
                           ).default_model_filename == "model.onnx"
    assert {p["precision"] for p in manifest.params["profiles"].values()} == {"fp32"}


def test_the_int8_guard() -> None:
    def quality(fp32: float, int8: float) -> dict:
        return {"semantic": {"recall_at_50": {"all": fp32}},
                "semantic_int8": {"recall_at_50": {"all": int8}}}

    assert int8_guard(quality(0.80, 0.795), 0.01)["passes"] is True
    assert int8_guard(quality(0.80, 0.80), 0.0)["passes"] is True
    assert int8_guard(quality(0.80, 0.85), 0.0)["passes"] is True
    refused = int8_guard(quality(0.80, 0.78), 0.01)
    assert refused["passes"] is False
    assert (refused["fp32_recall_at_50"], refused["int8_recall_at_50"]) == (0.80, 0.78)


def test_packaging_refuses_an_export_whose_sizes_disagree(
    tiny_world: Dataset, tmp_path: Path
) -> None:
    export = tmp_path / "export"
    train_and_export(tiny_world, export,
                     semantic_config({"preset": "tiny", "overrides": {"steps": 0}}, progress=False))
    result = json.loads((export / "result.json").read_text())
    result["params"]["dim"] = 12
    (export / "result.json").write_text(json.dumps(result))
    with pytest.raises(BundleError, match="embedding size"):
        package_semantic(export, tmp_path / "semantic", "t-1")
