"""Triton Python-backend model ``bert-ranker``: runs the bundle's ``model.onnx`` with ONNX Runtime.

Copied into the local model repository as ``bert-ranker/1/model.py`` (the ``tritonserver`` in
``nvidia-pytriton`` has no ONNX Runtime backend). It runs inside Triton's Python stub, so it imports
only numpy, onnxruntime, ``triton_python_backend_utils`` and ``bert_ranker_batch`` (the checks and
grouped scoring it shares with the TorchServe handler, copied beside it), never the shopserve
package: tensor
names, the max sequence length, the vocabulary size and the thread count all come from the
``config.pbtxt`` Triton hands over, which is the source of truth.

Memory stays flat under traffic: the session allocates each tensor from ONNX Runtime's CPU arena
without per-shape memory patterns (a pattern per (batch, length) shape grew the arena with every
new shape seen), and the largest batch the configuration admits (``max_batch_size`` x
``max_sequence_length``) is scored once at load, so the arena has its full size before the first
request (see ``bench/results/soak.md`` for the measurements behind this choice).

A bad request (inconsistent shapes, an empty batch, a sequence longer than the model allows, ids
outside the vocabulary) gets its own ``INVALID_ARG`` error response; the other requests of the same
dynamic batch are still answered, and the server stays up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

try:  # beside this file in the model repository (bert-ranker/1/)
    from bert_ranker_batch import check_arrays, largest_batch, score_by_length
except ImportError:  # imported from the source tree
    from predictors.ranker.bert_ranker_batch import check_arrays, largest_batch, score_by_length


class RequestError(ValueError):
    """A request that cannot be scored; the message is sent back to the client."""


def session_options(threads: int) -> ort.SessionOptions:
    """ONNX Runtime options of the ranker's session: ``threads`` intra-op threads, one call at a
    time, full graph optimisation, memory that plateaus.

    ``enable_mem_pattern`` is off: with it, ONNX Runtime plans one block per input shape and the
    arena kept growing as new (batch, length) shapes came (a soak saw +36% in 10 minutes, and a
    replay of mixed shapes grew a warmed session from 307 to 376 MB). Without it, tensors come from
    the arena one by one and reuse its chunks, so after one largest batch the arena stops growing;
    latency measured the same within noise. The arena itself stays on: without it, resident memory
    swung by +-30% between batches and large batches were slower.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = False
    options.log_severity_level = 3
    return options


class TritonPythonModel:
    """Triton's Python-backend entry points: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: dict[str, Any]) -> None:
        """Load ``model.onnx`` beside this file with the options ``config.pbtxt`` names, and score
        the largest batch it admits once (:func:`largest_batch`), so the session's memory is at
        its full size before traffic."""
        config = json.loads(args["model_config"])
        self.input_names = [t["name"] for t in config["input"]]
        self.output_name = config["output"][0]["name"]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.max_length = int(params["max_sequence_length"])
        self.vocab_size = int(params.get("vocab_size", "0")) or None
        self.max_batch_size = int(config.get("max_batch_size", 0))
        options = session_options(int(params.get("intra_op_thread_count", "2")))
        path = Path(args["model_repository"]) / str(args["model_version"]) / "model.onnx"
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._run(largest_batch(self.max_batch_size, self.max_length))

    def _read(self, request: Any) -> list[np.ndarray]:
        arrays = []
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise RequestError(f"input '{name}' is missing")
            array = tensor.as_numpy()
            if array.dtype != np.int64:
                raise RequestError(f"input '{name}': datatype {array.dtype}, expected INT64")
            if array.ndim != 2:
                raise RequestError(f"input '{name}': shape {list(array.shape)}, expected [-1, -1]")
            arrays.append(array)
        check_arrays(self.input_names, arrays, self.max_length, self.vocab_size)
        return arrays

    def _run(self, arrays: list[np.ndarray]) -> np.ndarray:
        feeds = dict(zip(self.input_names, arrays, strict=True))
        return self.session.run([self.output_name], feeds)[0].astype(np.float32, copy=False)

    def execute(self, requests: list[Any]) -> list[Any]:
        """Score a dynamic batch: one ONNX Runtime call per sequence length, errors per request."""
        responses: list[Any] = [None] * len(requests)
        batch = []
        for i, request in enumerate(requests):
            try:
                batch.append((i, self._read(request)))
            except ValueError as exc:  # RequestError and check_arrays' refusals
                responses[i] = _error(str(exc))
        for i, scores in score_by_length(batch, self._run):
            responses[i] = (_error(f"inference failed: {scores}", internal=True)
                            if isinstance(scores, Exception) else _scores(self.output_name, scores))
        return responses

    def finalize(self) -> None:
        """Release the session."""
        self.session = None


def _scores(name: str, scores: np.ndarray) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, scores.reshape(-1, 1))])


def _error(message: str, internal: bool = False) -> Any:
    code = pb_utils.TritonError.INTERNAL if internal else pb_utils.TritonError.INVALID_ARG
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
