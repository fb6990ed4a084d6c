"""The three real servers on loopback: mf-recall (KServe), bert-ranker (Triton), search (KServe).

A small bundle (tiny catalog, quick MF, tiny ranker) is built once for the module. Tests speak v2
to ``search`` over REST (plain JSON and ``tritonclient.http``) and gRPC (``tritonclient.grpc`` and
the raw stub), and stop and restart the dependencies to check degradation and recovery.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from pipeline.lifecycle.demo import save_catalog
from pipeline.lifecycle.drift_reference import record_reference
from shopserve import metric_names
from shopserve.drift import SIGNALS
from shopserve.protocol import (
    DEGRADED,
    EXPLANATIONS,
    ITEM_IDS,
    QUERY,
    RECENT_ITEMS,
    SCORES,
    SEARCH_MODEL,
    STAGE_MS,
    TITLES,
    USER_ID,
)
from tests.servers import Server, free_port, start_ranker, start_recall, start_server
from training.data.generator import Dataset, GeneratorConfig, generate, split_queries
from training.ranker.build import RankerBuildConfig, build_ranker
from training.recall.build import RecallBuildConfig, build_recall
from training.recall.train import MFParams

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    bundle: Path
    dataset: Dataset
    logs: Path
    recall: Server
    ranker: Server
    search: Server

    def start_ranker(self) -> Server:
        self.ranker = start_ranker(self.bundle, self.logs, self.ranker.http_port,
                                    self.ranker.grpc_port)
        return self.ranker

    def start_recall(self) -> Server:
        self.recall = start_recall(self.bundle, self.logs, self.recall.http_port,
                                    self.recall.grpc_port)
        return self.recall


def _start_search(bundle: Path, log: Path, recall: Server, ranker: Server) -> Server:
    search_http, search_grpc = free_port(), free_port()
    return start_server(
        "transformers_pre",
        {"SEARCH_BUNDLE_DIR": str(bundle), "SEARCH_RECALL_HOST": recall.grpc_address,
         # The ranker launcher serves the bundle's query encoder beside the ranker.
         "SEARCH_SEMANTIC_HOST": ranker.grpc_address,
         # Generous budgets: the test machine is small and shared.
         "SEARCH_RANKER_TIMEOUT_MS": "3000", "SEARCH_RECALL_TIMEOUT_MS": "2000",
         # A few requests suffice for the drift gauges to appear.
         "SEARCH_DRIFT_MIN_SAMPLES": "3",
         # Tests repeat queries and need the ranker asked each time (stage timings, a ranker
         # that is down): the cache is tested in test_cache_and_overload.py.
         "SEARCH_RELEVANCE_CACHE_ENABLED": "false"},
        log,
        args=["--http_port", str(search_http), "--grpc_port", str(search_grpc),
              "--predictor_host", ranker.grpc_address, "--model_name", SEARCH_MODEL],
        http_port=search_http, grpc_port=search_grpc,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    bundle = tmp_path_factory.mktemp("bundle")
    logs = tmp_path_factory.mktemp("logs")
    dataset = generate(GeneratorConfig.tiny())
    # Synonyms mined from the ranker's training split, as the pipeline does.
    train_queries, _ = split_queries(dataset, RankerBuildConfig.tiny().eval_fraction,
                                     RankerBuildConfig.tiny().seed)
    save_catalog(dataset, bundle / "catalog", "test-1", train_queries)
    build_recall(dataset.events.log, bundle / "recall", "test-1", items=dataset.item_map,
                 config=RecallBuildConfig(params=MFParams(factors=16, iterations=5),
                                          show_progress=False))
    build_ranker(dataset, bundle / "ranker", RankerBuildConfig.tiny(), version="test-1")
    record_reference(bundle, samples=2000, score_queries=100)
    started: list[Server] = []
    try:  # a server that fails to start must not leave the ones before it running
        started.append(start_recall(bundle, logs, free_port(), free_port()))
        started.append(start_ranker(bundle, logs, free_port(), free_port()))
        started.append(_start_search(bundle, logs / "search.log", *started))
    except BaseException:
        for server in reversed(started):
            server.stop()
        raise
    running = Stack(bundle, dataset, logs, *started)
    try:
        yield running
    finally:
        # The servers running now: tests restart the ranker and recall.
        for server in (running.search, running.ranker, running.recall):
            server.stop()


def _body(queries: list[str], users: list[int] | None = None, **parameters: object) -> dict:
    inputs = [{"name": QUERY, "shape": [len(queries)], "datatype": "BYTES", "data": queries}]
    if users is not None:
        inputs.append({"name": USER_ID, "shape": [len(users)], "datatype": "INT64", "data": users})
    body: dict = {"inputs": inputs}
    if parameters:
        body["parameters"] = parameters
    return body


def _with_recent(body: dict, shape: list[int], datatype: str, data: list) -> dict:
    body["inputs"].append({"name": RECENT_ITEMS, "shape": shape, "datatype": datatype,
                           "data": data})
    return body


def _search(stack: Stack, body: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{stack.search.http_url}/v2/models/{SEARCH_MODEL}/infer", json=body,
                      headers=headers, timeout=30)


def _outputs(response: httpx.Response) -> dict[str, dict]:
    assert response.status_code == 200, response.text
    return {o["name"]: o for o in response.json()["outputs"]}


def _known_user(stack: Stack) -> int:
    return int(np.bincount(stack.dataset.events.log.user_ids - stack.dataset.users.user_id.min())
               .argmax() + stack.dataset.users.user_id.min())


def _a_query(stack: Stack) -> str:
    queries = stack.dataset.queries
    return str(queries.text[queries.kind == "exact"][0])


# ------------------------------------------------------------------------------------- answers


def test_metadata_lists_the_contract(stack: Stack) -> None:
    meta = httpx.get(f"{stack.search.http_url}/v2/models/{SEARCH_MODEL}").json()
    assert [i["name"] for i in meta["inputs"]] == [QUERY, USER_ID, RECENT_ITEMS]
    # explanations only comes with the parameter explain (it is in the metadata all the same)
    assert [o["name"] for o in meta["outputs"]] == [ITEM_IDS, SCORES, TITLES, EXPLANATIONS]


def test_search_returns_ranked_titles_with_stage_timings(stack: Stack) -> None:
    query = _a_query(stack)
    response = _search(stack, _body([query], [_known_user(stack)], top_n=5))
    out = _outputs(response)
    params = response.json()["parameters"]
    assert out[ITEM_IDS]["shape"] == [1, 5]
    ids = out[ITEM_IDS]["data"]
    titles = out[TITLES]["data"]
    rows = stack.dataset.item_rows(np.array(ids))
    assert titles == stack.dataset.items.title[rows].tolist()
    assert out[SCORES]["data"] == sorted(out[SCORES]["data"], reverse=True)
    assert params[DEGRADED] == ""
    stages = json.loads(params[STAGE_MS])
    assert {"normalise", "lexical", "recall", "filter", "tokenise", "rank", "blend"} <= set(stages)
    # For an anonymous shopper every candidate comes from the query's words, so the answer holds
    # the query's category (the tiny ranker trained in seconds is no judge of order; quality is
    # measured by `shopserve evaluate stack`).
    anonymous = _outputs(_search(stack, _body([query], [-1], top_n=5)))[ITEM_IDS]["data"]
    qrow = int(np.flatnonzero(stack.dataset.queries.text == query)[0])
    categories = stack.dataset.items.category[stack.dataset.item_rows(np.array(anonymous))]
    assert stack.dataset.queries.category[qrow] in set(categories)


def test_grpc_and_rest_agree(stack: Stack) -> None:
    query, user = _a_query(stack), _known_user(stack)
    rest = _outputs(_search(stack, _body([query], [user], top_n=8)))
    client = grpcclient.InferenceServerClient(stack.search.grpc_address)
    q = grpcclient.InferInput(QUERY, [1], "BYTES")
    q.set_data_from_numpy(np.array([query.encode()], dtype=object))
    u = grpcclient.InferInput(USER_ID, [1], "INT64")
    u.set_data_from_numpy(np.array([user], dtype=np.int64))
    result = client.infer(SEARCH_MODEL, [q, u], parameters={"top_n": 8})
    assert result.as_numpy(ITEM_IDS).tolist() == [rest[ITEM_IDS]["data"]]
    assert [t.decode() for t in result.as_numpy(TITLES)[0]] == rest[TITLES]["data"]
    response = result.get_response()
    assert response.parameters[DEGRADED].string_param == ""


def test_batch_of_queries_and_users(stack: Stack) -> None:
    users = stack.dataset.users.user_id[:3].tolist()
    queries = stack.dataset.queries.text[:3].tolist()
    out = _outputs(_search(stack, _body(queries, users, top_n=4)))
    assert out[ITEM_IDS]["shape"] == [3, 4] and out[TITLES]["shape"] == [3, 4]


def test_recommendations_for_a_known_user_are_new_items(stack: Stack) -> None:
    user = _known_user(stack)
    out = _outputs(_search(stack, _body([""], [user], top_n=10)))
    ids = set(out[ITEM_IDS]["data"])
    log = stack.dataset.events.log
    assert len(ids) == 10
    assert not ids & set(log.item_ids[log.user_ids == user].tolist())


def test_anonymous_recommendations_are_the_popular_items(stack: Stack) -> None:
    out = _outputs(_search(stack, _body([""], [-1], top_n=5)))
    items = stack.dataset.items
    popular = items.item_id[np.argsort(-items.popularity, kind="stable")[:5]]
    assert out[ITEM_IDS]["data"] == popular.tolist()
    # user_id may be left out entirely: anonymous.
    assert _outputs(_search(stack, _body([""], top_n=5)))[ITEM_IDS]["data"] == popular.tolist()


def test_filters(stack: Stack) -> None:
    items = stack.dataset.items
    category = str(items.category[0])
    low, high = np.percentile(items.price, [25, 75]).tolist()
    out = _outputs(_search(stack, _body([category], [-1], top_n=10, category=category,
                                        min_price=low, max_price=high)))
    rows = stack.dataset.item_rows(np.array([i for i in out[ITEM_IDS]["data"] if i >= 0]))
    assert rows.size > 0
    assert set(items.category[rows]) == {category}
    assert np.all((items.price[rows] >= low - 1e-3) & (items.price[rows] <= high + 1e-3))


def test_exclude_purchased(stack: Stack) -> None:
    purchases = stack.dataset.events.of_type("purchase")
    user = int(np.bincount(purchases.user_ids - purchases.user_ids.min()).argmax()
               + purchases.user_ids.min())
    bought = set(purchases.item_ids[purchases.user_ids == user].tolist())
    rows = stack.dataset.item_rows(np.array(sorted(bought)))
    query = str(stack.dataset.items.category[rows[0]])
    out = _outputs(_search(stack, _body([query], [user], top_n=50, exclude_purchased=True)))
    assert not bought & set(out[ITEM_IDS]["data"])


def test_misspelt_query_is_corrected_before_bm25(stack: Stack) -> None:
    query = _a_query(stack)
    word = max(query.split(), key=len)
    typo = query.replace(word, word[0] + word[2] + word[1] + word[3:], 1)  # a transposition
    assert typo != query
    right = _outputs(_search(stack, _body([query], top_n=5)))[ITEM_IDS]["data"]
    found = _outputs(_search(stack, _body([typo], top_n=50)))[ITEM_IDS]["data"]
    # The catalog has no token spelt like the typo: without correction BM25 would miss it.
    assert right[0] in found


def test_request_id_is_echoed(stack: Stack) -> None:
    body = _body([_a_query(stack)], [-1], top_n=3)
    body["id"] = "req-42"
    assert _search(stack, body).json()["id"] == "req-42"


def test_metrics_have_stage_histograms(stack: Stack) -> None:
    _search(stack, _body([_a_query(stack)], [_known_user(stack)], top_n=3))
    text = httpx.get(f"{stack.search.http_url}/metrics").text
    for stage in ("normalise", "lexical", "recall", "filter", "tokenise", "rank", "blend"):
        assert f'shopserve_search_stage_seconds_bucket{{le="0.001",stage="{stage}"}}' in text


def test_drift_psi_is_exported_per_signal(stack: Stack) -> None:
    queries = stack.dataset.queries
    for text, user in zip(queries.text[:4].tolist(), queries.user_id[:4].tolist(), strict=True):
        _outputs(_search(stack, _body([text], [user], top_n=5)))
    families = {f.name: f for f in text_string_to_metric_families(
        httpx.get(f"{stack.search.http_url}/metrics").text)}
    assert families[metric_names.DRIFT_REFERENCE_LOADED].samples[0].value == 1.0
    psi = {s.labels["signal"]: s.value for s in families[metric_names.DRIFT_PSI].samples}
    assert set(psi) == set(SIGNALS)
    assert all(v >= 0 for v in psi.values())
    info = {s.labels["component"]: s.labels for s in families[metric_names.MODEL_INFO].samples}
    assert info["ranker"]["version"] == "test-1"  # reported by the transformer for Triton


def test_monitor_once_names_stages_and_signals(stack: Stack) -> None:
    _outputs(_search(stack, _body([_a_query(stack)], [_known_user(stack)], top_n=3)))
    # A child process: the monitor is a CLI; --ranker points at a port nobody listens on.
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.observe.monitor", "monitor", "--once",
         "--host", stack.search.http_url, "--recall", stack.recall.http_url,
         "--ranker", f"http://127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for word in ("lexical", "rank", "blend", "request", *SIGNALS, "recall", "unreachable"):
        assert word in out, out
    assert "drift    unavailable" not in out


# ------------------------------------------------------------------------------------- recent items


def _popular_ids(stack: Stack, n: int) -> list[int]:
    items = stack.dataset.items
    return items.item_id[np.argsort(-items.popularity, kind="stable")[:n]].tolist()


def _unknown_recent(stack: Stack) -> float:
    families = text_string_to_metric_families(httpx.get(f"{stack.search.http_url}/metrics").text)
    return sum(sample.value for family in families for sample in family.samples
               if sample.name == f"{metric_names.SEARCH_UNKNOWN_RECENT_ITEMS_TOTAL}_total"
               or sample.name == metric_names.SEARCH_UNKNOWN_RECENT_ITEMS_TOTAL)


def test_recent_items_are_left_out_and_unknown_ones_ignored_and_counted(stack: Stack) -> None:
    popular = _popular_ids(stack, 8)
    before = _unknown_recent(stack)
    body = _with_recent(_body([""], top_n=5), [1, 4], "INT64", [-1, 987654321, popular[0], -1])
    response = _search(stack, body)
    assert response.status_code == 200, response.text
    ids = _outputs(response)[ITEM_IDS]["data"]
    assert popular[0] not in ids
    assert ids == popular[1:6]
    assert _unknown_recent(stack) == before + 1


def test_explanations_over_rest_and_grpc_sum_to_each_score(stack: Stack) -> None:
    query, user = _a_query(stack), _known_user(stack)
    response = _search(stack, _body([query], [user], top_n=5, explain=True))
    out = _outputs(response)
    rest = [json.loads(e) for e in out[EXPLANATIONS]["data"]]
    plain = _outputs(_search(stack, _body([query], [user], top_n=5)))
    assert EXPLANATIONS not in plain  # only when asked
    assert out[ITEM_IDS]["data"] == plain[ITEM_IDS]["data"]
    client = grpcclient.InferenceServerClient(stack.search.grpc_address)
    try:
        q = grpcclient.InferInput(QUERY, [1], "BYTES")
        q.set_data_from_numpy(np.array([query.encode()], dtype=object))
        u = grpcclient.InferInput(USER_ID, [1], "INT64")
        u.set_data_from_numpy(np.array([user], dtype=np.int64))
        result = client.infer(SEARCH_MODEL, [q, u], parameters={"top_n": 5, "explain": True})
    finally:
        client.close()
    grpc_explained = [json.loads(e) for e in result.as_numpy(EXPLANATIONS)[0]]
    assert [e["sources"] for e in grpc_explained] == [e["sources"] for e in rest]
    for explained, score in zip(rest, out[SCORES]["data"], strict=True):
        terms = ("relevance", "lexical", "personal", "popularity", "session", "adjustment")
        assert sum(explained[t] for t in terms) == pytest.approx(score, abs=1e-4)
        assert explained["score"] == pytest.approx(score, abs=1e-5)
        assert set(explained["sources"]) <= {"lexical", "recall", "sequence", "popular"}
        assert explained["sources"]


# ------------------------------------------------------------------------------------- bad input

BAD_REST = [
    ("query too long", _body(["x" * 300]), "query"),
    ("top_n zero", _body(["shoes"], top_n=0), "top_n"),
    ("top_n too large", _body(["shoes"], top_n=101), "top_n"),
    ("top_n wrong type", _body(["shoes"], top_n="ten"), "top_n"),
    ("query wrong dtype", {"inputs": [{"name": QUERY, "shape": [1], "datatype": "INT64",
                                       "data": [1]}]}, "query"),
    ("user wrong dtype", {"inputs": [
        {"name": QUERY, "shape": [1], "datatype": "BYTES", "data": ["shoes"]},
        {"name": USER_ID, "shape": [1], "datatype": "FP32", "data": [1.0]}]}, "user_id"),
    ("batch sizes differ", _body(["a", "b"], [1]), "user_id"),
    ("missing query", {"inputs": [{"name": USER_ID, "shape": [1], "datatype": "INT64",
                                   "data": [1]}]}, "query"),
    ("category wrong type", _body(["shoes"], category=3), "category"),
    ("unknown category", _body(["shoes"], category="spaceships"), "category"),
    ("min_price wrong type", _body(["shoes"], min_price="cheap"), "min_price"),
    ("negative min_price", _body(["shoes"], min_price=-1), "min_price"),
    ("min above max", _body(["shoes"], min_price=50, max_price=10), "min_price"),
    ("exclude_purchased wrong type", _body(["shoes"], exclude_purchased="maybe"),
     "exclude_purchased"),
    ("empty batch", {"inputs": [{"name": QUERY, "shape": [0], "datatype": "BYTES", "data": []}]},
     "query"),
    *[(case, _with_recent(_body([""]), shape, datatype, data), RECENT_ITEMS)
      for case, shape, datatype, data in (
          ("recent_items wrong dtype", [1, 2], "FP32", [1.0, 2.0]),
          ("recent_items one dimension", [2], "INT64", [1, 2]),
          ("recent_items batch differs", [2, 1], "INT64", [1, 2]),
          ("recent_items too long", [1, 51], "INT64", [1] * 51),
          ("recent_items id below -1", [1, 2], "INT64", [-7, 1]),
          ("recent_items short data", [1, 3], "INT64", [1, 2]),
      )],
    ("explain wrong type", _body(["shoes"], explain="please"), "explain"),
    ("allow_degraded wrong type", _body(["shoes"], allow_degraded=3), "allow_degraded"),
]

#: The recent_items cases of BAD_REST, sent over gRPC as raw contents.
BAD_RECENT_GRPC = [(case, body["inputs"][1]) for case, body, field in BAD_REST
                   if field == RECENT_ITEMS and case != "recent_items short data"]


@pytest.mark.parametrize(("case", "body", "field"), BAD_REST, ids=[c[0] for c in BAD_REST])
def test_bad_input_over_rest(stack: Stack, case: str, body: dict, field: str) -> None:
    response = _search(stack, body)
    assert response.status_code == 400, (case, response.text)
    assert field in response.json()["error"]


def test_non_utf8_query_over_rest_binary_and_grpc(stack: Stack) -> None:
    bad = np.array([b"caf\xe9"], dtype=object)
    rest = httpclient.InferenceServerClient(stack.search.http_address)
    tensor = httpclient.InferInput(QUERY, [1], "BYTES")
    tensor.set_data_from_numpy(bad, binary_data=True)
    with pytest.raises(InferenceServerException, match="query.*not valid UTF-8") as error:
        rest.infer(SEARCH_MODEL, [tensor])
    assert error.value.status() == "400"
    request = service_pb2.ModelInferRequest(
        model_name=SEARCH_MODEL,
        inputs=[service_pb2.ModelInferRequest.InferInputTensor(name=QUERY, datatype="BYTES",
                                                               shape=[1])],
        raw_input_contents=[len(b"caf\xe9").to_bytes(4, "little") + b"caf\xe9"],
    )
    with grpc.insecure_channel(stack.search.grpc_address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "query" in info.value.details()


@pytest.mark.parametrize(("case", "tensor"), BAD_RECENT_GRPC, ids=[c[0] for c in BAD_RECENT_GRPC])
def test_bad_recent_items_over_grpc(stack: Stack, case: str, tensor: dict) -> None:
    dtype = np.float32 if tensor["datatype"] == "FP32" else np.int64
    raw = np.asarray(tensor["data"], dtype=dtype).tobytes()
    spec = service_pb2.ModelInferRequest.InferInputTensor
    request = service_pb2.ModelInferRequest(
        model_name=SEARCH_MODEL,
        inputs=[spec(name=QUERY, datatype="BYTES", shape=[1]),
                spec(name=RECENT_ITEMS, datatype=tensor["datatype"], shape=tensor["shape"])],
        raw_input_contents=[(0).to_bytes(4, "little"), raw],
    )
    with grpc.insecure_channel(stack.search.grpc_address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
    assert RECENT_ITEMS in info.value.details(), (case, info.value.details())


def test_bad_parameter_over_grpc(stack: Stack) -> None:
    request = service_pb2.ModelInferRequest(
        model_name=SEARCH_MODEL,
        inputs=[service_pb2.ModelInferRequest.InferInputTensor(name=QUERY, datatype="BYTES",
                                                               shape=[1])],
        raw_input_contents=[(5).to_bytes(4, "little") + b"shoes"],
    )
    request.parameters["top_n"].string_param = "many"
    with grpc.insecure_channel(stack.search.grpc_address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "top_n" in info.value.details()
    assert httpx.get(f"{stack.search.http_url}/v2/health/ready").status_code == 200


# ------------------------------------------------------------------------------------- degradation


def _wait_for(predicate, timeout: float = 30.0, interval: float = 0.5):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def _degraded_count(stack: Stack, stage: str) -> float:
    total = 0.0
    for line in httpx.get(f"{stack.search.http_url}/metrics").text.splitlines():
        if line.startswith("shopserve_search_degraded_total{") and f'stage="{stage}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_ranker_down_degrades_then_recovers(stack: Stack) -> None:
    query, user = _a_query(stack), _known_user(stack)
    before = _degraded_count(stack, "ranker")
    stack.ranker.stop()
    response = _search(stack, _body([query], [user], top_n=5))
    out = _outputs(response)
    assert response.json()["parameters"][DEGRADED] == "ranker"
    assert len([i for i in out[ITEM_IDS]["data"] if i >= 0]) == 5
    assert _degraded_count(stack, "ranker") > before
    stack.start_ranker()
    recovered = _wait_for(lambda: _search(stack, _body([query], [user], top_n=5))
                          .json()["parameters"][DEGRADED] == "")
    assert recovered, "search did not use the ranker again after it came back"


def test_recall_down_degrades_then_recovers(stack: Stack) -> None:
    query, user = _a_query(stack), _known_user(stack)
    stack.recall.stop()
    search = _search(stack, _body([query], [user], top_n=5))
    assert search.json()["parameters"][DEGRADED] == "recall"
    assert len([i for i in _outputs(search)[ITEM_IDS]["data"] if i >= 0]) == 5
    recommend = _search(stack, _body([""], [user], top_n=5))
    assert recommend.json()["parameters"][DEGRADED] == "recall"
    items = stack.dataset.items
    assert _outputs(recommend)[ITEM_IDS]["data"] == items.item_id[
        np.argsort(-items.popularity, kind="stable")[:5]].tolist()
    stack.start_recall()
    recovered = _wait_for(lambda: _search(stack, _body([""], [user], top_n=5))
                          .json()["parameters"][DEGRADED] == "")
    assert recovered, "search did not use recall again after it came back"


def test_sigterm_stops_the_model_and_closes_its_upstream_channels(stack: Stack) -> None:
    # A search server of its own: stopping the module's would end the other tests.
    log = stack.logs / f"search-stop-{time.monotonic_ns()}.log"
    search = _start_search(stack.bundle, log, stack.recall, stack.ranker)
    try:
        body = _body([_a_query(stack)], [_known_user(stack)], top_n=3)
        response = httpx.post(f"{search.http_url}/v2/models/{SEARCH_MODEL}/infer", json=body,
                              timeout=30)
        assert response.status_code == 200  # both channels opened
    finally:
        code = search.stop()
    assert code == 0
    text = log.read_text(encoding="utf-8", errors="replace")
    assert "search stopped: upstream channels closed (recall, ranker)" in text
