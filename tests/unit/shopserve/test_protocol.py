"""The v2 contract and the numpy <-> v2 codec."""

import numpy as np
import pytest

from shopserve.errors import InvalidInput
from shopserve.protocol import (
    CONTRACTS,
    NUMPY_TO_V2,
    RANKER,
    RECALL,
    SEARCH,
    TOP_K,
    V2_TO_NUMPY,
    check_tensor,
    deserialize_bytes,
    from_json_tensor,
    from_raw,
    parameter,
    serialize_bytes,
    to_json_tensor,
    to_raw,
    v2_datatype,
)

ARRAYS = [
    np.array([1, -2, 3], dtype=np.int64),
    np.array([[1.5, 2.25], [0.0, -1.0]], dtype=np.float32),
    np.array([True, False]),
    np.arange(6, dtype=np.int32).reshape(2, 3),
    np.array([3.0], dtype=np.float64),
]


def test_datatype_tables_are_inverse():
    assert {v: k for k, v in NUMPY_TO_V2.items()} == dict(V2_TO_NUMPY)


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: str(a.dtype))
def test_json_round_trip(array):
    tensor = to_json_tensor("x", array)
    back = from_json_tensor(tensor)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: str(a.dtype))
def test_raw_round_trip(array):
    back = from_raw(to_raw(array), v2_datatype(array), array.shape)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_bytes_round_trip_in_both_forms():
    texts = np.array(["red shoes", "", "Café 👟"], dtype=object)
    raw = serialize_bytes(texts)
    assert raw[:4] == (9).to_bytes(4, "little")
    assert deserialize_bytes(raw).tolist() == [t.encode() for t in texts]
    tensor = to_json_tensor("query", texts)
    assert tensor["datatype"] == "BYTES" and tensor["data"][2] == "Café 👟"
    assert from_json_tensor(tensor).tolist() == [t.encode() for t in texts]


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"name": "user_id", "datatype": "INT64", "shape": [2], "data": [1]}, "do not fill"),
        ({"name": "user_id", "datatype": "INT64", "shape": [1], "data": ["a"]}, "INT64 numbers"),
        ({"name": "user_id", "datatype": "INT64", "shape": [1], "data": [1.5]}, "INT64 numbers"),
        ({"name": "user_id", "datatype": "INT64", "shape": [1], "data": [True]}, "INT64 numbers"),
        ({"name": "user_id", "datatype": "INT8", "shape": [1], "data": [1000]}, "out of range"),
        ({"name": "user_id", "datatype": "INT128", "shape": [1], "data": [1]}, "unknown datatype"),
        ({"name": "user_id", "datatype": "INT64", "shape": [-1], "data": [1]}, "shape"),
        ({"name": "user_id", "datatype": "INT64", "data": [1]}, "missing 'shape'"),
        ({"name": "query", "datatype": "BYTES", "shape": [1], "data": [3]}, "strings"),
    ],
)
def test_bad_json_tensors_name_the_input(tensor, message):
    with pytest.raises(InvalidInput, match=message) as info:
        from_json_tensor(tensor)
    assert tensor["name"] in str(info.value)


@pytest.mark.parametrize(
    ("buffer", "datatype", "shape"),
    [
        (b"\x01\x00", "INT64", [1]),
        (b"\x05\x00\x00\x00ab", "BYTES", [1]),
        (b"\x01\x00\x00\x00a", "BYTES", [2]),
        (b"\x01\x00", "BYTES", [1]),
    ],
)
def test_bad_raw_buffers(buffer, datatype, shape):
    with pytest.raises(InvalidInput):
        from_raw(buffer, datatype, shape, "user_id")


@pytest.mark.parametrize(
    ("datatype", "shape", "ok"),
    [("INT64", [3], True), ("INT64", [0], True), ("INT32", [3], False), ("INT64", [1, 3], False)],
)
def test_check_tensor_against_contract(datatype, shape, ok):
    spec = RECALL.input("user_id")
    if ok:
        check_tensor(spec, datatype, shape)
    else:
        with pytest.raises(InvalidInput, match="user_id"):
            check_tensor(spec, datatype, shape)


@pytest.mark.parametrize(
    ("params", "kind", "low", "high", "expected"),
    [
        (None, int, 1, 10, 5),
        ({TOP_K: 3}, int, 1, 10, 3),
        ({TOP_K: "7"}, int, 1, 10, 7),
        ({TOP_K: "true"}, bool, None, None, True),
        ({TOP_K: 2}, float, 0, 10, 2.0),
    ],
)
def test_parameter_reads_and_coerces(params, kind, low, high, expected):
    assert parameter(params, TOP_K, kind, 5, low, high) == expected


@pytest.mark.parametrize(
    ("value", "kind"),
    [(0, int), (11, int), ("x", int), (1.5, int), (True, int), (3, bool), (1, str), ("a", float)],
)
def test_parameter_errors_name_the_parameter(value, kind):
    with pytest.raises(InvalidInput, match=TOP_K):
        parameter({TOP_K: value}, TOP_K, kind, 5, 1, 10)


def test_contracts_are_registered_by_name():
    assert set(CONTRACTS) == {"search", "mf-recall", "bert-ranker", "seq-recommender",
                              "query-encoder"}
    assert [t.name for t in RANKER.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert SEARCH.output("titles").datatype == "BYTES"
