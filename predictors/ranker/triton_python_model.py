"""Triton Python-backend model ``bert-ranker``: runs the bundle's ``model.onnx`` with ONNX Runtime.

Copied into the local model repository as ``bert-ranker/1/model.py`` (the ``tritonserver`` in
``nvidia-pytriton`` has no ONNX Runtime backend). It runs inside Triton's Python stub, so it imports
only numpy, onnxruntime and ``triton_python_backend_utils``, never the shopserve package: tensor
names, the max sequence length, the vocabulary size and the thread count all come from the
``config.pbtxt`` Triton hands over, which is the source of truth.

A bad request (inconsistent shapes, an empty batch, a sequence longer than the model allows, ids
outside the vocabulary) gets its own ``INVALID_ARG`` error response; the other requests of the same
dynamic batch are still answered, and the server stays up.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class RequestError(ValueError):
    """A request that cannot be scored; the message is sent back to the client."""


class TritonPythonModel:
    """Triton's Python-backend entry points: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: dict[str, Any]) -> None:
        """Load ``model.onnx`` beside this file with the options ``config.pbtxt`` names."""
        config = json.loads(args["model_config"])
        self.input_names = [t["name"] for t in config["input"]]
        self.output_name = config["output"][0]["name"]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.max_length = int(params["max_sequence_length"])
        self.vocab_size = int(params.get("vocab_size", "0")) or None
        self.max_batch_size = int(config.get("max_batch_size", 0))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_thread_count", "2"))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        path = Path(args["model_repository"]) / str(args["model_version"]) / "model.onnx"
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )

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
        shape = arrays[0].shape
        for name, array in zip(self.input_names, arrays, strict=True):
            if array.shape != shape:
                raise RequestError(
                    f"input '{name}': shape {list(array.shape)} differs from "
                    f"'{self.input_names[0]}' shape {list(shape)}"
                )
        if shape[0] == 0 or shape[1] == 0:
            raise RequestError(f"empty batch: shape {list(shape)}")
        if shape[1] > self.max_length:
            raise RequestError(
                f"sequence length {shape[1]} exceeds the model's maximum {self.max_length}"
            )
        ids, mask, types = arrays
        if ids.min() < 0 or (self.vocab_size and ids.max() >= self.vocab_size):
            raise RequestError(f"input '{self.input_names[0]}': token id outside the vocabulary")
        for name, array in ((self.input_names[1], mask), (self.input_names[2], types)):
            if array.min() < 0 or array.max() > 1:
                raise RequestError(f"input '{name}': values must be 0 or 1")
        return arrays

    def _run(self, arrays: list[np.ndarray]) -> np.ndarray:
        feeds = dict(zip(self.input_names, arrays, strict=True))
        return self.session.run([self.output_name], feeds)[0].astype(np.float32, copy=False)

    def execute(self, requests: list[Any]) -> list[Any]:
        """Score a dynamic batch: one ONNX Runtime call per sequence length, errors per request."""
        responses: list[Any] = [None] * len(requests)
        groups: dict[int, list[tuple[int, list[np.ndarray]]]] = defaultdict(list)
        for i, request in enumerate(requests):
            try:
                arrays = self._read(request)
            except RequestError as exc:
                responses[i] = _error(str(exc))
                continue
            groups[arrays[0].shape[1]].append((i, arrays))
        for members in groups.values():
            # Requests of one length are concatenated so the batcher's work pays off: one
            # session call scores them all, then the rows are handed back per request.
            try:
                scores = self._run(
                    [np.concatenate([a[k] for _, a in members]) for k in range(3)]
                )
                offset = 0
                for i, arrays in members:
                    n = arrays[0].shape[0]
                    responses[i] = _scores(self.output_name, scores[offset : offset + n])
                    offset += n
            except Exception:  # noqa: BLE001 - isolate the failing request, answer the rest
                for i, arrays in members:
                    try:
                        responses[i] = _scores(self.output_name, self._run(arrays))
                    except Exception as exc:  # noqa: BLE001 - one request's failure, not the batch's
                        responses[i] = _error(f"inference failed: {exc}", internal=True)
        return responses

    def finalize(self) -> None:
        """Release the session."""
        self.session = None


def _scores(name: str, scores: np.ndarray) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, scores.reshape(-1, 1))])


def _error(message: str, internal: bool = False) -> Any:
    code = pb_utils.TritonError.INTERNAL if internal else pb_utils.TritonError.INVALID_ARG
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
