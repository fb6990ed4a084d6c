"""The KServe patch in ``shopserve.serving`` still fits the installed KServe.

``shopserve.serving`` patches what KServe 0.21.0 has no hook for (bind address, REST error handlers
after KServe's) in one section. These tests fail when a KServe upgrade moves what that section
relies upon: first the facts (version, names, signatures, the source the gRPC start was copied
from), then the behaviour (a real ``serve()`` on loopback with our errors, ``Model.stop`` called at
shutdown). When one fails, read the section's comment, compare with the new KServe, and drop the
parts KServe now has options for.

kserve runs only in child processes here: it cannot share a process with ``tritonclient.grpc``,
which other tests import (DESIGN.md).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from pipeline.supervisor import LOOPBACK, free_port
from shopserve.process import ChildProcess

ROOT = Path(__file__).resolve().parents[3]
#: The probe server's request-size limit, small enough to cross with a test body.
MAX_REQUEST_BYTES = 64 * 1024

# What the patch relies upon, read in a child that imports kserve (and never tritonclient.grpc).
FACTS = r"""
import hashlib, inspect, json
from importlib import metadata

from kserve import model_server
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.multiprocess import server as multiprocess_server
from kserve.protocol.rest.server import RESTServer
from shopserve import serving

def params(fn):
    return list(inspect.signature(fn).parameters)

print(json.dumps({
    "version": metadata.version("kserve"),
    "patched_for": serving.KSERVE_VERSION,
    "grpc_start_sha256": hashlib.sha256(inspect.getsource(GRPCServer.start).encode()).hexdigest(),
    "copied_sha256": serving.GRPC_START_SHA256,
    "module_names": [model_server.RESTServer is RESTServer, model_server.GRPCServer is GRPCServer],
    "start_globals": sorted(set(model_server.ModelServer.start.__code__.co_names)
                            & {"RESTServer", "GRPCServer", "asyncio"}),
    "create_application_calls": sorted(set(RESTServer.create_application.__code__.co_names)
                                       & {"_add_exception_handlers"}),
    "rest_init": params(RESTServer.__init__),
    "rest_handlers": params(RESTServer._add_exception_handlers),
    "grpc_init": params(GRPCServer.__init__),
    "grpc_start": params(GRPCServer.start),
    "limit_hooks": [type(model_server.app).__name__,
                    hasattr(model_server.args, "grpc_max_receive_message_length")],
    "multiprocess_names": [multiprocess_server.RESTServer is RESTServer,
                           "RESTServer" in multiprocess_server.RESTServerMultiProcess.__init__
                           .__code__.co_names],
    "create_application_app": "kserve.model_server:app"
                              in RESTServer.create_application.__code__.co_consts,
    "model_server_init": params(model_server.ModelServer.__init__),
    "dataplane": [params(DataPlane.__init__), params(DataPlane.ready),
                  params(DataPlane.model_ready), params(DataPlane.get_model)],
    "servicer_ready_calls": sorted((set(InferenceServicer.ServerReady.__code__.co_names)
                                    | set(InferenceServicer.ModelReady.__code__.co_names))
                                   & {"ready", "model_ready"}),
    "repository": [params(ModelRepository.update), params(ModelRepository.load)],
    "rest_config_host": serving.ShopserveRESTServer(
        "kserve.model_server:app", None, None, 0, bind_host="127.0.0.2",
        max_request_bytes=1)._server.config.host,
}))
"""

@pytest.fixture(scope="module")
def facts() -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", FACTS], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_kserve_is_the_version_the_patch_was_written_for(facts: dict[str, Any]) -> None:
    assert facts["version"] == facts["patched_for"] == "0.21.0", (
        "KServe changed: review 'The KServe patch' in shopserve/serving.py, then update "
        "KSERVE_VERSION")


def test_the_copied_grpc_start_matches_kserves(facts: dict[str, Any]) -> None:
    assert facts["grpc_start_sha256"] == facts["copied_sha256"], (
        "GRPCServer.start changed: copy its new body into _bound_grpc_server (binding to the host) "
        "and update GRPC_START_SHA256")


def test_model_server_builds_its_servers_from_the_patched_names(facts: dict[str, Any]) -> None:
    assert facts["module_names"] == [True, True]
    assert facts["start_globals"] == ["GRPCServer", "RESTServer", "asyncio"]
    assert facts["create_application_calls"] == ["_add_exception_handlers"]


def test_the_request_limit_finds_kserves_app_and_grpc_option(facts: dict[str, Any]) -> None:
    # limit_requests: our middleware on the module's FastAPI app, the gRPC limit in its args.
    assert facts["limit_hooks"] == ["FastAPI", True]


def test_the_overridden_methods_keep_their_signatures(facts: dict[str, Any]) -> None:
    assert facts["rest_init"] == ["self", "app", "data_plane", "model_repository_extension",
                                  "http_port", "access_log_format", "workers", "grace_period",
                                  "event_loop", "timeout_keep_alive", "ssl_certfile", "ssl_keyfile"]
    assert facts["rest_handlers"] == ["self", "app"]
    assert facts["grpc_init"] == ["self", "port", "data_plane", "model_repository_extension",
                                  "kwargs", "grace_period"]
    assert facts["grpc_start"] == ["self", "max_workers"]


def test_the_rest_host_reaches_the_uvicorn_server(facts: dict[str, Any]) -> None:
    assert facts["rest_config_host"] == "127.0.0.2"


def test_spawned_rest_workers_build_the_patched_server(facts: dict[str, Any]) -> None:
    # RESTServerMultiProcess takes RESTServer from its own module; the app it creates in each
    # worker is imported by name, the one ShopserveRESTServer.create_application limits.
    assert facts["multiprocess_names"] == [True, True]
    assert facts["create_application_app"] is True


def test_readiness_hooks_keep_their_shape(facts: dict[str, Any]) -> None:
    # serve() passes ServedModels as registered_models and swaps in a ServedDataPlane.
    assert "registered_models" in facts["model_server_init"]
    assert facts["dataplane"] == [["self", "model_registry"], ["self"],
                                  ["self", "model_name", "disable_predictor_health_check"],
                                  ["self", "name"]]
    assert facts["servicer_ready_calls"] == ["model_ready", "ready"]
    assert facts["repository"] == [["self", "model", "name"], ["self", "name"]]


def _listen_addresses(port: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Addresses with a TCP socket listening on ``port`` in this network namespace (Linux)."""
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).is_file():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, len(address), 8))
            ip = ipaddress.ip_address(raw)
            # gRPC listens on 127.0.0.1 through an IPv6 socket (::ffff:127.0.0.1).
            found.add(ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip)
    return found


