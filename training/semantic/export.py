"""The ``query-encoder`` graph: ONNX export of the bi-encoder, ONNX Runtime embedding, and the check
of the graph against torch.

The graph takes ``input_ids`` and ``attention_mask`` INT64 ``[B, T]`` and returns
``query_embedding`` FP32 ``[B, D]`` (names and dtypes from :data:`shopserve.protocol.QUERY_ENCODER`):
BERT, mean pooling over the mask, L2 normalisation, all inside the graph, so Triton's answer is the
vector the index is searched with. Batch and length axes are dynamic; ``D`` is fixed.

The item embeddings of the component are computed with this graph too (:func:`embed_onnx`): the
items and the queries then go through the very same computation, and ONNX Runtime embeds the
catalog 2-3 times faster than eager torch on the CPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from transformers import PreTrainedTokenizerBase

from shopserve.protocol import ATTENTION_MASK, INPUT_IDS, QUERY_EMBEDDING, QUERY_ENCODER
from training.semantic.encoder import MeanPoolEncoder, as_tensors, token_lengths, tokenize

#: The ONNX opset, as the ranker's and the sequence model's exports.
OPSET = 17
BATCH_AXIS = "batch"
LENGTH_AXIS = "tokens"


def export_onnx(model: MeanPoolEncoder, path: Path, *, opset: int = OPSET) -> Path:
    """Write the ``query-encoder`` graph of ``model`` to ``path`` (fp32, dynamic batch and length).

    Returns:
        ``path``, checked by ``onnx.checker``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names_in = [t.name for t in QUERY_ENCODER.inputs]
    names_out = [t.name for t in QUERY_ENCODER.outputs]
    assert names_in == [INPUT_IDS, ATTENTION_MASK] and names_out == [QUERY_EMBEDDING], \
        "contract changed"
    model = model.eval()
    # Any ids of the vocabulary do: two rows of different lengths, so padding is traced too.
    ids = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]], dtype=torch.int64) % model.vocab_size
    mask = (ids != 0).to(torch.int64)
    axes = {INPUT_IDS: {0: BATCH_AXIS, 1: LENGTH_AXIS}, ATTENTION_MASK: {0: BATCH_AXIS, 1: LENGTH_AXIS},
            QUERY_EMBEDDING: {0: BATCH_AXIS}}
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns about its own deprecation and about traced shape
        # arithmetic; check_export compares the graph with torch instead.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        torch.onnx.export(
            model, (ids, mask), str(path), input_names=names_in, output_names=names_out,
            dynamic_axes=axes, opset_version=opset, do_constant_folding=True,
            dynamo=False,  # as the ranker: the TorchScript exporter needs no onnxscript
        )
    # The exporter names the output's second dim symbolically; it is the hidden size, and Triton
    # and the packaging read it from the graph (EncoderServing.from_onnx), so write it down.
    graph = onnx.load(str(path))
    graph.graph.output[0].type.tensor_type.shape.dim[1].dim_value = model.dim
    onnx.save(graph, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return path


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """An ONNX Runtime CPU session of a graph: ``threads`` intra-op threads, full optimisation."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(graph: Path | ort.InferenceSession, batch: dict[str, np.ndarray]) -> np.ndarray:
    """``query_embedding`` of a tokenised batch with ONNX Runtime (a path opens a 1-thread session)."""
    sess = session(Path(graph)) if not isinstance(graph, ort.InferenceSession) else graph
    feeds = {name: np.ascontiguousarray(batch[name], dtype=np.int64)
             for name in (INPUT_IDS, ATTENTION_MASK)}
    return sess.run([QUERY_EMBEDDING], feeds)[0]


def embed_onnx(
    graph: Path | ort.InferenceSession,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 64,
    threads: int = 1,
) -> np.ndarray:
    """Embeddings of ``texts`` with the exported graph (float32 ``[N, D]``, in the order of
    ``texts``; batched by token length so that batches carry little padding)."""
    sess = session(Path(graph), threads) if not isinstance(graph, ort.InferenceSession) else graph
    texts = list(texts)
    dim = int(sess.get_outputs()[0].shape[1])
    out = np.zeros((len(texts), dim), dtype=np.float32)
    order = np.argsort(token_lengths(tokenizer, texts), kind="stable") if texts else []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        out[rows] = run_onnx(sess, tokenize(tokenizer, [texts[i] for i in rows], max_length))
    return out


@dataclass(frozen=True)
class ExportCheck:
    """ONNX Runtime against torch on the same tokenised texts.

    Attributes:
        max_abs_diff: Largest absolute difference of any embedding coordinate.
        min_cosine: Smallest cosine similarity of a torch embedding with its ONNX one.
        texts: Texts compared.
    """

    max_abs_diff: float
    min_cosine: float
    texts: int


def check_export(model: MeanPoolEncoder, path: Path, batch: dict[str, np.ndarray]) -> ExportCheck:
    """Compare the graph at ``path`` with ``model`` on a tokenised ``batch``."""
    graph = run_onnx(path, batch)
    with torch.inference_mode():
        reference = model.eval()(*as_tensors(batch)).numpy()
    return ExportCheck(float(np.abs(graph - reference).max()),
                       float((graph * reference).sum(axis=1).min()), int(graph.shape[0]))
