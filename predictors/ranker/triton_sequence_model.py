"""Triton Python-backend model ``seq-recommender``: runs the bundle's ``model.onnx`` with ONNX Runtime.

Copied into the local model repository as ``seq-recommender/1/model.py`` (the ``tritonserver`` in
``nvidia-pytriton`` has no ONNX Runtime backend), as ``triton_python_model.py`` is for
``bert-ranker``. It runs inside Triton's Python stub, so it imports only numpy, onnxruntime and
``triton_python_backend_utils``, never the shopserve package: tensor names and datatypes, the input
length ``L`` (``sequence_length``), the item count (``n_items``) and the thread count come from the
``config.pbtxt`` Triton hands over, the source of truth.

Each request is checked on its own and a bad one gets its own ``INVALID_ARG`` response naming the
input: a missing input, a datatype other than INT64, a rank other than 2, an empty batch, a length
other than ``L``, an index outside ``[0, n_items]``. The good requests of the same dynamic batch
are stacked into one ONNX Runtime call (every row has length ``L``) and answered, and the server
stays up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

#: config.pbtxt data_type -> numpy dtype of the tensors this model reads and writes.
_NUMPY = {"TYPE_INT64": np.dtype(np.int64), "TYPE_FP32": np.dtype(np.float32)}
#: numpy dtype -> v2 datatype name, for messages (the stub cannot import shopserve's table).
_V2 = {np.dtype(t): n for t, n in (
    (np.bool_, "BOOL"), (np.int8, "INT8"), (np.int16, "INT16"), (np.int32, "INT32"),
    (np.int64, "INT64"), (np.uint8, "UINT8"), (np.uint16, "UINT16"), (np.uint32, "UINT32"),
    (np.uint64, "UINT64"), (np.float16, "FP16"), (np.float32, "FP32"), (np.float64, "FP64"),
    (np.object_, "BYTES"))}


class RequestError(ValueError):
    """A request that cannot be answered; the message is sent back to the client."""


def check_sequence(name: str, array: np.ndarray, length: int, n_items: int) -> np.ndarray:
    """One request's ``item_sequence``, checked: int64 ``[B, length]``, ``B >= 1``, every index
    within ``[0, n_items]`` (0 the padding).

    Raises:
        RequestError: what is wrong, naming the input.
    """
    if array.dtype != np.int64:
        datatype = _V2.get(array.dtype, str(array.dtype))
        raise RequestError(f"input '{name}': datatype {datatype}, expected INT64")
    if array.ndim != 2:
        raise RequestError(f"input '{name}': shape {list(array.shape)}, expected [-1, {length}]")
    if array.shape[0] == 0:
        raise RequestError(f"input '{name}': empty batch, shape {list(array.shape)}")
    if array.shape[1] != length:
        raise RequestError(f"input '{name}': length {array.shape[1]}, the model takes exactly "
                           f"{length} (left-pad with 0, newest item last)")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > n_items:
        bad = low if low < 0 else high
        raise RequestError(f"input '{name}': item index {bad} outside [0, {n_items}] "
                           "(0 is the padding)")
    return array


class TritonPythonModel:
    """Triton's Python-backend entry points: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: dict[str, Any]) -> None:
        """Load ``model.onnx`` beside this file with the options ``config.pbtxt`` names."""
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.outputs = [(t["name"], _NUMPY[t["data_type"]]) for t in config["output"]]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.length = int(params["sequence_length"])
        self.n_items = int(params["n_items"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_thread_count", "1"))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        path = Path(args["model_repository"]) / str(args["model_version"]) / "model.onnx"
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def _read(self, request: Any) -> np.ndarray:
        tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
        if tensor is None:
            raise RequestError(f"input '{self.input_name}' is missing")
        return check_sequence(self.input_name, tensor.as_numpy(), self.length, self.n_items)

    def execute(self, requests: list[Any]) -> list[Any]:
        """Answer a dynamic batch: one ONNX Runtime call for its good requests, errors per request."""
        responses: list[Any] = [None] * len(requests)
        good: list[tuple[int, np.ndarray]] = []
        for i, request in enumerate(requests):
            try:
                good.append((i, self._read(request)))
            except RequestError as exc:
                responses[i] = _error(str(exc))
        if not good:
            return responses
        stacked = np.concatenate([array for _, array in good]) if len(good) > 1 else good[0][1]
        try:
            results = self.session.run([name for name, _ in self.outputs],
                                       {self.input_name: np.ascontiguousarray(stacked)})
        except Exception as exc:  # noqa: BLE001 - the answer of every request of the batch
            for i, _ in good:
                responses[i] = _error(f"inference failed: {exc}", internal=True)
            return responses
        start = 0
        for i, array in good:
            stop = start + array.shape[0]
            responses[i] = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(name, np.ascontiguousarray(result[start:stop].astype(dtype, copy=False)))
                for (name, dtype), result in zip(self.outputs, results, strict=True)
            ])
            start = stop
        return responses

    def finalize(self) -> None:
        """Release the session."""
        self.session = None


def _error(message: str, internal: bool = False) -> Any:
    code = pb_utils.TritonError.INTERNAL if internal else pb_utils.TritonError.INVALID_ARG
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
