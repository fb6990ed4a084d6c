"""Checks of the request size limit (``shopserve.serving.RequestSizeLimit``), run by
``test_request_limits.py`` in a child process: ``shopserve.serving`` imports kserve, which may not
share a process with ``tritonclient.grpc`` (other tests import it, DESIGN.md).

The middleware is driven directly with hand-made ASGI messages (so the tests see exactly which
``receive`` calls happen) and through a small FastAPI app over ``httpx.ASGITransport``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from shopserve.serving import RequestSizeLimit

LIMIT = 2500
CHUNK = 1000
ERROR = {"error": f"request body over {LIMIT} bytes (max_request_bytes)"}


class Exchange:
    """One request through the middleware: what was received and what was sent."""

    def __init__(self, chunks: list[bytes], content_length: int | None = None) -> None:
        self.chunks = chunks
        self.receives = 0
        self.sent: list[dict[str, Any]] = []
        headers = [(b"content-type", b"application/json")]
        if content_length is not None:
            headers.append((b"content-length", str(content_length).encode()))
        else:
            headers.append((b"transfer-encoding", b"chunked"))
        self.scope = {"type": "http", "method": "POST", "path": "/v2/models/search/infer",
                      "headers": headers}

    async def receive(self) -> dict[str, Any]:
        index = self.receives
        self.receives += 1
        if index >= len(self.chunks):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": self.chunks[index],
                "more_body": index < len(self.chunks) - 1}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        assert len(starts) == 1, self.sent
        return int(starts[0]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


def reading_app(log: list[str], swallow: bool = False) -> Any:
    """An ASGI app that reads the whole body (as ``Request.body()`` does), then answers 200 with
    its length; with ``swallow`` it turns a failed read into its own 400 (as FastAPI does)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        log.append("called")
        body = b""
        try:
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
        except Exception as exc:
            log.append(f"read failed: {type(exc).__name__}")
            if not swallow:
                raise
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b'{"error": "bad body"}'})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})

    return app


def run(exchange: Exchange, app: Any) -> None:
    asyncio.run(RequestSizeLimit(app, max_bytes=LIMIT)(exchange.scope, exchange.receive,
                                                          exchange.send))


def test_declared_length_over_the_limit_is_refused_without_reading() -> None:
    log: list[str] = []
    exchange = Exchange([b"x" * CHUNK] * 3, content_length=3 * CHUNK)
    run(exchange, reading_app(log))
    assert exchange.status == 413
    assert json.loads(exchange.body) == ERROR
    assert exchange.receives == 0  # not a byte of the body was read
    assert log == []  # the app never ran


def test_streamed_body_is_refused_as_soon_as_it_passes_the_limit() -> None:
    log: list[str] = []
    exchange = Exchange([b"x" * CHUNK] * 10)  # 10 000 bytes, no Content-Length
    run(exchange, reading_app(log))
    assert exchange.status == 413
    assert json.loads(exchange.body) == ERROR
    assert exchange.receives == 3  # 3 000 bytes > 2 500: the rest was never asked for
    assert log == ["called", "read failed: _BodyTooLarge"]


def test_a_lying_content_length_is_caught_while_streaming() -> None:
    exchange = Exchange([b"x" * CHUNK] * 10, content_length=100)
    run(exchange, reading_app([]))
    assert exchange.status == 413
    assert exchange.receives == 3


def test_what_the_app_answers_to_the_failed_read_is_dropped() -> None:
    log: list[str] = []
    exchange = Exchange([b"x" * CHUNK] * 10)
    run(exchange, reading_app(log, swallow=True))
    assert exchange.status == 413  # one response start: the 413, not the app's 400
    assert json.loads(exchange.body) == ERROR
    assert log == ["called", "read failed: _BodyTooLarge"]


@pytest.mark.parametrize("content_length", [None, 2 * CHUNK + 500])
def test_bodies_up_to_the_limit_pass(content_length: int | None) -> None:
    exchange = Exchange([b"x" * CHUNK, b"x" * CHUNK, b"x" * 500], content_length=content_length)
    run(exchange, reading_app([]))
    assert exchange.status == 200
    assert exchange.body == str(LIMIT).encode()


def test_other_scopes_pass_untouched() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async def nothing() -> dict[str, Any]:
        return {}

    async def ignore(message: dict[str, Any]) -> None:
        return None

    asyncio.run(RequestSizeLimit(app, max_bytes=LIMIT)({"type": "lifespan"}, nothing, ignore))
    assert seen == ["lifespan"]


def test_a_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RequestSizeLimit(reading_app([]), max_bytes=0)


def _fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v2/models/{model_name}/infer")
    async def infer(model_name: str, request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse({"model": model_name, "bytes": len(body)})

    app.add_middleware(RequestSizeLimit, max_bytes=LIMIT)
    return app


async def _chunks(count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield b"x" * CHUNK


@pytest.mark.parametrize(("content", "status"), [
    (b"x" * (LIMIT + 1), 413),          # Content-Length over
    (b"x" * LIMIT, 200),                # Content-Length at the limit
    ("stream", 413),                    # chunked over
])
def test_through_fastapi(content: Any, status: int) -> None:
    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=_fastapi_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body = _chunks(10) if content == "stream" else content
            return await client.post("/v2/models/search/infer", content=body)

    response = asyncio.run(post())
    assert response.status_code == status, response.text
    if status == 413:
        assert response.json() == ERROR
    else:
        assert response.json() == {"model": "search", "bytes": LIMIT}


def test_the_patch_sets_the_rest_and_grpc_limits_once() -> None:
    from kserve import model_server
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane

    from shopserve.serving import _patch_kserve

    for limit in (4096, 8192):  # a second serve() in one process replaces the first limit
        _patch_kserve("127.0.0.1", limit)
        server = model_server.RESTServer("kserve.model_server:app",
                                         DataPlane(model_registry=ModelRepository()), None, 0)
        server.create_application()
        assert server.config.host == "127.0.0.1"
    ours = [m for m in model_server.app.user_middleware if m.cls is RequestSizeLimit]
    assert len(ours) == 1 and ours[0].kwargs == {"max_bytes": 8192}
    assert model_server.args.grpc_max_receive_message_length == 8192
    with pytest.raises(ValueError, match="positive"):
        _patch_kserve("127.0.0.1", 0)
