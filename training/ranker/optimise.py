"""ONNX export, BERT graph fusion, int8 dynamic quantisation, ONNX Runtime scoring, quality guard.

The variants the optimise step can build, cheapest first (:func:`static_cost`):

* ``pruned-int8``: a 4-layer student distilled from the 6-layer teacher, fused and quantised;
* ``pruned-fp32``: the same student fused, not quantised (not built by default);
* ``onnx-int8``: the 6-layer teacher with int8 dynamic quantisation of its MatMul weights
  (activations quantised per batch at run time; no calibration set needed);
* ``onnx-fp32``: the 6-layer teacher exported with dynamic batch and sequence axes, attention and
  LayerNorm fused by ``onnxruntime.transformers`` (fewer, larger kernels).

A variant is packaged only if its NDCG@10 drop against the fp32 6-layer model is within the
configured budget; among those, the cheapest by that static order wins (:func:`select_variant`).
Nothing here depends on the machine the build runs on: int8 graphs compute the same integers on
every x86 CPU (:func:`quantize_int8`), and measured latency is reported, never used to choose.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
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


INT8_WEIGHT_LIMIT = 64
"""Largest weight magnitude of a reduced-range int8 graph: ONNX Runtime's 7-bit range for
``QInt8`` is [-64, 64], and 2 x 255 x 64 = 32640 fits the int16 an AVX2 kernel sums a pair into."""


@dataclass(frozen=True)
class Int8Options:
    """How :func:`quantize_int8` quantises (recorded in the ranker manifest).

    The default, 7-bit weights with one scale per output channel, is the one setting that is both
    independent of the CPU and as accurate as today's 8-bit per-tensor weights. Measured on the
    seed-0 demo build (200 held-out queries, this AVX2-only EPYC, drop of NDCG@10 against the
    fp32 teacher with its paired-bootstrap standard error):

    ==============================  =====================  ===================================
    weights                         6-layer teacher int8   4-layer student int8 (vs its fp32)
    ==============================  =====================  ===================================
    8-bit, per tensor (before)      +0.83% +/- 0.52%       -1.9%
    7-bit, per tensor               +7.68% +/- 1.10%       -5.6%
    7-bit, per channel (default)    -0.00% +/- 0.31%       -1.7%
    ==============================  =====================  ===================================

    Speed did not measurably differ between the three (within this shared machine's noise).

    Attributes:
        reduce_range: Quantise weights to 7 bits ([-64, 64]) instead of 8. Without it the scores
            depend on the CPU: ONNX Runtime multiplies uint8 activations by int8 weights with
            ``VPMADDUBSW`` on x86 CPUs without VNNI (this AVX2-only EPYC), which sums each pair
            of products into a saturating int16 (255 x 127 x 2 = 64770 > 32767), while VNNI's
            ``VPDPBUSD`` accumulates exactly in int32. The same graph thus lost 1.09% NDCG@10 on
            AVX2 and 0.79% with VNNI, and the guard chose a different variant on each. With 7-bit
            weights no pair overflows, every ISA computes the exact int32 products, and quality
            is a property of the build, not of the machine. ONNX Runtime recommends exactly this
            for x86 CPUs without VNNI ("Choosing parameters for CPU inference" in the
            ``quantize_static`` docstring of ``onnxruntime.quantization`` 1.32; the FAQ of
            https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html: U8S8
            on AVX2 may saturate, try ``reduce_range``).
        per_channel: One scale per output column of each weight matrix instead of one per
            matrix. Needed with ``reduce_range``: per tensor, the few large weights of a matrix
            set its scale and 7 bits leave the rest too few levels (the 7.68% row above).
    """

    reduce_range: bool = True
    per_channel: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The manifest's record of the quantisation."""
        return {
            "method": "onnxruntime quantize_dynamic",
            "weights": "int8 symmetric" + (", 7-bit (reduce_range)" if self.reduce_range else ""),
            "weight_granularity": "per output channel" if self.per_channel else "per tensor",
            "activations": "uint8 asymmetric, per batch at run time",
            "reduce_range": self.reduce_range,
            "per_channel": self.per_channel,
        }


def quantize_int8(src: Path, dst: Path, options: Int8Options | None = None) -> Path:
    """int8 dynamic quantisation: weights int8 ahead of time, activations uint8 per batch.

    With the default :class:`Int8Options` (7-bit weights, per channel) the graph computes the
    same integers on every x86 CPU, with or without VNNI, and loses no more NDCG than 8-bit
    weights did; see :class:`Int8Options`.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    options = options or Int8Options()
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=options.per_channel,
        reduce_range=options.reduce_range,
        # Shape inference cannot type the outputs of fused com.microsoft ops; they are fp32.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return Path(dst)


def int8_weight_abs_max(path: Path) -> int | None:
    """Largest magnitude among a graph's int8 initializers (its quantised weights); None if none.

    At most :data:`INT8_WEIGHT_LIMIT` for a graph quantised with ``reduce_range``.
    """
    model = onnx.load(str(path))
    peaks = [int(np.abs(numpy_helper.to_array(t).astype(np.int16)).max(initial=0))
             for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]  # fmt: skip
    return max(peaks) if peaks else None


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


PRECISIONS = ("int8", "fp32")
"""Precisions of the variants, cheapest first: int8 is less work than fp32 at equal depth."""


def static_cost(layers: int, precision: str) -> tuple[int, int]:
    """The order in which variants are tried and chosen: fewest layers, then lowest precision.

    A property of the model, never of the machine: fewer layers is strictly less work at equal
    precision, and int8 is less work than fp32 at equal depth on any CPU this serves on.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return (layers, PRECISIONS.index(precision))


@dataclass
class Variant:
    """One candidate for packaging.

    Attributes:
        name: ``onnx-fp32``, ``onnx-int8``, ``pruned-int8``, ...
        path: Its ``model.onnx``.
        layers: Transformer layers.
        ndcg: NDCG@10 on the held-out candidate lists.
        ms_per_request: Median latency of one request measured on the build machine: reported,
            never used to choose.
        metrics: Any further metrics (MRR, per kind) for the report.
        fp32_path: The fp32 graph of the same model (same layers and weights) before int8
            quantisation, ``path`` itself for an fp32 variant: what the GPU profile serves.
            None when unknown (such a variant cannot be packaged).
        ndcg_drop_se: Standard error of its NDCG@10 drop against the reference (paired bootstrap
            over the held-out queries, :func:`drop_standard_error`); None when not computed.
    """

    name: str
    path: Path
    layers: int
    ndcg: float
    ms_per_request: float
    metrics: dict[str, float] = field(default_factory=dict)
    fp32_path: Path | None = None
    ndcg_drop_se: float | None = None

    @property
    def quantised(self) -> bool:
        """Whether ``path`` is an int8 graph quantised from ``fp32_path``."""
        return self.fp32_path is not None and Path(self.fp32_path) != Path(self.path)

    @property
    def precision(self) -> str:
        """``int8`` for a quantised graph, else ``fp32``."""
        return "int8" if self.quantised else "fp32"

    @property
    def cost(self) -> tuple[int, int]:
        """Its :func:`static_cost`."""
        return static_cost(self.layers, self.precision)


def ndcg_drop(reference: float, candidate: float) -> float:
    """Relative NDCG drop of ``candidate`` against ``reference`` (0.01 = 1%; negative = better)."""
    if reference <= 0 or not np.isfinite(reference):
        raise ValueError(f"reference NDCG must be positive, got {reference}")
    return (reference - candidate) / reference


BOOTSTRAP_SAMPLES = 2000


def drop_standard_error(
    reference: Sequence[float], candidate: Sequence[float], *, samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> float:
    """Standard error of the relative NDCG drop, by a paired bootstrap over queries.

    Both models reranked the same lists, so each resample draws queries (with replacement) and
    takes both models' NDCG of those queries: the spread is that of the *difference*, which is
    far smaller than either mean's. Queries NaN for either model (no relevant item) are left out.

    Args:
        reference: Per-query NDCG@10 of the reference, in list order.
        candidate: Per-query NDCG@10 of the candidate, same lists in the same order.
        samples: Bootstrap resamples.
        seed: Seed of the resampling (the result is reproducible).

    Raises:
        ValueError: the two differ in length, or no query is finite for both.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"per-query NDCG of different lengths: {ref.shape} and {cand.shape}")
    keep = np.isfinite(ref) & np.isfinite(cand)
    ref, cand = ref[keep], cand[keep]
    if not len(ref):
        raise ValueError("no query with a finite NDCG for both models")
    idx = np.random.default_rng(seed).integers(0, len(ref), size=(samples, len(ref)))
    ref_means = ref[idx].mean(axis=1)
    drops = (ref_means - cand[idx].mean(axis=1)) / ref_means
    return float(drops.std(ddof=1))


def passes_guard(reference: float, candidate: float, max_drop: float) -> bool:
    """Whether ``candidate`` NDCG is within ``max_drop`` (relative) of the fp32 reference."""
    return bool(np.isfinite(candidate)) and ndcg_drop(reference, candidate) <= max_drop + 1e-12


def select_variant(variants: Sequence[Variant], reference_ndcg: float, max_drop: float) -> Variant:
    """The cheapest variant that passes the quality guard, by :func:`static_cost`.

    Fewest layers first, then lowest precision (int8 before fp32); ties by name. Measured latency
    never decides: it is the build machine's, and a busy or different machine (AVX2 against
    VNNI) would package a different model from the same seeded build.

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
    return min(passing, key=lambda v: (v.cost, v.name))
