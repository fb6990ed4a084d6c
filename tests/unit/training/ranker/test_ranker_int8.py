"""int8 quantisation that computes the same integers on every x86 CPU: 7-bit weights, recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.unit.training.ranker.tiny_bert import TINY, tiny_fused_graph
from training.ranker.optimise import (
    INT8_WEIGHT_LIMIT,
    Int8Options,
    OrtScorer,
    int8_weight_abs_max,
    quantize_int8,
)


@pytest.fixture(scope="module")
def fused(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_fused_graph(tmp_path_factory.mktemp("int8"))[1]


def test_default_int8_weights_fit_seven_bits(fused: Path, tmp_path: Path) -> None:
    int8 = quantize_int8(fused, tmp_path / "int8.onnx")
    peak = int8_weight_abs_max(int8)
    assert peak is not None and peak <= INT8_WEIGHT_LIMIT
    # The fused attention's weights are quantised too (QAttention), with the same range.
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert "QAttention" in ops


def test_full_range_weights_exceed_seven_bits(fused: Path, tmp_path: Path) -> None:
    # Shows the check above means something: today's 8-bit weights reach 127.
    int8 = quantize_int8(fused, tmp_path / "int8.onnx", Int8Options(reduce_range=False))
    assert (int8_weight_abs_max(int8) or 0) > INT8_WEIGHT_LIMIT


def test_default_int8_has_a_scale_per_channel_and_scores_like_fp32(fused: Path, tmp_path: Path) -> None:
    int8 = quantize_int8(fused, tmp_path / "int8.onnx")
    scales = [t for t in onnx.load(str(int8)).graph.initializer
              if t.name.endswith("_scale") and t.data_type == TensorProto.FLOAT]  # fmt: skip
    assert any(np.prod(t.dims) > 1 for t in scales)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, TINY["vocab_size"], (8, 12)).astype(np.int64)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids),
             "token_type_ids": np.zeros_like(ids)}  # fmt: skip
    assert np.abs(OrtScorer(int8, 1)(batch) - OrtScorer(fused, 1)(batch)).max() < 0.1


def test_the_graph_without_int8_weights_has_no_peak(fused: Path) -> None:
    assert int8_weight_abs_max(fused) is None


def test_options_are_recorded() -> None:
    record = Int8Options().as_dict()
    assert record["reduce_range"] is True and record["per_channel"] is True
    assert "7-bit" in record["weights"] and record["weight_granularity"] == "per output channel"
    today = Int8Options(reduce_range=False, per_channel=False).as_dict()
    assert today["weight_granularity"] == "per tensor" and "7-bit" not in today["weights"]


def _matmul_integer(weights: np.ndarray) -> ort.InferenceSession:
    k, n = weights.shape
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w", "a_zero"], ["y"])], "matmul_integer",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, ["m", k]),
         helper.make_tensor_value_info("a_zero", TensorProto.UINT8, [])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["m", n])],
        [numpy_helper.from_array(weights, "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_seven_bit_weights_give_exact_integers_on_this_cpu() -> None:
    # Whatever this CPU's ISA: with |w| <= 64 no pair of uint8 x int8 products overflows the
    # int16 an AVX2 kernel (VPMADDUBSW) sums it into, so ONNX Runtime's integer matmul is exact,
    # as VNNI's int32 accumulation is. (With 8-bit weights an AVX2-only CPU saturates: on the
    # project's AMD EPYC nearly every output of this test differs from the exact product.)
    rng = np.random.default_rng(0)
    weights = rng.integers(-INT8_WEIGHT_LIMIT, INT8_WEIGHT_LIMIT + 1, (128, 96)).astype(np.int8)
    weights[:, 0] = INT8_WEIGHT_LIMIT
    weights[:, 1] = -INT8_WEIGHT_LIMIT
    acts = rng.integers(0, 256, (32, 128)).astype(np.uint8)
    acts[0] = 255  # the worst pair: 255 x 64 x 2 = 32640 <= 32767
    acts[1] = rng.integers(200, 256, 128)
    zero = np.uint8(131)
    got = _matmul_integer(weights).run(None, {"a": acts, "a_zero": np.asarray(zero)})[0]
    exact = (acts.astype(np.int64) - int(zero)) @ weights.astype(np.int64)
    np.testing.assert_array_equal(got, exact)