@pytest.fixture(scope="module", params=[1, 2], ids=["1 worker", "2 workers"])
def probe(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[ChildProcess, int, int]]:
    """The probe server with one worker, then with two (REST from spawned worker processes)."""
    http_port, grpc_port = free_port(), free_port()
    child = ChildProcess(
        "kserve-probe", [sys.executable, "-m", "tests.unit.shopserve.kserve_probe", str(http_port),
                         str(grpc_port), str(request.param), str(MAX_REQUEST_BYTES)],
        env={"PYTHONUNBUFFERED": "1"}, cwd=ROOT,
        log_path=tmp_path_factory.mktemp("logs") / "probe.log",
        ready=f"http://{LOOPBACK}:{http_port}/v2/health/ready", tail_lines=None,
    )
    with child:
        child.wait_ready(90)
        yield child, http_port, grpc_port


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="reads Linux's socket table")
def test_rest_and_grpc_listen_on_the_bind_host_only(probe: tuple[ChildProcess, int, int]) -> None:
    _, http_port, grpc_port = probe
    assert _listen_addresses(http_port) == {ipaddress.ip_address(LOOPBACK)}
    assert _listen_addresses(grpc_port) == {ipaddress.ip_address(LOOPBACK)}


def test_the_copied_grpc_start_serves_with_kserves_interceptors(
    probe: tuple[ChildProcess, int, int],
) -> None:
    _, _, grpc_port = probe

    # ModelReadyRequest{name} and ModelReadyResponse{ready} by hand: no proto module beside kserve.
    def model_ready(name: str) -> bytes:
        request = b"\x0a" + bytes([len(name)]) + name.encode()
        with grpc.insecure_channel(f"{LOOPBACK}:{grpc_port}") as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelReady",
                                       request_serializer=None, response_deserializer=None)
            return bytes(call(request, timeout=10))

    assert model_ready("search") == b"\x08\x01"
    with pytest.raises(grpc.RpcError) as info:
        model_ready("nope")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # KServe's interceptor still mapped it


