"""Limits at the door, against the real search server: a body over ``max_request_bytes`` is refused
with 413 while it is read, before it is buffered, and a gRPC message over it with
``RESOURCE_EXHAUSTED``.

The search server runs alone on the tiny bundle (recall and ranker absent: it degrades, which is
beside the point here). The gRPC checks send hand-encoded ``ModelInferRequest`` bytes over a raw
channel, so this process needs neither kserve's nor tritonclient's protos (the two cannot share a
process, DESIGN.md).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import psutil
import pytest

from shopserve.protocol import QUERY, SEARCH_MODEL, USER_ID
from shopserve.settings import DEFAULT_MAX_REQUEST_BYTES
from tests.servers import Server, free_port, start_server

LIMIT = DEFAULT_MAX_REQUEST_BYTES
ERROR = {"error": f"request body over {LIMIT} bytes (max_request_bytes)"}
BODY_MB = 50
CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Iterator[Server]:
    bundle = tiny_bundle
    http_port, grpc_port = free_port(), free_port()
    server = start_server(
        "transformers_pre",
        # Nothing listens on the upstream ports: search answers from BM25 alone.
        {"SEARCH_BUNDLE_DIR": str(bundle), "SEARCH_RECALL_HOST": f"127.0.0.1:{free_port()}",
         "SEARCH_RECALL_TIMEOUT_MS": "200", "SEARCH_RANKER_TIMEOUT_MS": "200",
         "SEARCH_UPSTREAM_RETRIES": "0"},
        tmp_path_factory.mktemp("logs") / "search.log",
        args=["--http_port", str(http_port), "--grpc_port", str(grpc_port),
              "--predictor_host", f"127.0.0.1:{free_port()}", "--model_name", SEARCH_MODEL],
        http_port=http_port, grpc_port=grpc_port,
    )
    yield server
    server.stop()


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss + sum(
            c.memory_info().rss for c in process.children(recursive=True))
    except psutil.NoSuchProcess:
        return 0


class PeakRss:
    """Samples a process's RSS (with its children) every few ms while the block runs."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.baseline = self.peak = _rss(self.process)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss(self.process))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss(self.process))

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20


def _chunks(total_mb: int) -> Iterator[bytes]:
    # A JSON-looking start, then filler: the limit must not depend on what the body says.
    yield b'{"inputs": [{"name": "query", "data": ["'
    block = b"x" * CHUNK
    for _ in range(total_mb * 2**20 // CHUNK):
        yield block


def _infer_url(server: Server) -> str:
    return f"{server.http_url}/v2/models/{SEARCH_MODEL}/infer"


def _search_body() -> dict:
    return {"inputs": [{"name": QUERY, "shape": [1], "datatype": "BYTES", "data": ["shoes"]},
                       {"name": USER_ID, "shape": [1], "datatype": "INT64", "data": [-1]}]}


def test_four_concurrent_oversized_chunked_bodies_get_413_without_buffering(search: Server) -> None:
    def send() -> httpx.Response:
        # A generator body goes out chunked, without a Content-Length.
        with httpx.Client(timeout=60) as client:
            return client.post(_infer_url(search), content=_chunks(BODY_MB),
                               headers={"content-type": "application/json"})

    with PeakRss(search.process.pid) as rss, ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: send(), range(4)))
    assert [r.status_code for r in responses] == [413] * 4, [r.text for r in responses]
    assert all(r.json() == ERROR for r in responses)
    print(f"4 x {BODY_MB} MB chunked: peak RSS {rss.baseline / 2**20:.0f} MB -> "
          f"{rss.peak / 2**20:.0f} MB (+{rss.growth_mb:.1f} MB)")
    assert rss.growth_mb < 50, f"peak RSS grew by {rss.growth_mb:.1f} MB for 4 x {BODY_MB} MB"
    # The server still answers a normal search.
    ok = httpx.post(_infer_url(search), json=_search_body(), timeout=30)
    assert ok.status_code == 200, ok.text


def test_declared_oversized_body_gets_413_at_once(search: Server) -> None:
    body = b"x" * (BODY_MB * 2**20)
    with PeakRss(search.process.pid) as rss:
        response = httpx.post(_infer_url(search), content=body, timeout=60,
                              headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json() == ERROR
    assert rss.growth_mb < 50
    # Just under the limit is read (and refused as a bad body, not as too large).
    under = httpx.post(_infer_url(search), content=b"x" * (LIMIT - 1), timeout=30,
                       headers={"content-type": "application/json"})
    assert under.status_code == 400, under.text
    ok = httpx.post(_infer_url(search), json=_search_body(), timeout=30)
    assert ok.status_code == 200, ok.text


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    key, size, length = (number << 3) | 2, len(payload), b""
    while True:
        byte, size = size & 0x7F, size >> 7
        length += bytes([byte | (0x80 if size else 0)])
        if not size:
            break
    return bytes([key]) + length + payload


def _model_infer(server: Server, raw_bytes: int) -> grpc.RpcError | bytes:
    # inference.ModelInferRequest: model_name = 1, raw_input_contents = 7.
    message = _field(1, SEARCH_MODEL.encode()) + _field(7, b"\0" * raw_bytes)
    with grpc.insecure_channel(server.grpc_address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        try:
            return call(message, timeout=30)
        except grpc.RpcError as exc:
            return exc


def test_grpc_message_over_the_limit_is_resource_exhausted(search: Server) -> None:
    over = _model_infer(search, LIMIT + 1024)
    assert isinstance(over, grpc.RpcError) and over.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Under the limit the message reaches the model, which refuses it as bad input.
    under = _model_infer(search, LIMIT // 2)
    assert isinstance(under, grpc.RpcError), under
    assert under.code() == grpc.StatusCode.INVALID_ARGUMENT, under.details()


def test_log_names_the_refusals(search: Server) -> None:
    assert "max_request_bytes" in search.log()


@pytest.fixture(autouse=True)
def _alive(search: Server) -> Iterator[None]:
    yield
    assert search.process.poll() is None, Path(search.log_path).read_text()[-3000:]
