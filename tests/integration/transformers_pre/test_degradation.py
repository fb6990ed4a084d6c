"""Degradation and errors where they happen: the real recall, ranker (Triton) and search servers on
loopback, on the session's tiny bundle.

* a slow ranker (its ``tritonserver`` paused with SIGSTOP: connections stay open, nothing answers)
  costs one ranker budget and degrades with the reason ``timeout``, in the answer and the metric;
* the circuit breaker (its settings not the defaults here) opens after consecutive failures (the
  ranker is then skipped at once, not waited for, reason ``circuit_open``) and closes once the
  ranker answers again after the cooldown;
* recall and ranker down together: a search is answered from BM25 alone, a recommendation from
  popularity, 200 over REST and gRPC;
* the statuses that are not 400, over REST and gRPC: 404 for an unknown model, 500 for a failure
  (injected), 503 for a model unloaded through KServe's repository API (and not ready until it is
  loaded again); a request that takes no degraded answer (``allow_degraded`` false) gets 504 for
  a timing-out upstream and 503 for one that is down, where others get a degraded 200;
* SIGTERM lets an accepted request finish before the server exits 0.

Every test that stops or pauses a dependency restores it in a ``finally`` and waits until search
ranks again, so one failure does not fail the tests after it. The gRPC checks use
``tritonclient.grpc``; this process never imports kserve (the two cannot share one, DESIGN.md).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc

from shopserve import metric_names
from shopserve.catalog_files import CatalogFiles
from shopserve.protocol import (
    ALLOW_DEGRADED,
    DEGRADED,
    DEGRADED_REASONS,
    ITEM_IDS,
    QUERY,
    SEARCH_MODEL,
    STAGE_MS,
    USER_ID,
)
from tests.servers import Server, eventually, free_port, start_ranker, start_recall, start_search

pytestmark = pytest.mark.integration

#: The ranker's budget on the module's search server: small enough to keep the module quick, large
#: enough that the tiny ranker on a small shared CPU answers well within it.
RANKER_TIMEOUT_MS = 1500
RECALL_TIMEOUT_MS = 1500
#: The module's search server's breaker settings (SEARCH_BREAKER_*; defaults 3 and 1000 ms, other
#: values here so that the test shows the settings take effect): consecutive failures that open
#: the circuit and how long it then skips the upstream.
BREAKER_FAILURES = 2
BREAKER_COOLDOWN_S = 1.5
#: A rank stage this short was skipped, not waited for (a timeout lasts RANKER_TIMEOUT_MS).
SKIPPED_MS = 200.0


# ------------------------------------------------------------------------------------- servers


@dataclass
class Dependencies:
    """The real recall and ranker servers, restartable on their ports."""

    bundle: Path
    logs: Path
    recall: Server
    ranker: Server

    def start_recall(self) -> None:
        self.recall = start_recall(self.bundle, self.logs, self.recall.http_port,
                                    self.recall.grpc_port)

    def start_ranker(self) -> None:
        self.ranker = start_ranker(self.bundle, self.logs, self.ranker.http_port,
                                    self.ranker.grpc_port)

    def triton(self) -> psutil.Process:
        """The ``tritonserver`` process under the ranker's launcher."""
        for child in psutil.Process(self.ranker.process.pid).children(recursive=True):
            if child.name() == "tritonserver":
                return child
        raise AssertionError("the ranker launcher has no tritonserver child")


@dataclass(frozen=True)
class World:
    """What the requests ask for, read from the bundle's catalog."""

    query: str
    user: int
    popular: list[int]


def _start_search(bundle: Path, log: Path, recall_host: str, ranker_host: str,
                  **env: str) -> Server:
    return start_search(bundle, log, recall_host, ranker_host, {
        "SEARCH_RANKER_TIMEOUT_MS": str(RANKER_TIMEOUT_MS),
        "SEARCH_RECALL_TIMEOUT_MS": str(RECALL_TIMEOUT_MS),
        "SEARCH_BREAKER_FAILURES": str(BREAKER_FAILURES),
        "SEARCH_BREAKER_COOLDOWN_MS": str(int(BREAKER_COOLDOWN_S * 1000)),
        # The tests repeat one query and need the ranker called each time (a cached score would
        # answer without it), and read each degraded answer's error in the log (not summarised
        # per interval): the cache and the summary are tested in test_cache_and_overload.py.
        "SEARCH_RELEVANCE_CACHE_ENABLED": "false", "SEARCH_FAILURE_LOG_INTERVAL_MS": "1",
        # The local ranker's Triton serves the query encoder too, so a ranker killed or slowed
        # here would take the semantic path with it: these tests count the ranker's and recall's
        # degradations alone (the semantic path's own are in test_semantic_stack.py).
        "SEARCH_SEMANTIC_ENABLED": "false",
        **env})


