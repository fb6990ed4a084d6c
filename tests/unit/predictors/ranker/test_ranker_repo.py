"""ONNX export and the Triton repository: config.pbtxt == ONNX graph == shared contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from predictors.ranker.triton_repo import (
    CPU_CONFIG_NAME,
    GPU_MODEL_FILE,
    MAX_SEQUENCE_LENGTH,
    MODEL_FILE,
    TritonModelConfig,
    bundle_profiles,
    config_pbtxt,
    model_path,
    onnx_io,
    read_config,
    selected_config,
    write_bundle_repository,
    write_repository,
)
from shopserve.protocol import ATTENTION_MASK, INPUT_IDS, RANKER, RANKER_MODEL, TOKEN_TYPE_IDS
from training.ranker.modeling import TorchScorer, prune_layers, spread_layers
from training.ranker.optimise import OrtScorer, export_onnx, fuse_bert, quantize_int8

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


def _assert_config_matches_graph(config_file: Path, onnx_file: Path, model_dir: Path) -> None:
    config = read_config(config_file)
    io = onnx_io(onnx_file)
    assert config.name == RANKER_MODEL == model_dir.name
    assert config.max_batch_size > 0
    # Triton's dims leave out the batch dim when max_batch_size > 0.
    pbtxt = [(t.name, t.datatype, (-1, *t.dims)) for t in config.inputs]
    assert pbtxt == io["inputs"] == [(t.name, t.datatype, t.shape) for t in RANKER.inputs]
    out = [(t.name, t.datatype, (-1, *t.dims)) for t in config.outputs]
    assert out == io["outputs"] == [(t.name, t.datatype, t.shape) for t in RANKER.outputs]
    assert config.parameters[MAX_SEQUENCE_LENGTH] == "48"


@pytest.mark.parametrize("profile", ["cluster", "cpu", "local"])
def test_config_pbtxt_equals_onnx_graph_and_contract(onnx_paths, tmp_path, profile) -> None:
    model_dir = write_repository(tmp_path, onnx_paths["int8"],
                                 TritonModelConfig(max_sequence_length=48), profile=profile)
    _assert_config_matches_graph(model_dir / "config.pbtxt", model_dir / "1" / "model.onnx",
                                 model_dir)


def _op_types(path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.fixture
def bundle_repo(onnx_paths, tmp_path) -> Path:
    """The bundle's repository: int8 graph for the CPU config, fp32 graph for the GPU config."""
    return write_bundle_repository(tmp_path, onnx_paths["int8"], onnx_paths["fused"],
                                   TritonModelConfig(max_sequence_length=48, tensorrt_fp16=True))


@pytest.mark.parametrize(("model_config_name", "kind", "model_file"), [
    ("", "KIND_GPU", GPU_MODEL_FILE), (CPU_CONFIG_NAME, "KIND_CPU", MODEL_FILE)])
def test_bundle_configs_each_equal_their_onnx_graph_and_contract(
    bundle_repo, model_config_name, kind, model_file
) -> None:
    config_file = selected_config(bundle_repo, model_config_name)
    config = read_config(config_file)
    assert config.instance_kind == kind and config.platform == "onnxruntime_onnx"
    assert config.default_model_filename == model_file
    onnx_file = model_path(bundle_repo, config)
    assert onnx_file == bundle_repo / "1" / model_file and onnx_file.is_file()
    _assert_config_matches_graph(config_file, onnx_file, bundle_repo)


def test_bundle_serves_fp32_on_the_gpu_and_int8_on_the_cpu(bundle_repo, onnx_paths) -> None:
    assert selected_config(bundle_repo) == bundle_repo / "config.pbtxt"
    assert selected_config(bundle_repo, "cpu") == bundle_repo / "configs" / "cpu.pbtxt"
    gpu, cpu = bundle_repo / "1" / GPU_MODEL_FILE, bundle_repo / "1" / MODEL_FILE
    assert gpu.read_bytes() == onnx_paths["fused"].read_bytes()
    assert cpu.read_bytes() == onnx_paths["int8"].read_bytes()
    # ONNX Runtime's CUDA / TensorRT providers have no kernels for these integer ops.
    integer_ops = {"MatMulInteger", "DynamicQuantizeLinear", "QAttention", "DynamicQuantizeMatMul"}
    assert not integer_ops & _op_types(gpu)
    assert integer_ops & _op_types(cpu)
    gpu_text = (bundle_repo / "config.pbtxt").read_text()
    cpu_text = (bundle_repo / "configs" / "cpu.pbtxt").read_text()
    assert 'name : "tensorrt"' in gpu_text and "tensorrt" not in cpu_text
    # One model, two configs: everything but the device, the file and the accelerator is equal.
    assert read_config(bundle_repo / "config.pbtxt").inputs == read_config(
        bundle_repo / "configs" / "cpu.pbtxt").inputs
    profiles = bundle_profiles()
    assert profiles["gpu"]["model"] == f"{RANKER_MODEL}/1/{GPU_MODEL_FILE}"
    assert profiles["cpu"]["config"] == f"{RANKER_MODEL}/configs/cpu.pbtxt"
    for profile in profiles.values():
        assert (bundle_repo.parent / profile["config"]).is_file()
        assert (bundle_repo.parent / profile["model"]).is_file()


def test_a_missing_custom_config_falls_back_to_config_pbtxt(tmp_path) -> None:
    """Triton's rule: ``--model-config-name=x`` without ``configs/x.pbtxt`` loads config.pbtxt."""
    model_dir = tmp_path / RANKER_MODEL
    (model_dir / "configs").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(config_pbtxt("cluster", TritonModelConfig()))
    assert selected_config(model_dir, "cpu") == model_dir / "config.pbtxt"
    assert model_path(model_dir, read_config(model_dir / "config.pbtxt")) == (
        model_dir / "1" / MODEL_FILE)


def test_default_model_filename_is_not_for_the_python_backend() -> None:
    with pytest.raises(ValueError):
        config_pbtxt("local", TritonModelConfig(), model_filename="model.onnx")
    text = config_pbtxt("cpu", TritonModelConfig(), model_filename="model.onnx")
    assert 'default_model_filename: "model.onnx"' in text


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