@pytest.mark.parametrize(("case", "content", "headers", "error"), [
    ("our error", json.dumps({"inputs": [{"name": "query", "shape": [1], "datatype": "BYTES",
                                          "data": ["shoes"]}]}).encode(),
     {}, "input 'query': refused by the probe"),
    ("request validation", b"{not json", {}, "invalid request body"),
    ("non-UTF-8 binary BYTES", None, None, "input 'query': an element is not valid UTF-8"),
])
def test_rest_answers_with_our_error_table(
    probe: tuple[ChildProcess, int, int], case: str, content: bytes | None,
    headers: dict[str, str] | None, error: str,
) -> None:
    _, http_port, _ = probe
    if content is None:  # the v2 binary extension: a JSON header, then the raw tensor
        header = json.dumps({"inputs": [{"name": "query", "shape": [1], "datatype": "BYTES",
                                         "parameters": {"binary_data_size": 8}}]}).encode()
        content = header + (4).to_bytes(4, "little") + b"caf\xe9"
        headers = {"Inference-Header-Content-Length": str(len(header)),
                   "content-type": "application/octet-stream"}
    response = httpx.post(f"http://{LOOPBACK}:{http_port}/v2/models/search/infer",
                          content=content, timeout=10,
                          headers=headers or {"content-type": "application/json"})
    assert response.status_code == 400, (case, response.text)
    assert response.json()["error"].startswith(error), (case, response.text)


def test_a_body_over_the_limit_is_413_in_every_worker(probe: tuple[ChildProcess, int, int]
                                                      ) -> None:
    _, http_port, _ = probe
    for _ in range(4):  # with two workers, requests land on both
        response = httpx.post(f"http://{LOOPBACK}:{http_port}/v2/models/search/infer",
                              content=b"x" * (MAX_REQUEST_BYTES + 1), timeout=10,
                              headers={"content-type": "application/json"})
        assert response.status_code == 413, response.text
        assert "max_request_bytes" in response.json()["error"]


# One worker: with two, each REST worker holds its own copy of the registry (KServe's
# multi-process server), so an unload over REST reaches only the worker that took it.
@pytest.mark.parametrize("probe", [1], indirect=True, ids=["1 worker"])
def test_an_unloaded_model_makes_the_server_not_ready_until_it_is_loaded_again(
    probe: tuple[ChildProcess, int, int],
) -> None:
    child, http_port, grpc_port = probe
    base = f"http://{LOOPBACK}:{http_port}"
    body = {"inputs": [{"name": "query", "shape": [1], "datatype": "BYTES", "data": ["shoes"]}]}
    try:
        assert httpx.post(f"{base}/v2/repository/models/search/unload", timeout=10).status_code == 200
        assert httpx.get(f"{base}/v2/health/ready", timeout=10).status_code == 503
        assert httpx.get(f"{base}/v2/models/search/ready", timeout=10).status_code == 503
        infer = httpx.post(f"{base}/v2/models/search/infer", json=body, timeout=10)
        assert infer.status_code == 503, infer.text
        assert httpx.post(f"{base}/v2/models/nope/infer", json=body, timeout=10).status_code == 404
        assert httpx.get(f"{base}/v2/health/live", timeout=10).status_code == 200
        assert _grpc_call(grpc_port, "ServerReady", b"") == b""  # ready=false: the empty message
    finally:
        load = httpx.post(f"{base}/v2/repository/models/search/load", timeout=30)
    assert load.status_code == 200, load.text
    assert httpx.get(f"{base}/v2/health/ready", timeout=10).status_code == 200
    assert _grpc_call(grpc_port, "ServerReady", b"") == b"\x08\x01"
    assert child.log().count("probe model loaded") == 2
    assert httpx.post(f"{base}/v2/models/search/infer", json=body, timeout=10).status_code == 400


def _grpc_call(port: int, method: str, request: bytes) -> bytes:
    """A raw unary call on KServe's gRPC service (no proto module beside kserve here)."""
    with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}",
                                   request_serializer=None, response_deserializer=None)
        return bytes(call(request, timeout=10))


def test_kserve_calls_model_stop_at_shutdown(probe: tuple[ChildProcess, int, int]) -> None:
    child, _, _ = probe
    assert child.stop() == 0, child.log()
    assert "probe model stopped" in child.log()
