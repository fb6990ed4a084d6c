"""The real ``mf-recall`` server (KServe ModelServer) on loopback, spoken to over v2.

Clients: ``tritonclient.http``, ``tritonclient.grpc``, the raw gRPC stub (for malformed requests
the client library refuses to build) and plain HTTP JSON.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from shopserve.artifacts import load_npz
from shopserve.protocol import ITEM_ID, ITEM_IDS, RECALL, RECALL_MODEL, SCORES, USER_ID
from tests.servers import Server, free_port, start_server
from training.data.generator import GeneratorConfig, generate
from training.recall.build import RecallBuildConfig, build_recall
from training.recall.train import MFParams

pytestmark = pytest.mark.integration

TOP_K = 7


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dataset = generate(GeneratorConfig.tiny())
    out = tmp_path_factory.mktemp("bundle") / "recall"
    build_recall(
        dataset.events.log, out, "test-1",
        config=RecallBuildConfig(params=MFParams(factors=16, iterations=5), show_progress=False),
    )
    return out


@pytest.fixture(scope="module")
def server(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("logs") / "recall.log"
    http_port, grpc_port = free_port(), free_port()
    srv = start_server(
        "predictors.recall",
        {"RECALL_BUNDLE_DIR": str(bundle), "RECALL_TOP_K": str(TOP_K)},
        log, args=["--http_port", str(http_port), "--grpc_port", str(grpc_port)],
        http_port=http_port, grpc_port=grpc_port,
    )
    yield srv
    assert srv.stop() in (0, -15), srv.log()


@pytest.fixture(scope="module")
def factors(bundle: Path) -> dict[str, np.ndarray]:
    return load_npz(bundle / "factors.npz")


@pytest.fixture(scope="module")
def seen(bundle: Path) -> dict[str, np.ndarray]:
    return load_npz(bundle / "seen.npz")


def _json_infer(server: Server, inputs: list[dict], parameters: dict | None = None) -> httpx.Response:
    body: dict = {"inputs": inputs}
    if parameters is not None:
        body["parameters"] = parameters
    return httpx.post(f"{server.http_url}/v2/models/{RECALL_MODEL}/infer", json=body, timeout=10)


def _seen_items(factors: dict, seen: dict, user_id: int) -> set[int]:
    row = int(np.searchsorted(factors["user_ids"], user_id))
    cols = seen["indices"][seen["indptr"][row] : seen["indptr"][row + 1]]
    return set(factors["item_ids"][cols].tolist())


# ------------------------------------------------------------------------------------- health


def test_health_and_metadata_over_rest(server: Server) -> None:
    assert httpx.get(f"{server.http_url}/v2/health/live").status_code == 200
    assert httpx.get(f"{server.http_url}/v2/models/{RECALL_MODEL}/ready").status_code == 200
    meta = httpx.get(f"{server.http_url}/v2/models/{RECALL_MODEL}").json()
    assert [i["name"] for i in meta["inputs"]] == [t.name for t in RECALL.inputs]
    assert [o["name"] for o in meta["outputs"]] == [t.name for t in RECALL.outputs]
    assert {i["datatype"] for i in meta["inputs"]} == {"INT64"}


def test_health_and_metadata_over_grpc(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(RECALL_MODEL)
    meta = client.get_model_metadata(RECALL_MODEL, as_json=True)
    assert [o["name"] for o in meta["outputs"]] == [ITEM_IDS, SCORES]


def test_unknown_model_is_404(server: Server) -> None:
    response = httpx.post(f"{server.http_url}/v2/models/nope/infer", json={"inputs": []})
    assert response.status_code == 404


# ------------------------------------------------------------------------------------- answers


def test_recommend_over_rest_json(server: Server, factors: dict, seen: dict) -> None:
    users = factors["user_ids"][:3].tolist()
    response = _json_infer(server, [{"name": USER_ID, "shape": [3], "datatype": "INT64",
                                     "data": users}])
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs[ITEM_IDS]["shape"] == [3, TOP_K]
    ids = np.array(outputs[ITEM_IDS]["data"]).reshape(3, TOP_K)
    scores = np.array(outputs[SCORES]["data"]).reshape(3, TOP_K)
    assert np.all(np.diff(scores, axis=1) <= 1e-6), "scores must be sorted, best first"
    assert set(ids.ravel()) <= set(factors["item_ids"].tolist())
    for row, user in enumerate(users):
        assert not set(ids[row].tolist()) & _seen_items(factors, seen, user)


def test_exclude_seen_false_matches_plain_inner_product(server: Server, factors: dict) -> None:
    user = int(factors["user_ids"][0])
    response = _json_infer(server, [{"name": USER_ID, "shape": [1], "datatype": "INT64",
                                     "data": [user]}], {"exclude_seen": False, "top_k": 5})
    assert response.status_code == 200, response.text
    got = response.json()["outputs"][0]["data"]
    expected = factors["item_ids"][np.argsort(-(factors["item_factors"] @ factors["user_factors"][0]),
                                              kind="stable")[:5]]
    assert got == expected.tolist()


def test_grpc_and_rest_agree(server: Server, factors: dict) -> None:
    users = factors["user_ids"][5:9].astype(np.int64)
    rest = httpclient.InferenceServerClient(server.http_address)
    grpc_client = grpcclient.InferenceServerClient(server.grpc_address)
    http_in = httpclient.InferInput(USER_ID, [4], "INT64")
    http_in.set_data_from_numpy(users, binary_data=True)
    grpc_in = grpcclient.InferInput(USER_ID, [4], "INT64")
    grpc_in.set_data_from_numpy(users)
    via_http = rest.infer(RECALL_MODEL, [http_in], parameters={"top_k": 10})
    via_grpc = grpc_client.infer(RECALL_MODEL, [grpc_in], parameters={"top_k": 10})
    assert via_http.as_numpy(ITEM_IDS).shape == (4, 10)
    np.testing.assert_array_equal(via_http.as_numpy(ITEM_IDS), via_grpc.as_numpy(ITEM_IDS))
    np.testing.assert_allclose(via_http.as_numpy(SCORES), via_grpc.as_numpy(SCORES), rtol=1e-6)


def test_unknown_users_get_the_popularity_list(server: Server, factors: dict) -> None:
    response = _json_infer(server, [{"name": USER_ID, "shape": [2], "datatype": "INT64",
                                     "data": [-1, 987654321]}])
    assert response.status_code == 200, response.text
    ids = np.array(response.json()["outputs"][0]["data"]).reshape(2, TOP_K)
    popular = factors["item_ids"][np.argsort(-factors["popularity"], kind="stable")[:TOP_K]]
    np.testing.assert_array_equal(ids[0], popular)
    np.testing.assert_array_equal(ids[1], popular)


def test_similar_items_exclude_the_item_itself(server: Server, factors: dict) -> None:
    items = factors["item_ids"][:2].tolist()
    response = _json_infer(server, [{"name": ITEM_ID, "shape": [2], "datatype": "INT64",
                                     "data": items}])
    assert response.status_code == 200, response.text
    ids = np.array(response.json()["outputs"][0]["data"]).reshape(2, TOP_K)
    for row, item in enumerate(items):
        assert item not in ids[row]


def test_metrics_are_exported(server: Server, factors: dict) -> None:
    _json_infer(server, [{"name": USER_ID, "shape": [1], "datatype": "INT64",
                          "data": [int(factors["user_ids"][0])]}])
    _json_infer(server, [])
    text = httpx.get(f"{server.http_url}/metrics").text
    assert 'shopserve_requests_total{code="200",model="mf-recall"}' in text
    assert 'shopserve_requests_total{code="400",model="mf-recall"}' in text
    assert 'shopserve_recall_requests_total{mode="user_id"}' in text
    assert "shopserve_recall_search_seconds_bucket" in text
    assert 'shopserve_model_info{component="recall"' in text


# ------------------------------------------------------------------------------------- bad input

BAD_JSON = [
    ("wrong dtype", [{"name": USER_ID, "shape": [1], "datatype": "FP32", "data": [1.0]}], None,
     "user_id"),
    ("wrong shape", [{"name": USER_ID, "shape": [1, 1], "datatype": "INT64", "data": [1]}], None,
     "user_id"),
    ("missing input", [], None, "user_id"),
    ("unknown input", [{"name": "customer", "shape": [1], "datatype": "INT64", "data": [1]}], None,
     "customer"),
    ("batch mismatch", [{"name": USER_ID, "shape": [3], "datatype": "INT64", "data": [1, 2]}],
     None, "user_id"),
    ("non-numeric id", [{"name": USER_ID, "shape": [1], "datatype": "INT64", "data": ["abc"]}],
     None, "user_id"),
    ("float id", [{"name": USER_ID, "shape": [1], "datatype": "INT64", "data": [1.5]}], None,
     "user_id"),
    ("empty batch", [{"name": USER_ID, "shape": [0], "datatype": "INT64", "data": []}], None,
     "user_id"),
    ("both inputs", [{"name": USER_ID, "shape": [1], "datatype": "INT64", "data": [1]},
                     {"name": ITEM_ID, "shape": [1], "datatype": "INT64", "data": [1]}], None,
     "item_id"),
    ("top_k zero", [{"name": USER_ID, "shape": [1], "datatype": "INT64", "data": [1]}],
     {"top_k": 0}, "top_k"),
    ("top_k too large", [{"name": USER_ID, "shape": [1], "datatype": "INT64", "data": [1]}],
     {"top_k": 10**6}, "top_k"),
    ("top_k not a number", [{"name": USER_ID, "shape": [1], "datatype": "INT64", "data": [1]}],
     {"top_k": "many"}, "top_k"),
    ("exclude_seen not a bool", [{"name": USER_ID, "shape": [1], "datatype": "INT64",
                                  "data": [1]}], {"exclude_seen": 3}, "exclude_seen"),
]


@pytest.mark.parametrize(("case", "inputs", "parameters", "field"), BAD_JSON,
                         ids=[c[0] for c in BAD_JSON])
def test_bad_input_over_rest_is_400_naming_the_field(
    server: Server, case: str, inputs: list, parameters: dict | None, field: str
) -> None:
    response = _json_infer(server, inputs, parameters)
    assert response.status_code == 400, (case, response.text)
    assert field in response.json()["error"]


def test_malformed_json_body_is_4xx(server: Server) -> None:
    response = httpx.post(f"{server.http_url}/v2/models/{RECALL_MODEL}/infer",
                          content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "error" in response.json()


def _raw_grpc(server: Server, request: service_pb2.ModelInferRequest) -> grpc.RpcError:
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=10)
    return info.value


def _tensor(name: str, datatype: str, shape: list[int]) -> service_pb2.ModelInferRequest.InferInputTensor:
    return service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)


def _grpc_bad_cases() -> list[tuple[str, service_pb2.ModelInferRequest, str]]:
    def request(*tensors, raw=(), **params) -> service_pb2.ModelInferRequest:
        req = service_pb2.ModelInferRequest(model_name=RECALL_MODEL, inputs=list(tensors),
                                            raw_input_contents=list(raw))
        for key, value in params.items():
            if isinstance(value, bool):
                req.parameters[key].bool_param = value
            elif isinstance(value, int):
                req.parameters[key].int64_param = value
            else:
                req.parameters[key].string_param = value
        return req

    one = np.array([1], dtype=np.int64).tobytes()
    return [
        ("wrong dtype", request(_tensor(USER_ID, "FP32", [1]),
                                raw=[np.array([1], np.float32).tobytes()]), "user_id"),
        ("bytes id", request(_tensor(USER_ID, "BYTES", [1]), raw=[b"\x03\x00\x00\x00abc"]),
         "user_id"),
        ("wrong shape", request(_tensor(USER_ID, "INT64", [1, 1]), raw=[one]), "user_id"),
        ("batch mismatch", request(_tensor(USER_ID, "INT64", [3]), raw=[one]), "user_id"),
        ("missing input", request(), "user_id"),
        ("top_k out of range", request(_tensor(USER_ID, "INT64", [1]), raw=[one], top_k=0),
         "top_k"),
        ("top_k wrong type", request(_tensor(USER_ID, "INT64", [1]), raw=[one], top_k="x"),
         "top_k"),
    ]


@pytest.mark.parametrize(("case", "request_", "field"), _grpc_bad_cases(),
                         ids=[c[0] for c in _grpc_bad_cases()])
def test_bad_input_over_grpc_is_invalid_argument_naming_the_field(
    server: Server, case: str, request_: service_pb2.ModelInferRequest, field: str
) -> None:
    error = _raw_grpc(server, request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, error.details())
    assert field in error.details()


def test_tritonclient_reports_the_error_and_server_stays_up(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_address)
    bad = grpcclient.InferInput(USER_ID, [1], "INT32")
    bad.set_data_from_numpy(np.array([1], dtype=np.int32))
    with pytest.raises(InferenceServerException, match="user_id"):
        client.infer(RECALL_MODEL, [bad])
    assert client.is_server_live() and client.is_model_ready(RECALL_MODEL)
    assert httpx.get(f"{server.http_url}/v2/health/ready").status_code == 200


# ------------------------------------------------------------------------------------- settings


def test_approximate_index_agrees_with_exact(
    server: Server, bundle: Path, tmp_path: Path, factors: dict
) -> None:
    approx = start_server("predictors.recall",
                          {"RECALL_BUNDLE_DIR": str(bundle), "RECALL_INDEX": "hnsw",
                           "RECALL_HNSW_EF_SEARCH": "256", "RECALL_TOP_K": "20"},
                          tmp_path / "hnsw.log", http_port=(port := free_port()),
                          args=["--http_port", str(port), "--grpc_port", str(free_port())])
    try:
        users = factors["user_ids"][:20].tolist()
        body = [{"name": USER_ID, "shape": [20], "datatype": "INT64", "data": users}]
        exact = np.array(_json_infer(server, body, {"top_k": 20}).json()["outputs"][0]["data"])
        got = np.array(_json_infer(approx, body).json()["outputs"][0]["data"])
        overlap = np.mean([len(set(a) & set(b)) / 20 for a, b in
                           zip(exact.reshape(20, 20), got.reshape(20, 20), strict=True)])
        assert overlap >= 0.9
        assert 'index="hnsw"' in httpx.get(f"{approx.http_url}/metrics").text
    finally:
        approx.stop()


def test_corrupt_bundle_is_refused_at_start(bundle: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "recall"
    shutil.copytree(bundle, broken)
    with open(broken / "factors.npz", "r+b") as handle:
        handle.seek(200)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(RuntimeError, match="sha256 mismatch"):
        start_server("predictors.recall", {"RECALL_BUNDLE_DIR": str(broken)},
                     tmp_path / "broken.log", timeout=60)
