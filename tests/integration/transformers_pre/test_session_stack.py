"""Recommendations that follow what the shopper just did, through the real servers.

The tiny bundle's recall, its ranker launcher (which serves ``seq-recommender`` beside
``bert-ranker`` from the bundle's ``sequence`` component) and the search transformer, on loopback.
Checked over REST and gRPC: an anonymous shopper's recommendations change once recent items are
given and come from the sequence model's own next items (asked of it directly here); a search
with recent items carries the session term; the sequence model unloaded through Triton's model
control degrades recommendations to popularity (``degraded: sequence``) and they follow the
session again once it is loaded back; its model process killed (SIGKILL, as a crash or the OOM
killer would) loses no request: answers degrade to popularity while no process serves it, and
follow the session again once the ranker launcher's watchdog has a new one serving it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from shopserve.artifacts import SEQUENCE_COMPONENT, SEQUENCE_ITEM_IDS_FILE
from shopserve.catalog_files import CatalogFiles
from shopserve.protocol import (
    DEGRADED,
    DEGRADED_REASONS,
    EXPLANATIONS,
    ITEM_IDS,
    ITEM_SEQUENCE,
    NEXT_ITEMS,
    QUERY,
    RECENT_ITEMS,
    SEARCH_MODEL,
    SEQUENCE_MODEL,
    STAGE_MS,
    USER_ID,
)
from tests.servers import (
    Server,
    eventually,
    free_port,
    model_stubs,
    start_ranker,
    start_recall,
    start_search,
)

pytestmark = pytest.mark.integration

TOP_N = 5


@dataclass
class Stack:
    recall: Server
    ranker: Server
    search: Server


@dataclass(frozen=True)
class World:
    """Catalog facts the tests ask with."""

    recent: list[int]
    popular: list[int]
    model_ids: np.ndarray  # catalog item id per model index
    query: str


@pytest.fixture(scope="module")
def world(tiny_bundle: Path) -> World:
    files = CatalogFiles.open(tiny_bundle / "catalog")
    items = files.items
    popular = items["item_id"][np.argsort(-items["popularity"], kind="stable")].tolist()
    log = files.events()
    # A shopper's latest three items, in time order, as the session's recent items.
    user = int(np.bincount(log.user_ids - log.user_ids.min()).argmax() + log.user_ids.min())
    order = np.argsort(log.timestamps, kind="stable")
    mine = log.item_ids[order][log.user_ids[order] == user]
    recent = list(dict.fromkeys(mine[::-1].tolist()))[:3][::-1]
    model_ids = np.load(tiny_bundle / SEQUENCE_COMPONENT / SEQUENCE_ITEM_IDS_FILE,
                        allow_pickle=False)
    queries = files.queries
    return World(recent, popular, model_ids,
                 str(queries["text"][queries["kind"] == "exact"][0]))


@pytest.fixture(scope="module")
def stack(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("session-logs")
    recall = start_recall(tiny_bundle, logs, free_port(), free_port())
    started = [recall]
    try:
        ranker = start_ranker(tiny_bundle, logs, free_port(), free_port())
        started.append(ranker)
        search = start_search(
            tiny_bundle, logs / "search.log", recall.grpc_address, ranker.grpc_address,
            {"SEARCH_SEQUENCE_HOST": ranker.grpc_address,
             # Generous budgets: the tiny models on a small shared CPU, never the point here.
             "SEARCH_RANKER_TIMEOUT_MS": "3000", "SEARCH_SEQUENCE_TIMEOUT_MS": "3000",
             "SEARCH_RECALL_TIMEOUT_MS": "3000"})
        started.append(search)
        yield Stack(recall, ranker, search)
    finally:
        for server in reversed(started):
            server.stop()


def _body(query: str, recent: list[int] | None = None, **parameters: object) -> dict:
    inputs = [{"name": QUERY, "shape": [1], "datatype": "BYTES", "data": [query]},
              {"name": USER_ID, "shape": [1], "datatype": "INT64", "data": [-1]}]
    if recent is not None:
        inputs.append({"name": RECENT_ITEMS, "shape": [1, len(recent)], "datatype": "INT64",
                       "data": recent})
    return {"inputs": inputs, "parameters": {"top_n": TOP_N, **parameters}}


def _rest(stack: Stack, body: dict) -> dict:
    response = httpx.post(f"{stack.search.http_url}/v2/models/{SEARCH_MODEL}/infer", json=body,
                          timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _ids(answer: dict) -> list[int]:
    return next(o for o in answer["outputs"] if o["name"] == ITEM_IDS)["data"]


def _model_next(stack: Stack, world: World, recent: list[int]) -> list[int]:
    """The sequence model's own next items for ``recent``, as catalog ids (asked of Triton)."""
    index = {int(item): i for i, item in enumerate(world.model_ids.tolist()) if i > 0}
    sequence = np.array([[index[i] for i in recent if i in index]], dtype=np.int64)
    client = grpcclient.InferenceServerClient(stack.ranker.grpc_address)
    try:
        length = int(client.get_model_metadata(SEQUENCE_MODEL).inputs[0].shape[-1])
        padded = np.zeros((1, length), dtype=np.int64)
        padded[0, -sequence.shape[1]:] = sequence[0]
        tensor = grpcclient.InferInput(ITEM_SEQUENCE, [1, length], "INT64")
        tensor.set_data_from_numpy(padded)
        result = client.infer(SEQUENCE_MODEL, [tensor])
    finally:
        client.close()
    return world.model_ids[result.as_numpy(NEXT_ITEMS)[0]].tolist()




