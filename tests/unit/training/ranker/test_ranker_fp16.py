"""The ranker's fp16 export (weights read back out of the fused ONNX graph) and the GPU script's
core, run here on the CPU on a tiny exported model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from bench import gpu_ranker
from shopserve.artifacts import RANKER_COMPONENT, write_manifest
from shopserve.protocol import ATTENTION_MASK, INPUT_IDS, TOKEN_TYPE_IDS
from tests.unit.training.ranker.tiny_bert import TINY, tiny_fused_graph
from training.ranker import fp16
from training.ranker.optimise import quantize_int8

LENGTH = 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny cross-encoder, its fused fp32 and int8 graphs, and encoded evaluation pairs."""
    work = tmp_path_factory.mktemp("tiny")
    model, fp32 = tiny_fused_graph(work, "model-fp32.onnx")
    int8 = quantize_int8(fp32, work / "model.onnx")
    rng = np.random.default_rng(0)
    n, lists = 90, 6
    lengths = rng.integers(5, LENGTH + 1, n)
    mask = (np.arange(LENGTH)[None, :] < lengths[:, None]).astype(np.uint8)
    ids = np.where(mask, rng.integers(3, TINY["vocab_size"], (n, LENGTH)), 0).astype(np.int32)
    ids[:, 0] = 1
    types = ((np.arange(LENGTH)[None, :] >= lengths[:, None] // 2) & mask.astype(bool)).astype(np.uint8)
    pairs = {INPUT_IDS: ids, ATTENTION_MASK: mask, TOKEN_TYPE_IDS: types,
             "grades": rng.integers(0, 4, n).astype(np.int8),
             "item_ids": np.arange(n, dtype=np.int64),
             "offsets": np.linspace(0, n, lists + 1).astype(np.int64)}
    export = work / "fp16"
    fp16.export_fp16(fp32, export, max_length=LENGTH)
    fp16.write_eval_pairs(export, pairs, fp32_graph=fp32, cpu_graph=int8, threads=1)
    return {"model": model, "fp32": fp32, "int8": int8, "pairs": pairs, "export": export}


def test_weights_read_from_the_fused_graph_are_the_models(tiny: dict) -> None:
    weights, config = fp16.weights_from_onnx(tiny["fp32"])
    state = tiny["model"].state_dict()
    assert set(weights) == {k for k in state if not k.endswith("position_ids")}
    for name, value in weights.items():
        np.testing.assert_array_equal(value, state[name].numpy(), err_msg=name)
    assert config == {**{k: v for k, v in TINY.items()}, "type_vocab_size": 2,
                      "layer_norm_eps": 1e-12, "hidden_act": "gelu"}


def test_export_is_fp16_safetensors_with_a_bert_config(tiny: dict) -> None:
    config = json.loads((tiny["export"] / fp16.CONFIG_FILE).read_text())
    assert config["num_hidden_layers"] == 2 and config["max_sequence_length"] == LENGTH
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["shopserve_source"]["graph"] == "model-fp32.onnx"
    weights = gpu_ranker.read_safetensors(tiny["export"] / fp16.WEIGHTS_FILE)
    assert {w.dtype for w in weights.values()} == {np.dtype(np.float16)}
    # transformers rebuilds it from the JSON alone.
    rebuilt = BertForSequenceClassification(BertConfig.from_dict(config))
    assert rebuilt.config.num_hidden_layers == 2


def test_reader_without_safetensors_matches_the_library(tiny: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tiny["export"] / fp16.WEIGHTS_FILE
    expected = gpu_ranker.read_safetensors(path)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)  # import fails: the fallback
    got = gpu_ranker.read_safetensors(path)
    assert set(got) == set(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


@pytest.mark.parametrize("impl", ["plain", "transformers"])
def test_script_core_on_cpu_matches_the_onnx_graph(tiny: dict, impl: str) -> None:
    result = gpu_ranker.run(tiny["export"], device="cpu", impl=impl, requests=3, batch=32,
                            batch_iters=2, warmup=1)
    assert result["device"] == "cpu" and result["dtype"] == "float32"
    assert result["graph_ms_p50"] is None and result["gpu"] is None
    assert result["pairs"] == 90 and result["lists"] == 6 and result["layers"] == 2
    assert result["max_abs_diff"] < 0.01  # only the weights' rounding to fp16
    assert result["ndcg_at_10"] == pytest.approx(result["ndcg_at_10_onnx_fp32"], abs=0.02)
    assert 0 < result["ndcg_at_10"] <= 1 and 0 < result["ndcg_at_10_onnx_cpu"] <= 1
    assert result["eager_ms_p50"] > 0 and result["pairs_per_s"] > 0
    text = gpu_ranker.report(result, 0.05)
    assert "scores match" in text and "torch " in text and "CPU:" in text


def test_plain_model_equals_transformers(tiny: dict) -> None:
    pairs = {k: torch.from_numpy(tiny["pairs"][k].astype(np.int64))
             for k in (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)}
    plain = gpu_ranker.load_model(tiny["export"], torch.device("cpu"), torch.float32, "plain")
    hf = gpu_ranker.load_model(tiny["export"], torch.device("cpu"), torch.float32, "transformers")
    with torch.inference_mode():
        a = plain(pairs[INPUT_IDS], pairs[ATTENTION_MASK], pairs[TOKEN_TYPE_IDS])
        b = hf(pairs[INPUT_IDS], pairs[ATTENTION_MASK], pairs[TOKEN_TYPE_IDS])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("scores", "grades", "expected"),
    [
        ([3.0, 2.0, 1.0], [3, 1, 0], 1.0),  # perfect
        ([1.0, 2.0, 3.0], [0, 0, 0], None),  # no relevant item: left out
        ([1.0, 2.0], [1, 0], (2**1 - 1) / np.log2(3) / 1.0),  # the relevant item second
    ],
)
def test_ndcg(scores: list, grades: list, expected: float | None) -> None:
    value = gpu_ranker.ndcg_at_k(np.array(scores), np.array(grades), np.array([0, len(scores)]))
    assert np.isnan(value) if expected is None else value == pytest.approx(expected)


def test_pack_copies_the_export_and_the_script_only(tiny: dict, tmp_path: Path) -> None:
    ranker = tmp_path / "bundle" / RANKER_COMPONENT
    (ranker / fp16.FP16_DIR).mkdir(parents=True)
    for name in (fp16.WEIGHTS_FILE, fp16.CONFIG_FILE, fp16.EVAL_FILE):
        (ranker / fp16.FP16_DIR / name).write_bytes((tiny["export"] / name).read_bytes())
    write_manifest(ranker, RANKER_COMPONENT, "t-1")
    out = tmp_path / "gpu"
    size = gpu_ranker.pack(out, tmp_path / "bundle")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [fp16.WEIGHTS_FILE, fp16.CONFIG_FILE, fp16.EVAL_FILE, "gpu_ranker.py"])
    assert 0 < size < gpu_ranker.MAX_PACK_MIB
    # The packed script runs alone, outside the project (no shopserve/training on its path).
    run = subprocess.run([sys.executable, "-I", str(out / "gpu_ranker.py"), "--device", "cpu",
                          "--requests", "2", "--batch", "16", "--batch-iters", "1"],
                         capture_output=True, text=True, timeout=300, cwd=out)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "max abs score difference" in run.stdout

    (ranker / fp16.FP16_DIR / fp16.CONFIG_FILE).write_text("{}")  # tampered after packaging
    with pytest.raises(ValueError, match="manifest"):
        gpu_ranker.pack(tmp_path / "again", tmp_path / "bundle")