@pytest.fixture(scope="module")
def world(tiny_bundle: Path) -> World:
    files = CatalogFiles.open(tiny_bundle / "catalog")
    queries = files.queries
    log = files.events()
    users, counts = np.unique(log.user_ids, return_counts=True)
    items = files.items
    popular = items["item_id"][np.argsort(-items["popularity"], kind="stable")]
    return World(query=str(queries["text"][queries["kind"] == "exact"][0]),
                 user=int(users[np.argmax(counts)]), popular=popular.tolist())


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("degradation-logs")


@pytest.fixture(scope="module")
def deps(tiny_bundle: Path, logs: Path) -> Iterator[Dependencies]:
    recall = start_recall(tiny_bundle, logs, free_port(), free_port())
    try:
        ranker = start_ranker(tiny_bundle, logs, free_port(), free_port())
    except BaseException:
        recall.stop()
        raise
    running = Dependencies(tiny_bundle, logs, recall, ranker)
    yield running
    for server in (running.ranker, running.recall):
        server.stop()


@pytest.fixture(scope="module")
def search(deps: Dependencies, logs: Path) -> Iterator[Server]:
    server = _start_search(deps.bundle, logs / "search.log", deps.recall.grpc_address,
                           deps.ranker.grpc_address)
    yield server
    server.stop()


# ------------------------------------------------------------------------------------- helpers


def _body(query: str, user: int, top_n: int = 5, **parameters: object) -> dict:
    return {"inputs": [
        {"name": QUERY, "shape": [1], "datatype": "BYTES", "data": [query]},
        {"name": USER_ID, "shape": [1], "datatype": "INT64", "data": [user]},
    ], "parameters": {"top_n": top_n, **parameters}}


@dataclass(frozen=True)
class Answer:
    """A 200 answer of search, over REST or gRPC."""

    item_ids: list[int]
    degraded: str
    reasons: dict[str, str]
    stage_ms: dict[str, float]
    seconds: float


def _rest(server: Server, query: str, user: int, top_n: int = 5) -> Answer:
    start = time.monotonic()
    response = httpx.post(f"{server.http_url}/v2/models/{SEARCH_MODEL}/infer",
                          json=_body(query, user, top_n), timeout=30)
    seconds = time.monotonic() - start
    assert response.status_code == 200, response.text
    body = response.json()
    ids = next(o for o in body["outputs"] if o["name"] == ITEM_IDS)["data"]
    params = body["parameters"]
    return Answer(ids, params[DEGRADED], json.loads(params[DEGRADED_REASONS]),
                  json.loads(params[STAGE_MS]), seconds)


def _grpc(server: Server, query: str, user: int, top_n: int = 5) -> Answer:
    client = grpcclient.InferenceServerClient(server.grpc_address)
    try:
        q = grpcclient.InferInput(QUERY, [1], "BYTES")
        q.set_data_from_numpy(np.array([query.encode()], dtype=object))
        u = grpcclient.InferInput(USER_ID, [1], "INT64")
        u.set_data_from_numpy(np.array([user], dtype=np.int64))
        start = time.monotonic()
        result = client.infer(SEARCH_MODEL, [q, u], parameters={"top_n": top_n},
                              client_timeout=30)
        seconds = time.monotonic() - start
    finally:
        client.close()
    params = result.get_response().parameters
    return Answer(result.as_numpy(ITEM_IDS)[0].tolist(), params[DEGRADED].string_param,
                  json.loads(params[DEGRADED_REASONS].string_param),
                  json.loads(params[STAGE_MS].string_param), seconds)


