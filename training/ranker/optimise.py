"""ONNX export, BERT graph fusion, int8 dynamic quantisation, ONNX Runtime scoring, quality guard.

The variants the optimise step compares, fastest last:

* ``onnx-fp32``: the 6-layer model exported with dynamic batch and sequence axes, attention and
  LayerNorm fused by ``onnxruntime.transformers`` (fewer, larger kernels);
* ``onnx-int8``: the same graph with int8 dynamic quantisation of its MatMul weights
  (activations quantised per batch at run time; no calibration set needed);
* ``pruned-int8``: a 3-layer student distilled from the 6-layer teacher, then fused and quantised.

A variant is packaged only if its NDCG@10 drop against the fp32 6-layer model is within the
configured budget (:func:`select_variant`).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from transformers import PreTrainedModel

from shopserve.protocol import ATTENTION_MASK, INPUT_IDS, RANKER, SCORE, TOKEN_TYPE_IDS

log = logging.getLogger(__name__)

OPSET = 17
BATCH_AXIS = "batch"
SEQUENCE_AXIS = "sequence"


class _LogitsOnly(torch.nn.Module):
    """Positional inputs in the contract's order, the logits as the only output."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).logits


def export_onnx(model: PreTrainedModel, path: Path, *, opset: int = OPSET) -> Path:
    """Export the cross-encoder to ONNX with dynamic batch and sequence axes.

    Input and output names are the shared contract's (``input_ids``, ``attention_mask``,
    ``token_type_ids`` -> ``score`` ``[batch, 1]``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter restores the wrapper's training flag afterwards, which would cascade to the
    # model: a fresh Module is in training mode, so put the wrapper in eval mode explicitly.
    wrapper = _LogitsOnly(model).eval()
    example = torch.ones((2, 8), dtype=torch.int64)
    names = [t.name for t in RANKER.inputs]
    assert names == [INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS], "contract input order changed"
    axes = {name: {0: BATCH_AXIS, 1: SEQUENCE_AXIS} for name in names}
    axes[SCORE] = {0: BATCH_AXIS}
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns about its own deprecation and about traced Python
        # conditions that are constant for BERT; tests compare the graph against torch instead.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        torch.onnx.export(
            wrapper,
            (example, example, torch.zeros_like(example)),
            str(path),
            input_names=names,
            output_names=[SCORE],
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,  # the TorchScript exporter needs no onnxscript and handles BERT well
        )
    onnx.checker.check_model(str(path))
    return path


def fuse_bert(src: Path, dst: Path, *, num_heads: int, hidden_size: int) -> Path:
    """Fuse attention, GELU and LayerNorm subgraphs with ``onnxruntime.transformers``.

    The result stays a standard-opset + ``com.microsoft`` graph that ONNX Runtime (CPU and CUDA)
    and Triton's onnxruntime backend run; the fused Attention op is also what int8 quantisation
    turns into QAttention.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    optimised = optimize_model(
        str(src),
        model_type="bert",
        num_heads=num_heads,
        hidden_size=hidden_size,
        opt_level=1,  # level 1 fusions are portable; level 2+ bakes in provider-specific nodes
        use_gpu=False,
    )
    optimised.save_model_to_file(str(dst))
    return Path(dst)


def quantize_int8(src: Path, dst: Path) -> Path:
    """int8 dynamic quantisation (weights int8 ahead of time, activations per batch)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        # Per-tensor keeps the kernels on the fast VNNI/AVX-512 path; per-channel costs speed
        # for accuracy this model does not need.
        per_channel=False,
        # Shape inference cannot type the outputs of fused com.microsoft ops; they are fp32.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return Path(dst)


def session_options(threads: int = 2) -> ort.SessionOptions:
    """ONNX Runtime options for a latency-bound scorer on a few cores.

    One intra-op pool of ``threads`` (the cores we are given, not all the host shows), sequential
    execution (a BERT graph is a chain, parallel branches gain nothing), full graph optimisation.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


class OrtScorer:
    """Scores encoded pairs with an ONNX Runtime session.

    Attributes:
        path: The ``.onnx`` file.
        session: The CPU inference session.
    """

    def __init__(self, path: Path, threads: int = 2) -> None:
        self.path = Path(path)
        self.session = ort.InferenceSession(
            str(self.path), sess_options=session_options(threads),
            providers=["CPUExecutionProvider"],
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Scores of a batch of encoded pairs, shape ``[B]``."""
        feeds = {name: batch[name] for name in (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)}
        return self.session.run([SCORE], feeds)[0].reshape(-1)


def file_mib(path: Path) -> float:
    """Size of a file in MiB."""
    return os.path.getsize(path) / 2**20


# --------------------------------------------------------------------------------------------------
# Quality guard.
# --------------------------------------------------------------------------------------------------


@dataclass
class Variant:
    """One candidate for packaging.

    Attributes:
        name: ``onnx-fp32``, ``onnx-int8``, ``pruned-int8``, ...
        path: Its ``model.onnx``.
        layers: Transformer layers.
        ndcg: NDCG@10 on the held-out candidate lists.
        ms_per_request: Median latency of one 50-pair request (the speed ranking key).
        metrics: Any further metrics (MRR, per kind) for the report.
        fp32_path: The fp32 graph of the same model (same layers and weights) before int8
            quantisation, ``path`` itself for an fp32 variant: what the GPU profile serves.
            None when unknown (such a variant cannot be packaged).
    """

    name: str
    path: Path
    layers: int
    ndcg: float
    ms_per_request: float
    metrics: dict[str, float] = field(default_factory=dict)
    fp32_path: Path | None = None

    @property
    def quantised(self) -> bool:
        """Whether ``path`` is an int8 graph quantised from ``fp32_path``."""
        return self.fp32_path is not None and Path(self.fp32_path) != Path(self.path)


def ndcg_drop(reference: float, candidate: float) -> float:
    """Relative NDCG drop of ``candidate`` against ``reference`` (0.01 = 1%; negative = better)."""
    if reference <= 0 or not np.isfinite(reference):
        raise ValueError(f"reference NDCG must be positive, got {reference}")
    return (reference - candidate) / reference


def passes_guard(reference: float, candidate: float, max_drop: float) -> bool:
    """Whether ``candidate`` NDCG is within ``max_drop`` (relative) of the fp32 reference."""
    return bool(np.isfinite(candidate)) and ndcg_drop(reference, candidate) <= max_drop + 1e-12


def select_variant(variants: Sequence[Variant], reference_ndcg: float, max_drop: float) -> Variant:
    """The cheapest variant that passes the quality guard: fewest layers, then fastest measured.

    Fewer layers is strictly less work at equal precision, so it decides first; measured latency
    only orders variants of equal depth (int8 against fp32, whose gap is large). Ordering by
    measured latency alone let a noisy machine package a 6-layer model over a passing 4-layer one.

    Raises:
        ValueError: no variant passes (the fp32 export itself should always pass; if it does
            not, the export is broken and nothing must be packaged).
    """
    passing = [v for v in variants if passes_guard(reference_ndcg, v.ndcg, max_drop)]
    if not passing:
        raise ValueError(
            f"no variant within {max_drop:.1%} of NDCG@10 {reference_ndcg:.4f}: "
            + ", ".join(f"{v.name}={v.ndcg:.4f}" for v in variants)
        )
    return min(passing, key=lambda v: (v.layers, v.ms_per_request))
