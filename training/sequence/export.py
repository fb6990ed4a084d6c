"""The ``seq-recommender`` serving graph: ONNX export and the ONNX Runtime vs torch check.

The graph takes ``item_sequence`` INT64 [B, L] (model indices, newest last, left-padded with 0)
and returns ``next_items`` INT64 [B, K], ``next_scores`` FP32 [B, K] and ``session_embedding``
FP32 [B, D] (names and dtypes from :data:`shopserve.protocol.SEQUENCE`). The padding index and
every item of the input row are set to -inf *inside* the graph before TopK, so Triton returns
only new items and the caller post-processes nothing. The batch axis is dynamic; ``L`` is fixed
by the positional embeddings (the manifest's ``sequence_length``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from shopserve.protocol import ITEM_SEQUENCE, NEXT_ITEMS, NEXT_SCORES, SEQUENCE, SESSION_EMBEDDING
from training.sequence.data import PADDING
from training.sequence.model import SASRec

#: The ONNX opset, as the ranker's export (``training.ranker.optimise.OPSET``).
OPSET = 17
BATCH_AXIS = "batch"


class ServingGraph(nn.Module):
    """The model plus masking and TopK: the contract's inputs and outputs, in its order.

    Args:
        model: A trained model (used in eval mode).
        top_k: ``K``; at most ``n_items - L`` so that K new items always exist.
    """

    def __init__(self, model: SASRec, top_k: int) -> None:
        super().__init__()
        if not 1 <= top_k <= model.n_items - model.max_length:
            raise ValueError(f"top_k must be within [1, n_items - L] = "
                             f"[1, {model.n_items - model.max_length}], got {top_k}")
        self.model = model
        self.top_k = top_k

    def forward(self, item_sequence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        session = self.model.session(item_sequence)
        scores = session @ self.model.embeddings.T  # [B, n_items + 1]
        # Every input index gets -inf, and the padding column too (a prepended 0: a full session
        # has no padding of its own).
        padding = torch.full_like(item_sequence[:, :1], PADDING)
        masked = scores.scatter(1, torch.cat([padding, item_sequence], dim=1), float("-inf"))
        next_scores, next_items = torch.topk(masked, self.top_k, dim=1)
        return next_items, next_scores, session


def export_onnx(model: SASRec, path: Path, top_k: int, *, opset: int = OPSET) -> Path:
    """Write the serving graph of ``model`` to ``path`` (ONNX, dynamic batch axis).

    Returns:
        ``path``, checked by ``onnx.checker``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names_in = [t.name for t in SEQUENCE.inputs]
    names_out = [t.name for t in SEQUENCE.outputs]
    assert names_in == [ITEM_SEQUENCE] and names_out == [NEXT_ITEMS, NEXT_SCORES,
                                                         SESSION_EMBEDDING], "contract changed"
    graph = ServingGraph(model, top_k).eval()
    example = torch.zeros((2, model.max_length), dtype=torch.int64)
    example[:, -3:] = torch.arange(1, 4)
    axes = {name: {0: BATCH_AXIS} for name in (*names_in, *names_out)}
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns about its own deprecation; the check below compares
        # the graph with torch instead.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        torch.onnx.export(
            graph, (example,), str(path), input_names=names_in, output_names=names_out,
            dynamic_axes=axes, opset_version=opset, do_constant_folding=True,
            dynamo=False,  # as the ranker: the TorchScript exporter needs no onnxscript
        )
    onnx.checker.check_model(str(path))
    return path


def run_onnx(path: Path, item_sequence: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's outputs on ``item_sequence`` with ONNX Runtime (CPU), by output name."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {ITEM_SEQUENCE: np.ascontiguousarray(item_sequence, np.int64)})
    return {o.name: v for o, v in zip(session.get_outputs(), outputs, strict=True)}


@dataclass(frozen=True)
class ExportCheck:
    """ONNX Runtime against torch on the same sequences.

    Attributes:
        max_abs_diff: Largest absolute difference over the session embeddings, the top-K scores
            and, for each item ONNX Runtime returned, its torch score against the ONNX score (so
            a swap of two nearly tied items is not a failure, a wrong item is).
        same_items: Share of ``next_items`` entries equal in both (ties may reorder a few).
        items_valid: Every returned item is new: not the padding, not in its input row.
    """

    max_abs_diff: float
    same_items: float
    items_valid: bool


def check_export(model: SASRec, path: Path, item_sequence: np.ndarray) -> ExportCheck:
    """Compare the exported graph at ``path`` with ``model`` on ``item_sequence`` [B, L]."""
    onnx_out = run_onnx(path, item_sequence)
    graph = ServingGraph(model, onnx_out[NEXT_ITEMS].shape[1]).eval()
    with torch.inference_mode():
        inputs = torch.from_numpy(np.ascontiguousarray(item_sequence, np.int64))
        items, scores, session = (t.numpy() for t in graph(inputs))
        full = model.scores(inputs).numpy()
    onnx_items = onnx_out[NEXT_ITEMS]
    rescored = np.take_along_axis(full, onnx_items, axis=1)
    diff = max(
        float(np.abs(onnx_out[SESSION_EMBEDDING] - session).max()),
        float(np.abs(onnx_out[NEXT_SCORES] - scores).max()),
        float(np.abs(onnx_out[NEXT_SCORES] - rescored).max()),
    )
    valid = bool((onnx_items != PADDING).all()) and not any(
        np.isin(onnx_items[b], item_sequence[b]).any() for b in range(item_sequence.shape[0]))
    return ExportCheck(diff, float((onnx_items == items).mean()), valid)
