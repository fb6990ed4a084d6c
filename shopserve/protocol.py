"""The v2 (Open Inference Protocol) contract of shopserve, defined once.

Model names, tensor names, datatypes and shapes of every served model live here; servers, clients,
tests, charts and load tests import them instead of spelling them again. The numpy <-> v2 codec
covers both wire forms: JSON tensors (REST) and raw little-endian buffers (gRPC
``raw_input_contents`` and the REST binary extension), BYTES included.

This module imports neither kserve nor tritonclient (see DESIGN.md: the two cannot share a process).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shopserve.errors import InvalidInput

# --------------------------------------------------------------------------------------------------
# Datatypes: one table, the inverse derived.
# --------------------------------------------------------------------------------------------------

V2_TO_NUMPY: Mapping[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
NUMPY_TO_V2: Mapping[np.dtype, str] = {v: k for k, v in V2_TO_NUMPY.items()}

_INTEGER_V2 = frozenset(k for k, v in V2_TO_NUMPY.items() if v.kind in "iu")
_FLOAT_V2 = frozenset(k for k, v in V2_TO_NUMPY.items() if v.kind == "f")


def v2_datatype(array: np.ndarray) -> str:
    """The v2 datatype name of a numpy array (``S``/``U``/object arrays are BYTES)."""
    if array.dtype.kind in "SUO":
        return "BYTES"
    try:
        return NUMPY_TO_V2[array.dtype]
    except KeyError:
        raise TypeError(f"numpy dtype {array.dtype} has no v2 datatype") from None


# --------------------------------------------------------------------------------------------------
# The contract.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor of a served model.

    Attributes:
        name: Tensor name on the wire.
        datatype: v2 datatype name (``INT64``, ``FP32``, ``BYTES``, ...).
        shape: Dims; ``-1`` is variable (the first dim is the batch).
        optional: For inputs, whether the request may leave it out; for outputs, whether the
            response carries it only when asked (``explanations`` with ``explain``).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False

    def metadata(self) -> dict[str, Any]:
        """The v2 model-metadata entry of this tensor."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelContract:
    """Name, inputs, outputs and request parameters of one served model."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: Mapping[str, type] = field(default_factory=dict)

    def input(self, name: str) -> TensorSpec:
        """The input spec called ``name``."""
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        """The output spec called ``name``."""
        return next(t for t in self.outputs if t.name == name)


# Model names.
SEARCH_MODEL = "search"
RECALL_MODEL = "mf-recall"
RANKER_MODEL = "bert-ranker"
SEQUENCE_MODEL = "seq-recommender"
QUERY_ENCODER_MODEL = "query-encoder"

# Tensor names.
QUERY = "query"
USER_ID = "user_id"
ITEM_ID = "item_id"
#: search: the shopper's latest interactions in this session (catalog item ids, newest last,
#: padded with -1).
RECENT_ITEMS = "recent_items"
#: seq-recommender: the same history as the sequence model's item indices (1..n_items, newest
#: last, left-padded with 0 to the model's fixed length).
ITEM_SEQUENCE = "item_sequence"
#: seq-recommender: the top-K next-item indices (items of the input sequence and padding excluded),
#: their scores, and the session vector (the model's last hidden state: a candidate item's score is
#: its dot product with the item's embedding, ``item_embeddings.npy`` of the bundle's component).
NEXT_ITEMS = "next_items"
NEXT_SCORES = "next_scores"
SESSION_EMBEDDING = "session_embedding"
#: query-encoder: the bi-encoder's embedding of each query (mean-pooled, L2-normalised), searched
#: against the item embeddings of the bundle's ``semantic`` component.
QUERY_EMBEDDING = "query_embedding"
ITEM_IDS = "item_ids"
SCORES = "scores"
TITLES = "titles"
#: search, with ``explain``: per result a JSON object of its weighted score terms (they sum to its
#: score) and the retrieval sources that found it.
EXPLANATIONS = "explanations"
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TOKEN_TYPE_IDS = "token_type_ids"
SCORE = "score"

# Request parameter names.
TOP_K = "top_k"
EXCLUDE_SEEN = "exclude_seen"
TOP_N = "top_n"
CATEGORY = "category"
MIN_PRICE = "min_price"
MAX_PRICE = "max_price"
EXCLUDE_PURCHASED = "exclude_purchased"
ALLOW_DEGRADED = "allow_degraded"
EXPLAIN = "explain"
# Response parameter names.
DEGRADED = "degraded"
DEGRADED_REASONS = "degraded_reasons"
STAGE_MS = "stage_ms"

ANONYMOUS_USER = -1

SEARCH = ModelContract(
    name=SEARCH_MODEL,
    inputs=(
        TensorSpec(QUERY, "BYTES", (-1,)),
        TensorSpec(USER_ID, "INT64", (-1,), optional=True),
        TensorSpec(RECENT_ITEMS, "INT64", (-1, -1), optional=True),
    ),
    outputs=(
        TensorSpec(ITEM_IDS, "INT64", (-1, -1)),
        TensorSpec(SCORES, "FP32", (-1, -1)),
        TensorSpec(TITLES, "BYTES", (-1, -1)),
        TensorSpec(EXPLANATIONS, "BYTES", (-1, -1), optional=True),
    ),
    parameters={TOP_N: int, CATEGORY: str, MIN_PRICE: float, MAX_PRICE: float,
                EXCLUDE_PURCHASED: bool, ALLOW_DEGRADED: bool, EXPLAIN: bool},
)

RECALL = ModelContract(
    name=RECALL_MODEL,
    # Exactly one of user_id (personalised) or item_id (similar items) is sent.
    inputs=(
        TensorSpec(USER_ID, "INT64", (-1,), optional=True),
        TensorSpec(ITEM_ID, "INT64", (-1,), optional=True),
    ),
    outputs=(
        TensorSpec(ITEM_IDS, "INT64", (-1, -1)),
        TensorSpec(SCORES, "FP32", (-1, -1)),
    ),
    parameters={TOP_K: int, EXCLUDE_SEEN: bool},
)

RANKER = ModelContract(
    name=RANKER_MODEL,
    inputs=(
        TensorSpec(INPUT_IDS, "INT64", (-1, -1)),
        TensorSpec(ATTENTION_MASK, "INT64", (-1, -1)),
        TensorSpec(TOKEN_TYPE_IDS, "INT64", (-1, -1)),
    ),
    outputs=(TensorSpec(SCORE, "FP32", (-1, 1)),),
)

SEQUENCE = ModelContract(
    name=SEQUENCE_MODEL,
    inputs=(TensorSpec(ITEM_SEQUENCE, "INT64", (-1, -1)),),
    outputs=(
        TensorSpec(NEXT_ITEMS, "INT64", (-1, -1)),
        TensorSpec(NEXT_SCORES, "FP32", (-1, -1)),
        TensorSpec(SESSION_EMBEDDING, "FP32", (-1, -1)),
    ),
)

QUERY_ENCODER = ModelContract(
    name=QUERY_ENCODER_MODEL,
    inputs=(
        TensorSpec(INPUT_IDS, "INT64", (-1, -1)),
        TensorSpec(ATTENTION_MASK, "INT64", (-1, -1)),
    ),
    outputs=(TensorSpec(QUERY_EMBEDDING, "FP32", (-1, -1)),),
)

CONTRACTS: Mapping[str, ModelContract] = {
    c.name: c for c in (SEARCH, RECALL, RANKER, SEQUENCE, QUERY_ENCODER)}


# --------------------------------------------------------------------------------------------------
# Codec: numpy <-> v2 JSON tensors and raw buffers.
# --------------------------------------------------------------------------------------------------


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.bytes_ | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"BYTES element of type {type(value).__name__} is neither bytes nor str")


def serialize_bytes(array: np.ndarray) -> bytes:
    """Raw v2 BYTES buffer: each element as a 4-byte little-endian length, then its bytes."""
    parts: list[bytes] = []
    for value in array.reshape(-1):
        raw = _as_bytes(value)
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def deserialize_bytes(buffer: bytes) -> np.ndarray:
    """Inverse of :func:`serialize_bytes`: a flat object array of ``bytes``."""
    out: list[bytes] = []
    offset, end = 0, len(buffer)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInput("truncated BYTES tensor: length prefix cut off")
        (length,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInput("truncated BYTES tensor: element shorter than its length prefix")
        out.append(bytes(buffer[offset : offset + length]))
        offset += length
    array = np.empty(len(out), dtype=object)
    array[:] = out
    return array


def to_raw(array: np.ndarray) -> bytes:
    """Raw v2 buffer of ``array`` (little-endian, row-major)."""
    if v2_datatype(array) == "BYTES":
        return serialize_bytes(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def from_raw(buffer: bytes, datatype: str, shape: Sequence[int], name: str = "tensor") -> np.ndarray:
    """Decode a raw v2 buffer into a numpy array of ``shape``.

    Raises:
        InvalidInput: unknown datatype, or a buffer whose size does not match ``shape``.
    """
    dtype = _numpy_dtype(datatype, name)
    count = int(np.prod(shape)) if len(shape) else 1
    if datatype == "BYTES":
        array = deserialize_bytes(buffer)
    else:
        if len(buffer) != count * dtype.itemsize:
            raise InvalidInput(
                f"input '{name}': {len(buffer)} bytes of {datatype} do not fill shape {list(shape)}"
            )
        array = np.frombuffer(buffer, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
    if array.size != count:
        raise InvalidInput(f"input '{name}': {array.size} elements do not fill shape {list(shape)}")
    return array.reshape(shape)


def to_json_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    """A v2 JSON tensor (``name``, ``shape``, ``datatype``, flat ``data``); BYTES as UTF-8 text."""
    datatype = v2_datatype(array)
    flat = array.reshape(-1)
    if datatype == "BYTES":
        data: list[Any] = [
            _as_bytes(v).decode("utf-8", errors="replace") for v in flat
        ]
    else:
        data = flat.tolist()
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}


def from_json_tensor(tensor: Mapping[str, Any]) -> np.ndarray:
    """Decode a v2 JSON tensor (flat or nested ``data``) into numpy.

    Raises:
        InvalidInput: missing fields, unknown datatype, values of the wrong type, or a shape
            that the data does not fill. The message names the tensor.
    """
    name = str(tensor.get("name", "tensor"))
    for key in ("datatype", "shape", "data"):
        if key not in tensor:
            raise InvalidInput(f"input '{name}': missing '{key}'")
    datatype = str(tensor["datatype"])
    shape = _check_shape(tensor["shape"], name)
    dtype = _numpy_dtype(datatype, name)
    flat = list(_flatten(tensor["data"]))
    if datatype == "BYTES":
        if not all(isinstance(v, str | bytes) for v in flat):
            raise InvalidInput(f"input '{name}': BYTES data must be strings")
        array = np.empty(len(flat), dtype=object)
        array[:] = [_as_bytes(v) for v in flat]
    else:
        array = _numeric_array(flat, datatype, dtype, name)
    count = int(np.prod(shape)) if shape else 1
    if array.size != count:
        raise InvalidInput(f"input '{name}': {array.size} values do not fill shape {list(shape)}")
    return array.reshape(shape)


def _numeric_array(values: list[Any], datatype: str, dtype: np.dtype, name: str) -> np.ndarray:
    if datatype == "BOOL":
        ok = all(isinstance(v, bool) for v in values)
    elif datatype in _INTEGER_V2:
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    else:
        ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if not ok:
        raise InvalidInput(f"input '{name}': data must be {datatype} numbers")
    if datatype in _INTEGER_V2 and values:
        info = np.iinfo(dtype)
        if min(values) < info.min or max(values) > info.max:
            raise InvalidInput(f"input '{name}': a value is out of range for {datatype}")
    return np.asarray(values, dtype=dtype)


def _flatten(data: Any) -> Iterable[Any]:
    if isinstance(data, list | tuple):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def _check_shape(shape: Any, name: str) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(f"input '{name}': shape must be a list of non-negative integers")
    return tuple(shape)


def _numpy_dtype(datatype: str, name: str) -> np.dtype:
    try:
        return V2_TO_NUMPY[datatype]
    except KeyError:
        raise InvalidInput(f"input '{name}': unknown datatype '{datatype}'") from None


# --------------------------------------------------------------------------------------------------
# Validation against the contract.
# --------------------------------------------------------------------------------------------------


def check_tensor(spec: TensorSpec, datatype: str, shape: Sequence[int]) -> None:
    """Check a received tensor's datatype and rank/dims against ``spec``.

    Raises:
        InvalidInput: naming the tensor, when the datatype or a fixed dim differs.
    """
    if datatype != spec.datatype:
        raise InvalidInput(
            f"input '{spec.name}': datatype {datatype}, expected {spec.datatype}"
        )
    if len(shape) != len(spec.shape) or any(
        want != -1 and got != want for got, want in zip(shape, spec.shape, strict=True)
    ):
        raise InvalidInput(
            f"input '{spec.name}': shape {list(shape)}, expected {list(spec.shape)}"
        )


def parameter(
    params: Mapping[str, Any] | None,
    name: str,
    kind: type,
    default: Any,
    low: float | None = None,
    high: float | None = None,
) -> Any:
    """Read a typed request parameter, with a 400 naming it when it has the wrong type or range.

    Integers are accepted for floats; ``"true"``/``"false"`` strings for booleans (v2 gRPC clients
    often send parameters as strings).
    """
    if not params or name not in params or params[name] is None:
        return default
    value = params[name]
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise InvalidInput(f"parameter '{name}' must be a boolean, got {value!r}")
    elif kind is int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"parameter '{name}' must be an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise InvalidInput(f"parameter '{name}' must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"parameter '{name}' must be a number, got {value!r}")
        value = float(value)
    elif kind is str:
        if not isinstance(value, str):
            raise InvalidInput(f"parameter '{name}' must be a string, got {value!r}")
    if low is not None and value < low or high is not None and value > high:
        raise InvalidInput(f"parameter '{name}' must be in [{low}, {high}], got {value!r}")
    return value