def _repository(stack: Stack, action: str) -> None:
    response = httpx.post(f"{stack.ranker.http_url}/v2/repository/models/{SEQUENCE_MODEL}/{action}",
                          timeout=60)
    assert response.status_code == 200, response.text


def test_an_anonymous_shoppers_recommendations_follow_the_recent_items(
        stack: Stack, world: World) -> None:
    before = _rest(stack, _body(""))
    assert _ids(before) == world.popular[:TOP_N]  # nothing known: popularity
    after = _rest(stack, _body("", world.recent, explain=True))
    params = after["parameters"]
    assert params[DEGRADED] == "", params
    assert "sequence" in json.loads(params[STAGE_MS])
    ids = _ids(after)
    assert ids != _ids(before)
    assert not set(ids) & set(world.recent)  # what was just seen is not recommended again
    model_next = _model_next(stack, world, world.recent)
    assert set(ids) <= set(model_next), (ids, model_next)
    assert ids[0] in model_next[:TOP_N]
    explained = [json.loads(e) for e in
                 next(o for o in after["outputs"] if o["name"] == EXPLANATIONS)["data"]]
    assert all("sequence" in e["sources"] and e["session"] > 0 or e["adjustment"] < 0
               for e in explained), explained


def test_the_same_over_grpc(stack: Stack, world: World) -> None:
    client = grpcclient.InferenceServerClient(stack.search.grpc_address)
    try:
        query = grpcclient.InferInput(QUERY, [1], "BYTES")
        query.set_data_from_numpy(np.array([b""], dtype=object))
        recent = grpcclient.InferInput(RECENT_ITEMS, [1, len(world.recent)], "INT64")
        recent.set_data_from_numpy(np.array([world.recent], dtype=np.int64))
        result = client.infer(SEARCH_MODEL, [query, recent], parameters={"top_n": TOP_N})
    finally:
        client.close()
    assert result.as_numpy(ITEM_IDS)[0].tolist() == _ids(_rest(stack, _body("", world.recent)))


def test_a_search_with_recent_items_carries_the_session_term(stack: Stack, world: World) -> None:
    answer = _rest(stack, _body(world.query, world.recent, explain=True))
    assert answer["parameters"][DEGRADED] == ""
    explained = [json.loads(e) for e in
                 next(o for o in answer["outputs"] if o["name"] == EXPLANATIONS)["data"]]
    assert any(e["session"] > 0 for e in explained), explained
    plain = _rest(stack, _body(world.query, explain=True))
    assert all(json.loads(e)["session"] == 0 for e in
               next(o for o in plain["outputs"] if o["name"] == EXPLANATIONS)["data"])


def test_the_sequence_model_unloaded_degrades_to_popularity_and_recovers_when_loaded(
        stack: Stack, world: World) -> None:
    following = _ids(_rest(stack, _body("", world.recent)))
    try:
        _repository(stack, "unload")
        degraded = _rest(stack, _body("", world.recent))
        assert degraded["parameters"][DEGRADED] == "sequence"
        assert json.loads(degraded["parameters"][DEGRADED_REASONS]) in (
            {"sequence": "unavailable"}, {"sequence": "circuit_open"})
        expected = [i for i in world.popular if i not in world.recent][:TOP_N]
        assert _ids(degraded) == expected
        # The ranker, served by the same Triton, is untouched: searches still rank.
        assert _rest(stack, _body(world.query))["parameters"][DEGRADED] == ""
    finally:
        _repository(stack, "load")
    assert eventually(lambda: _rest(stack, _body("", world.recent))["parameters"][DEGRADED] == "")
    assert _ids(_rest(stack, _body("", world.recent))) == following


def test_the_sequence_models_process_killed_recovers_without_a_failed_request(
        stack: Stack, world: World) -> None:
    following = _ids(_rest(stack, _body("", world.recent)))
    # One stub serves the model (one left over from an unload above may still be exiting).
    assert eventually(lambda: len(model_stubs(stack.ranker, SEQUENCE_MODEL)) == 1)
    killed = model_stubs(stack.ranker, SEQUENCE_MODEL)[0]
    killed.kill()
    answers: list[str] = []

    def serves_again() -> bool:
        # Every answer is a 200 (``_rest`` asserts it): degraded to popularity while no stub
        # answers, from the session again once the watchdog has a new stub serving the model.
        answers.append(_rest(stack, _body("", world.recent))["parameters"][DEGRADED])
        stubs = model_stubs(stack.ranker, SEQUENCE_MODEL)
        return answers[-1] == "" and bool(stubs) and killed.pid not in {p.pid for p in stubs}

    assert eventually(serves_again, timeout_s=90.0), f"last answers: {answers[-5:]}"
    assert set(answers) <= {"", "sequence"}, answers
    assert _ids(_rest(stack, _body("", world.recent))) == following
