"""Triton Python-backend model ``query-encoder``: runs the bundle's ``model.onnx`` with ONNX Runtime.

Copied into the local model repository as ``query-encoder/1/model.py`` (the ``tritonserver`` in
``nvidia-pytriton`` has no ONNX Runtime backend), as ``triton_python_model.py`` is for
``bert-ranker``, with ``bert_ranker_batch.py`` beside it. It runs inside Triton's Python stub, so
it imports only numpy, onnxruntime, ``triton_python_backend_utils`` and ``bert_ranker_batch``,
never the shopserve package: tensor names and datatypes, the longest query
(``max_query_length``), the vocabulary size and the thread count come from the ``config.pbtxt``
Triton hands over, the source of truth.

Each request is checked on its own and a bad one gets its own ``INVALID_ARG`` response naming the
input: a missing input, a datatype other than INT64, a rank other than 2, shapes that differ
between the two inputs, an empty batch, a query longer than ``max_query_length``, a token id
outside the vocabulary, a mask value other than 0 or 1, a row without any unmasked token. The good
requests of the same dynamic batch are run one ONNX Runtime call per length
(``bert_ranker_batch.score_by_length``, which answers each request alone when a grouped call
fails), and the server stays up.

Memory stays flat as the ranker's does (``triton_python_model.session_options``): no per-shape
memory patterns, and the largest batch the configuration admits is run once at load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

try:  # beside this file in the model repository (query-encoder/1/)
    from bert_ranker_batch import score_by_length
except ImportError:  # imported from the source tree
    from predictors.ranker.bert_ranker_batch import score_by_length

#: numpy dtype -> v2 datatype name, for messages (the stub cannot import shopserve's table).
_V2 = {np.dtype(t): n for t, n in (
    (np.bool_, "BOOL"), (np.int8, "INT8"), (np.int16, "INT16"), (np.int32, "INT32"),
    (np.int64, "INT64"), (np.uint8, "UINT8"), (np.uint16, "UINT16"), (np.uint32, "UINT32"),
    (np.uint64, "UINT64"), (np.float16, "FP16"), (np.float32, "FP32"), (np.float64, "FP64"),
    (np.object_, "BYTES"))}


class RequestError(ValueError):
    """A request that cannot be answered; the message is sent back to the client."""


def check_query(names: list[str], arrays: list[np.ndarray], max_length: int,
                vocab_size: int) -> list[np.ndarray]:
    """One request's ``input_ids`` and ``attention_mask``, checked (see the module docstring).

    Raises:
        RequestError: what is wrong, naming the input.
    """
    for name, array in zip(names, arrays, strict=True):
        if array.dtype != np.int64:
            datatype = _V2.get(array.dtype, str(array.dtype))
            raise RequestError(f"input '{name}': datatype {datatype}, expected INT64")
        if array.ndim != 2:
            raise RequestError(f"input '{name}': shape {list(array.shape)}, expected [-1, -1]")
    ids, mask = arrays
    if mask.shape != ids.shape:
        raise RequestError(f"input '{names[1]}': shape {list(mask.shape)} differs from "
                           f"'{names[0]}' shape {list(ids.shape)}")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise RequestError(f"input '{names[0]}': empty, shape {list(ids.shape)}")
    if ids.shape[1] > max_length:
        raise RequestError(f"input '{names[0]}': {ids.shape[1]} tokens, the model takes at most "
                           f"{max_length} (truncate with the bundle's tokenizer.json)")
    if ids.min() < 0 or ids.max() >= vocab_size:
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise RequestError(f"input '{names[0]}': token id {bad} outside [0, {vocab_size})")
    if mask.min() < 0 or mask.max() > 1:
        raise RequestError(f"input '{names[1]}': values must be 0 or 1")
    if not mask.any(axis=1).all():
        raise RequestError(f"input '{names[1]}': a row has no unmasked token")
    return arrays


def session_options(threads: int) -> ort.SessionOptions:
    """``threads`` intra-op threads, one call at a time, full graph optimisation, memory that
    plateaus (no per-shape memory patterns; see ``triton_python_model.session_options``)."""
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
        """Load ``model.onnx`` beside this file with the options ``config.pbtxt`` names, and run
        the largest batch it admits once, so the session's memory is at its full size before
        traffic."""
        config = json.loads(args["model_config"])
        self.input_names = [t["name"] for t in config["input"]]
        self.output_name = config["output"][0]["name"]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.max_length = int(params["max_query_length"])
        self.vocab_size = int(params["vocab_size"])
        options = session_options(int(params.get("intra_op_thread_count", "1")))
        path = Path(args["model_repository"]) / str(args["model_version"]) / "model.onnx"
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        shape = (max(1, int(config.get("max_batch_size", 0))), self.max_length)
        self._run([np.zeros(shape, np.int64), np.ones(shape, np.int64)])

    def _read(self, request: Any) -> list[np.ndarray]:
        arrays = []
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise RequestError(f"input '{name}' is missing")
            arrays.append(tensor.as_numpy())
        return check_query(self.input_names, arrays, self.max_length, self.vocab_size)

    def _run(self, arrays: list[np.ndarray]) -> np.ndarray:
        feeds = {name: np.ascontiguousarray(array)
                 for name, array in zip(self.input_names, arrays, strict=True)}
        return self.session.run([self.output_name], feeds)[0].astype(np.float32, copy=False)

    def execute(self, requests: list[Any]) -> list[Any]:
        """Embed a dynamic batch: one ONNX Runtime call per query length, errors per request."""
        responses: list[Any] = [None] * len(requests)
        batch = []
        for i, request in enumerate(requests):
            try:
                batch.append((i, self._read(request)))
            except RequestError as exc:
                responses[i] = _error(str(exc))
        for i, vectors in score_by_length(batch, self._run):
            if isinstance(vectors, Exception):
                responses[i] = _error(f"inference failed: {vectors}", internal=True)
            else:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(self.output_name, np.ascontiguousarray(vectors))])
        return responses

    def finalize(self) -> None:
        """Release the session."""
        self.session = None


def _error(message: str, internal: bool = False) -> Any:
    code = pb_utils.TritonError.INTERNAL if internal else pb_utils.TritonError.INVALID_ARG
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
