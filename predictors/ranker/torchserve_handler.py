"""TorchServe handler of ``bert-ranker``: the bundle's ONNX graph behind TorchServe, in v2 JSON.

Packaged into the model archive (``bert-ranker.mar``) beside ``model.onnx`` and ``serving.json``
(see :mod:`predictors.ranker.torchserve`). It runs inside TorchServe's Python worker, so it imports
only numpy, onnxruntime, TorchServe's own ``ts`` package and ``bert_ranker_batch`` (the checks and
grouped scoring it shares with Triton's Python model, archived beside it), never shopserve: tensor names,
datatypes, the max sequence length, the vocabulary size and the thread count come from
``serving.json``, which the packaging step derives from the bundle's ``config.pbtxt`` (the same
source of truth the Triton model reads). TorchServe wants exactly one class in a handler module,
hence no exception class of its own here.

Why the handler speaks the KServe v2 envelope itself: TorchServe's stock ``kservev2`` envelope
(selected by ``service_envelope=kservev2``, or by KServe's runtime through ``TS_SERVICE_ENVELOPE``)
decodes only the first request of a batch and answers one response for the whole batch, so with
``batchSize`` > 1 two concurrent requests fail together with "number of batch response mismatched"
(pytorch/serve#2158, fix #3341 never merged; TorchServe is in limited maintenance). It also names
each output after the input at the same position (``input_ids`` instead of ``score``) and flattens
its shape. :meth:`BertRankerHandler.initialize` therefore turns that envelope's parse and format
steps into pass-throughs inside this worker, and :meth:`BertRankerHandler.handle` decodes and
encodes every request of the batch in v2 JSON: ``score`` FP32 ``[n, 1]``, the request ``id``
echoed, a bad request answered with its own 400 and ``{"error": ...}`` while the rest of the batch
is scored and the worker stays up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

try:  # beside this file in the model archive (TorchServe puts the model folder on sys.path)
    from bert_ranker_batch import check_arrays, score_by_length
except ImportError:  # imported from the source tree
    from predictors.ranker.bert_ranker_batch import check_arrays, score_by_length

SERVING_FILE = "serving.json"
"""Serving parameters in the archive (written at package time from the bundle's config.pbtxt)."""
JSON = "application/json"


def _neutralise_stock_envelope() -> None:
    """Make the stock ``kservev2`` envelope hand raw requests over and return responses unchanged.

    The envelope object wraps this handler before ``initialize`` runs and looks its ``parse_input``
    and ``format_output`` up on the class at every call, so replacing them here is enough. Only
    this worker process (one model) is affected.
    """
    try:
        from ts.torch_handler.request_envelope import kservev2
    except ImportError:  # not inside TorchServe (unit use): nothing wraps the handler
        return
    kservev2.KServev2Envelope.parse_input = lambda self, data: data  # type: ignore[method-assign]
    kservev2.KServev2Envelope.format_output = lambda self, data: data  # type: ignore[method-assign]


class BertRankerHandler:
    """Scores batches of v2 requests carrying ``input_ids``, ``attention_mask``, ``token_type_ids``."""

    def __init__(self) -> None:
        self.session: ort.InferenceSession | None = None
        self.initialized = False

    def initialize(self, context: Any) -> None:
        """Load ``serving.json`` and the ONNX graph from the unpacked archive."""
        model_dir = Path(context.system_properties["model_dir"])
        spec = json.loads((model_dir / SERVING_FILE).read_text())
        self.model_name: str = spec["model_name"]
        self.model_version: str = str(spec.get("model_version", "1"))
        self.input_names: list[str] = [t["name"] for t in spec["inputs"]]
        self.input_datatype: dict[str, str] = {t["name"]: t["datatype"] for t in spec["inputs"]}
        self.output_name: str = spec["outputs"][0]["name"]
        self.output_datatype: str = spec["outputs"][0]["datatype"]
        self.max_length = int(spec["max_sequence_length"])
        self.vocab_size = int(spec.get("vocab_size") or 0) or None
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(spec.get("threads", 2))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(model_dir / spec["model_file"]), sess_options=options, providers=["CPUExecutionProvider"]
        )
        _neutralise_stock_envelope()
        self.initialized = True

    # -- decoding ---------------------------------------------------------------------------------

    def _body(self, row: dict[str, Any]) -> dict[str, Any]:
        body = row.get("data") if row.get("data") is not None else row.get("body")
        # TorchServe decodes an application/json body itself; other content types (tritonclient
        # sends none) arrive as bytes, text/* as str.
        if isinstance(body, (bytes, bytearray, str)):
            try:
                body = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise ValueError(
                    "request body is not v2 JSON (binary tensor data is not supported: "
                    "send JSON tensors)"
                ) from None
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
            raise ValueError("request body must be a v2 JSON object with an 'inputs' list")
        return body

    def _tensor(self, entry: Any) -> tuple[str, np.ndarray]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError("each input needs a 'name'")
        name = entry["name"]
        if name not in self.input_datatype:
            raise ValueError(f"unknown input '{name}'; expected {self.input_names}")
        if entry.get("datatype") != self.input_datatype[name]:
            raise ValueError(
                f"input '{name}': datatype {entry.get('datatype')}, expected {self.input_datatype[name]}"
            )
        shape = entry.get("shape")
        if not isinstance(shape, list) or len(shape) != 2 or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise ValueError(f"input '{name}': shape {shape}, expected [-1, -1]")
        try:
            array = np.asarray(entry.get("data"))
        except ValueError:
            raise ValueError(f"input '{name}': ragged data") from None
        if array.size and array.dtype.kind not in "iu":
            raise ValueError(f"input '{name}': data must be integers, got {array.dtype.kind!r} values")
        if array.size != shape[0] * shape[1]:
            raise ValueError(f"input '{name}': {array.size} values do not fill shape {shape}")
        try:
            return name, array.astype(np.int64, copy=False).reshape(shape)
        except OverflowError:
            raise ValueError(f"input '{name}': value outside INT64") from None

    def _read(self, row: dict[str, Any]) -> tuple[str | None, list[np.ndarray]]:
        body = self._body(row)
        tensors: dict[str, np.ndarray] = {}
        for entry in body["inputs"]:
            name, array = self._tensor(entry)
            if name in tensors:
                raise ValueError(f"input '{name}' is given twice")
            tensors[name] = array
        missing = [n for n in self.input_names if n not in tensors]
        if missing:
            raise ValueError(f"input '{missing[0]}' is missing")
        arrays = [tensors[n] for n in self.input_names]
        check_arrays(self.input_names, arrays, self.max_length, self.vocab_size)
        request_id = body.get("id")
        return (request_id if isinstance(request_id, str) else None), arrays

    # -- encoding ---------------------------------------------------------------------------------

    def _answer(self, request_id: str | None, scores: np.ndarray) -> str:
        response: dict[str, Any] = {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "outputs": [{
                "name": self.output_name, "datatype": self.output_datatype,
                "shape": [int(scores.shape[0]), 1], "data": scores.reshape(-1).tolist(),
            }],
        }  # fmt: skip
        if request_id:
            response["id"] = request_id
        return json.dumps(response, separators=(",", ":"))

    def _run(self, arrays: list[np.ndarray]) -> np.ndarray:
        assert self.session is not None
        feeds = dict(zip(self.input_names, arrays, strict=True))
        return self.session.run([self.output_name], feeds)[0].astype(np.float32, copy=False)

    def handle(self, data: list[dict[str, Any]] | None, context: Any) -> list[str]:
        """Score one TorchServe batch: one ONNX Runtime call per sequence length, errors per request.

        Args:
            data: TorchServe's requests, each with the v2 JSON body under ``body`` (or ``data``).
            context: TorchServe's context, used to set each response's status and content type.

        Returns:
            One v2 JSON response per request, in order (an error is ``{"error": "..."}``).
        """
        if data is None:  # TorchServe's warm-up call of a function entry point; nothing to do
            return []
        responses: list[str] = [""] * len(data)

        def fail(i: int, code: int, message: str) -> None:
            responses[i] = json.dumps({"error": message})
            context.set_response_status(code, message, i)

        batch = []
        for i, row in enumerate(data):
            context.set_response_content_type(i, JSON)
            try:
                request_id, arrays = self._read(row)
            except ValueError as exc:
                fail(i, 400, str(exc))
                continue
            batch.append(((i, request_id), arrays))
        for (i, request_id), scores in score_by_length(batch, self._run):
            if isinstance(scores, Exception):
                fail(i, 500, f"inference failed: {scores}")
            else:
                responses[i] = self._answer(request_id, scores)
        return responses
