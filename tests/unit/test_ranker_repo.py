"""ONNX export and the Triton repository: config.pbtxt == ONNX graph == shared contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from predictors.ranker.modeling import TorchScorer, prune_layers, spread_layers
from predictors.ranker.optimise import OrtScorer, export_onnx, fuse_bert, quantize_int8
from predictors.ranker.triton_repo import (
    MAX_SEQUENCE_LENGTH,
    TritonModelConfig,
    config_pbtxt,
    onnx_io,
    read_config,
    write_repository,
)
from shopserve.protocol import ATTENTION_MASK, INPUT_IDS, RANKER, RANKER_MODEL, TOKEN_TYPE_IDS

HEADS, HIDDEN = 2, 32


@pytest.fixture(scope="module")
def tiny_bert() -> BertForSequenceClassification:
    """A random 2-layer BERT with a one-logit head: the real architecture, seconds to export."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=120, hidden_size=HIDDEN, num_hidden_layers=4,
                        num_attention_heads=HEADS, intermediate_size=64,
                        max_position_embeddings=64, num_labels=1)  # fmt: skip
    config._attn_implementation = "eager"
    return BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def onnx_paths(tiny_bert, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("onnx")
    raw = export_onnx(tiny_bert, out / "raw.onnx")
    fused = fuse_bert(raw, out / "fused.onnx", num_heads=HEADS, hidden_size=HIDDEN)
    return {"raw": raw, "fused": fused, "int8": quantize_int8(fused, out / "int8.onnx")}


def _batch(batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, length), dtype=np.int64)
    mask[0, length // 2:] = 0  # one padded row
    types = np.zeros((batch, length), dtype=np.int64)
    types[:, length // 3:] = 1
    return {INPUT_IDS: rng.integers(1, 120, (batch, length)).astype(np.int64),
            ATTENTION_MASK: mask, TOKEN_TYPE_IDS: types}  # fmt: skip


@pytest.mark.parametrize("shape", [(1, 5), (7, 13), (50, 32)])
def test_onnx_matches_torch_for_any_batch_and_length(tiny_bert, onnx_paths, shape) -> None:
    batch = _batch(*shape)
    expected = TorchScorer(tiny_bert)(batch)
    for name in ("raw", "fused"):
        np.testing.assert_allclose(OrtScorer(onnx_paths[name])(batch), expected, atol=1e-4)
    # int8 is an approximation; it must stay close on this scale of logits.
    assert np.abs(OrtScorer(onnx_paths["int8"])(batch) - expected).max() < 0.1


def test_int8_is_smaller(onnx_paths) -> None:
    assert onnx_paths["int8"].stat().st_size < onnx_paths["fused"].stat().st_size


@pytest.mark.parametrize("name", ["raw", "fused", "int8"])
def test_onnx_graph_io_is_the_contract(onnx_paths, name) -> None:
    io = onnx_io(onnx_paths[name])
    assert io["inputs"] == [(t.name, t.datatype, t.shape) for t in RANKER.inputs]
    assert [(n, d) for n, d, _ in io["outputs"]] == [(t.name, t.datatype) for t in RANKER.outputs]
    assert io["outputs"][0][2] == (-1, 1)


@pytest.mark.parametrize("profile", ["cluster", "cpu", "local"])
def test_config_pbtxt_equals_onnx_graph_and_contract(onnx_paths, tmp_path, profile) -> None:
    model_dir = write_repository(tmp_path, onnx_paths["int8"],
                                 TritonModelConfig(max_sequence_length=48), profile=profile)
    config = read_config(model_dir / "config.pbtxt")
    io = onnx_io(model_dir / "1" / "model.onnx")
    assert config.name == RANKER_MODEL == model_dir.name
    assert config.max_batch_size > 0
    # Triton's dims leave out the batch dim when max_batch_size > 0.
    pbtxt = [(t.name, t.datatype, (-1, *t.dims)) for t in config.inputs]
    assert pbtxt == io["inputs"] == [(t.name, t.datatype, t.shape) for t in RANKER.inputs]
    out = [(t.name, t.datatype, (-1, *t.dims)) for t in config.outputs]
    assert out == io["outputs"] == [(t.name, t.datatype, t.shape) for t in RANKER.outputs]
    assert config.parameters[MAX_SEQUENCE_LENGTH] == "48"


def test_profiles_differ_only_where_they_should(tmp_path) -> None:
    cluster = config_pbtxt("cluster", TritonModelConfig(tensorrt_fp16=True))
    cpu = config_pbtxt("cpu", TritonModelConfig())
    local = config_pbtxt("local", TritonModelConfig())
    assert 'platform: "onnxruntime_onnx"' in cluster and "KIND_GPU" in cluster
    assert 'name : "tensorrt"' in cluster and '"FP16"' in cluster
    assert 'platform: "onnxruntime_onnx"' in cpu and "KIND_CPU" in cpu and "tensorrt" not in cpu
    assert 'backend: "python"' in local and "KIND_CPU" in local and "platform" not in local
    for text in (cluster, cpu, local):
        assert "dynamic_batching" in text and "preferred_batch_size: [ 50, 100, 200 ]" in text
    with pytest.raises(ValueError):
        config_pbtxt("gpu", TritonModelConfig())  # type: ignore[arg-type]


def test_local_repository_ships_the_python_model(onnx_paths, tmp_path) -> None:
    model_dir = write_repository(tmp_path, onnx_paths["int8"], TritonModelConfig(), profile="local")
    assert (model_dir / "1" / "model.py").is_file()
    assert (model_dir / "1" / "model.onnx").is_file()


@pytest.mark.parametrize(("total", "keep", "expected"),
                         [(6, 3, [0, 2, 4]), (6, 6, list(range(6))), (6, 1, [0]), (4, 2, [0, 2])])
def test_spread_layers(total: int, keep: int, expected: list[int]) -> None:
    assert spread_layers(total, keep) == expected


def test_prune_layers_keeps_the_chosen_layers_and_leaves_the_teacher(tiny_bert) -> None:
    student = prune_layers(tiny_bert, [0, 2])
    assert len(student.bert.encoder.layer) == 2 and student.config.num_hidden_layers == 2
    assert len(tiny_bert.bert.encoder.layer) == 4
    torch.testing.assert_close(student.bert.encoder.layer[1].output.dense.weight,
                               tiny_bert.bert.encoder.layer[2].output.dense.weight)
    assert student.bert.encoder.layer[1].output.dense.weight is not (
        tiny_bert.bert.encoder.layer[2].output.dense.weight)
    batch = _batch(3, 9)
    assert TorchScorer(student)(batch).shape == (3,)


@pytest.mark.parametrize("keep", [[], [0, 0], [9]])
def test_prune_layers_refuses_bad_layer_lists(tiny_bert, keep) -> None:
    with pytest.raises(ValueError):
        prune_layers(tiny_bert, keep)