def _samples(server: Server, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of the counter ``name`` (with its ``_total``) that ``server`` exports now."""
    text = httpx.get(f"{server.http_url}/metrics").text
    return [(sample.labels, sample.value) for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name]


def _degraded_total(server: Server, stage: str, reason: str) -> float:
    return sum(value for labels, value in _samples(server, metric_names.SEARCH_DEGRADED_TOTAL)
               if labels == {"stage": stage, "reason": reason})




def _ranks_again(server: Server, world: World) -> None:
    """Wait until search answers fully ranked (its breakers closed): the state every test starts
    from and leaves behind."""
    assert eventually(lambda: _rest(server, world.query, world.user).degraded == ""), (
        f"search does not rank again; its log:\n{server.log()[-3000:]}")


@contextmanager
def _paused(process: psutil.Process) -> Iterator[None]:
    """SIGSTOP ``process`` for the block: a peer that keeps its connections and answers nothing."""
    process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        process.send_signal(signal.SIGCONT)


def _rpc_error(server: Server, request: service_pb2.ModelInferRequest) -> grpc.RpcError:
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=30)
    return info.value


def _infer_request(model: str, query: str, user: int | None = None, allow_degraded: bool = True
                   ) -> service_pb2.ModelInferRequest:
    data = query.encode()
    tensor = service_pb2.ModelInferRequest.InferInputTensor
    inputs, contents = [tensor(name=QUERY, datatype="BYTES", shape=[1])], [
        len(data).to_bytes(4, "little") + data]
    if user is not None:
        inputs.append(tensor(name=USER_ID, datatype="INT64", shape=[1]))
        contents.append(np.array([user], dtype=np.int64).tobytes())
    request = service_pb2.ModelInferRequest(model_name=model, inputs=inputs,
                                            raw_input_contents=contents)
    if not allow_degraded:
        request.parameters[ALLOW_DEGRADED].bool_param = False
    return request


# ------------------------------------------------------------------------------------- a slow ranker


def test_a_slow_ranker_costs_its_budget_and_degrades_with_reason_timeout(
        deps: Dependencies, search: Server, world: World) -> None:
    _ranks_again(search, world)
    before = _degraded_total(search, "ranker", "timeout")
    with _paused(deps.triton()):  # SIGCONT in its finally
        # Fewer calls than open the breaker: each one waits for the ranker.
        answers = [_rest(search, world.query, -1), _grpc(search, world.query, -1)]
    # 200 (never the table's 504 UpstreamTimeout: search degrades, DESIGN.md), BM25's answer.
    for answer in answers:
        assert answer.degraded == "ranker"
        assert answer.reasons == {"ranker": "timeout"}
        assert len([i for i in answer.item_ids if i >= 0]) == 5
        # It waited out the ranker's budget, and no more: the deadline covers the retries.
        assert RANKER_TIMEOUT_MS * 0.9 <= answer.stage_ms["rank"] < RANKER_TIMEOUT_MS + 1000
    assert _degraded_total(search, "ranker", "timeout") == before + 2
    assert f"gave no answer within {RANKER_TIMEOUT_MS} ms" in search.log()


# ------------------------------------------------------------------------------------- the breaker


def test_the_breaker_opens_after_consecutive_failures_and_closes_when_the_ranker_answers(
        deps: Dependencies, search: Server, world: World) -> None:
    _ranks_again(search, world)
    timeouts = _degraded_total(search, "ranker", "timeout")
    skipped = _degraded_total(search, "ranker", "circuit_open")
    with _paused(deps.triton()):  # SIGCONT in its finally
        failures = [_rest(search, world.query, -1) for _ in range(BREAKER_FAILURES)]
        open_ = [_rest(search, world.query, -1), _grpc(search, world.query, -1)]
    # The first failures each waited for the ranker; then the circuit opened and the ranker was
    # skipped at once, over REST and gRPC alike.
    assert [a.degraded for a in failures + open_] == ["ranker"] * (BREAKER_FAILURES + 2)
    assert all(a.stage_ms["rank"] >= RANKER_TIMEOUT_MS * 0.9 for a in failures)
    assert all(a.stage_ms["rank"] < SKIPPED_MS for a in open_), [a.stage_ms for a in open_]
    assert [a.reasons for a in failures] == [{"ranker": "timeout"}] * BREAKER_FAILURES
    assert [a.reasons for a in open_] == [{"ranker": "circuit_open"}] * 2
    assert _degraded_total(search, "ranker", "timeout") == timeouts + BREAKER_FAILURES
    assert _degraded_total(search, "ranker", "circuit_open") == skipped + 2
    assert (f"skipped: circuit open after {BREAKER_FAILURES} consecutive failures"
            in search.log())
    # The ranker answers again; after the cooldown the next request probes it and closes the
    # circuit: ranked answers from then on.
    time.sleep(BREAKER_COOLDOWN_S)
    _ranks_again(search, world)
    assert _rest(search, world.query, -1).degraded == ""
    assert _grpc(search, world.query, -1).degraded == ""


# ------------------------------------------------------------------------------------- no degraded answers


def test_a_request_that_takes_no_degraded_answer_gets_504_for_a_timeout_then_503(
        deps: Dependencies, search: Server, world: World) -> None:
    _ranks_again(search, world)
    strict = _body(world.query, -1, **{ALLOW_DEGRADED: False})
    url = f"{search.http_url}/v2/models/{SEARCH_MODEL}/infer"
    with _paused(deps.triton()):  # SIGCONT in its finally
        timed_out = httpx.post(url, json=strict, timeout=30)
        error = _rpc_error(search, _infer_request(SEARCH_MODEL, world.query, -1,
                                                  allow_degraded=False))
        # BREAKER_FAILURES timeouts opened the circuit: the ranker is not even tried now.
        skipped = httpx.post(url, json=strict, timeout=30)
        degraded = _rest(search, world.query, -1)  # the same search, degraded answers allowed
    assert timed_out.status_code == 504, timed_out.text
    assert f"ranker ({deps.ranker.grpc_address}) gave no answer within" in timed_out.json()["error"]
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "gave no answer within" in (error.details() or "")
    assert skipped.status_code == 503, skipped.text
    assert "circuit open" in skipped.json()["error"]
    assert degraded.reasons == {"ranker": "circuit_open"}
    _ranks_again(search, world)
    assert httpx.post(url, json=strict, timeout=30).status_code == 200


def test_a_request_that_takes_no_degraded_answer_gets_503_when_recall_is_down(
        deps: Dependencies, search: Server, world: World) -> None:
    _ranks_again(search, world)
    try:
        deps.recall.stop()
        response = httpx.post(f"{search.http_url}/v2/models/{SEARCH_MODEL}/infer",
                              json=_body("", world.user, **{ALLOW_DEGRADED: False}), timeout=30)
        assert response.status_code == 503, response.text
        assert response.json()["error"].startswith("recall (")
        error = _rpc_error(search, _infer_request(SEARCH_MODEL, "", world.user,
                                                  allow_degraded=False))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        # Without the parameter the same request is a recommendation from popularity.
        answer = _rest(search, "", world.user)
        assert answer.reasons["recall"] in ("unavailable", "circuit_open")
        assert answer.item_ids == world.popular[:5]
    finally:
        if deps.recall.process.poll() is not None:
            deps.start_recall()
        _ranks_again(search, world)
    codes = {labels["code"]: value for labels, value in _samples(search, metric_names.REQUESTS_TOTAL)
             if labels["model"] == SEARCH_MODEL}
    assert codes.get("503", 0) >= 2 and codes.get("504", 0) >= 2, codes


# ------------------------------------------------------------------------------------- both down


def test_recall_and_ranker_down_together_answer_lexical_and_popular(
        deps: Dependencies, search: Server, world: World) -> None:
    _ranks_again(search, world)
    try:
        deps.recall.stop()
        deps.ranker.stop()
        for call in (_rest, _grpc):
            # A search: BM25 alone, the same list an anonymous shopper gets (no personalisation).
            searched = call(search, world.query, world.user)
            assert searched.degraded == "ranker,recall", call.__name__
            anonymous = call(search, world.query, -1)
            assert anonymous.degraded == "ranker"
            assert searched.item_ids == anonymous.item_ids
            assert len([i for i in searched.item_ids if i >= 0]) == 5
            # A recommendation: popularity. It never asks the ranker, so only recall is named.
            recommended = call(search, "", world.user)
            assert recommended.degraded == "recall", call.__name__
            assert recommended.item_ids == world.popular[:5]
    finally:
        if deps.recall.process.poll() is not None:
            deps.start_recall()
        if deps.ranker.process.poll() is not None:
            deps.start_ranker()
        _ranks_again(search, world)


# ------------------------------------------------------------------------------------- statuses


def test_unknown_model_is_404_and_not_found(search: Server, world: World) -> None:
    response = httpx.post(f"{search.http_url}/v2/models/no-such-model/infer",
                          json=_body(world.query, -1), timeout=30)
    assert response.status_code == 404, response.text
    assert "no-such-model" in response.json()["error"]
    error = _rpc_error(search, _infer_request("no-such-model", world.query))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in error.details()




@pytest.fixture(scope="module")
def failing(tiny_bundle: Path, logs: Path) -> Iterator[Server]:
    """A search server of its own that fails every valid request on purpose (fault injection);
    nothing listens on its upstream ports (it fails before calling them)."""
    server = _start_search(tiny_bundle, logs / "search-failing.log", f"127.0.0.1:{free_port()}",
                           f"127.0.0.1:{free_port()}", SEARCH_FAULT_ERROR_RATIO="1")
    yield server
    server.stop()


def test_a_failure_is_500_and_internal_with_the_error_body(failing: Server, world: World) -> None:
    response = httpx.post(f"{failing.http_url}/v2/models/{SEARCH_MODEL}/infer",
                          json=_body(world.query, -1), timeout=30)
    assert response.status_code == 500, response.text
    assert list(response.json()) == ["error"]
    assert "injected failure" in response.json()["error"]
    error = _rpc_error(failing, _infer_request(SEARCH_MODEL, world.query))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "injected failure" in error.details()
    # Both counted as 500s for the error-ratio alerts; bad input is still 400 before any fault.
    bad = httpx.post(f"{failing.http_url}/v2/models/{SEARCH_MODEL}/infer",
                     json=_body(world.query, -1, top_n=0), timeout=30)
    assert bad.status_code == 400 and "top_n" in bad.json()["error"]
    codes = {labels["code"]: value
             for labels, value in _samples(failing, metric_names.REQUESTS_TOTAL)
             if labels["model"] == SEARCH_MODEL}
    assert codes == {"500": 2.0, "400": 1.0}


def test_an_unloaded_model_is_503_and_unavailable_and_not_ready_until_loaded_again(
        tiny_bundle: Path, logs: Path, world: World) -> None:
    # KServe's repository API (open to any client) can unload the one model the server exists
    # for: readiness must then say "send me no traffic", and infer 503, not 404 (shopserve.serving).
    server = _start_search(tiny_bundle, logs / "search-unloaded.log", f"127.0.0.1:{free_port()}",
                           f"127.0.0.1:{free_port()}")
    try:
        assert httpx.post(f"{server.http_url}/v2/repository/models/{SEARCH_MODEL}/unload",
                          timeout=30).status_code == 200
        assert httpx.get(f"{server.http_url}/v2/health/ready").status_code == 503
        assert httpx.get(f"{server.http_url}/v2/health/live").status_code == 200
        response = httpx.post(f"{server.http_url}/v2/models/{SEARCH_MODEL}/infer",
                              json=_body(world.query, -1), timeout=30)
        assert response.status_code == 503, response.text
        error = _rpc_error(server, _infer_request(SEARCH_MODEL, world.query))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "not loaded" in (error.details() or "")
        client = grpcclient.InferenceServerClient(server.grpc_address)
        try:
            assert client.is_server_ready() is False
        finally:
            client.close()
        assert httpx.post(f"{server.http_url}/v2/repository/models/{SEARCH_MODEL}/load",
                          timeout=60).status_code == 200
        assert httpx.get(f"{server.http_url}/v2/health/ready").status_code == 200
        assert _rest(server, world.query, -1).item_ids
    finally:
        server.stop()


# ------------------------------------------------------------------------------------- SIGTERM


def test_sigterm_drains_requests_in_flight_and_exits_0(tiny_bundle: Path, logs: Path,
                                                       world: World) -> None:
    # Every request sleeps 1.5 s inside the model (fault injection): SIGTERM comes meanwhile.
    server = _start_search(tiny_bundle, logs / "search-drain.log", f"127.0.0.1:{free_port()}",
                           f"127.0.0.1:{free_port()}", SEARCH_FAULT_DELAY_MS="1500")
    answers: dict[str, Answer | BaseException] = {}

    def send(name: str, call: Callable[..., Answer]) -> None:
        try:
            answers[name] = call(server, world.query, -1)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertions below
            answers[name] = exc

    threads = [threading.Thread(target=send, args=(name, call), daemon=True)
               for name, call in (("rest", _rest), ("grpc", _grpc))]
    try:
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # both accepted, both in the injected delay
        os.kill(server.process.pid, signal.SIGTERM)
        for thread in threads:
            thread.join(30)
        code = server.process.wait(30)
    finally:
        server.stop()
    for name in ("rest", "grpc"):
        answer = answers.get(name)
        assert isinstance(answer, Answer), (name, answer, server.log()[-3000:])
        assert answer.seconds >= 1.4, (name, answer)
        assert answer.degraded == "ranker"  # nothing listens upstream; the point is the 200
    assert code == 0, server.log()[-3000:]
