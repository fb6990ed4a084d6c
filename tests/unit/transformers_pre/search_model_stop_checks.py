"""The search model's teardown, run by ``test_search_model_stop.py`` in a child process (kserve may not
share a process with ``tritonclient.grpc``, which other tests import): KServe's unload (what
``ModelServer`` does on SIGTERM/SIGINT) calls ``stop()``, which closes the upstream gRPC channels.
No servers: the channels are opened (lazily, as the first request opens them) but never connect."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from kserve import InferenceGRPCClient
from kserve.model_repository import ModelRepository
from kserve.protocol.infer_type import InferRequest

from shopserve.settings import SearchSettings
from transformers_pre.engine import Dependency
from transformers_pre.model import SearchModel
from transformers_pre.upstream import Upstream

# A port nothing answers on: the test never sends a request over an open channel.
NOWHERE = "127.0.0.1:9"


def _model_with_upstreams() -> SearchModel:
    model = SearchModel(SearchSettings())
    # What load() builds, without a bundle.
    model.upstreams = (Upstream(Dependency.RECALL, NOWHERE, "mf-recall", 0.1, 0),
                       Upstream(Dependency.RANKER, NOWHERE, "bert-ranker", 0.1, 0))
    model.ready = True
    return model


async def _assert_closed(clients: list[InferenceGRPCClient]) -> None:
    for client in clients:
        with pytest.raises(grpc.aio.UsageError, match="closed"):
            await client.infer(InferRequest("m", []), timeout=0.1)


def test_kserve_unload_stops_the_model_and_closes_its_channels() -> None:
    async def scenario() -> None:
        model = _model_with_upstreams()
        clients = [u.client for u in model.upstreams]
        repository = ModelRepository()
        repository.update(model)
        assert not model.engine  # KServe's engine flag: no start_engine()/stop_engine() for us
        repository.unload(model.name)  # ModelServer.stop does this for every model
        await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}))
        assert not model.ready
        assert model.upstreams == ()
        await _assert_closed(clients)

    asyncio.run(scenario())


def test_stop_outside_an_event_loop_closes_the_channels() -> None:
    model = _model_with_upstreams()

    async def open_channels() -> list[InferenceGRPCClient]:
        return [u.client for u in model.upstreams]

    clients = asyncio.run(open_channels())
    model.stop()
    assert not model.ready
    asyncio.run(_assert_closed(clients))


def test_stop_before_load_and_twice_is_harmless() -> None:
    model = SearchModel(SearchSettings())
    model.stop()
    model = _model_with_upstreams()
    model.stop()
    model.stop()
    assert not model.ready


def test_stop_waits_for_searches_in_flight() -> None:
    async def scenario() -> None:
        model = _model_with_upstreams()
        clients = [u.client for u in model.upstreams]
        model._in_flight = 1  # a search accepted before SIGTERM, still waiting on its upstreams
        model.stop()
        assert not model.ready
        await asyncio.sleep(0.2)
        assert model._closing is not None and not model._closing.done()
        model._in_flight = 0
        await asyncio.wait_for(model._closing, 1.0)
        await _assert_closed(clients)

    asyncio.run(scenario())
