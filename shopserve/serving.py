"""KServe adapter pieces shared by the KServe components (recall predictor, search transformer).

This is the only core module that imports kserve; the ranker process (Triton) never imports it
(kserve and ``tritonclient.grpc`` register the same protos, see DESIGN.md).

It provides:

* :func:`decode_inputs` / :func:`encode_response`: v2 request -> validated numpy, numpy -> v2
  response, over the same code for REST (JSON or binary) and gRPC (typed or raw contents).
* :func:`request_parameters`: request parameters as plain Python values for both transports.
* :class:`ContractModel`: a ``kserve.Model`` whose v2 metadata lists the contract's real tensors.
* :func:`serve`: run a ``ModelServer`` with the error table of :mod:`shopserve.errors` installed on
  REST (gRPC reads it through ``GrpcException``), bound to the configured address, on uvloop, with
  per-request log lines off unless asked for (:func:`request_logging`).

KServe is extended through its options and hooks (``ModelServer`` arguments, ``Model.stop``); what
it has no hook for is patched in one section at the end of this module ("The KServe patch"), with
the reason and the KServe version, guarded by ``tests/unit/shopserve/test_kserve_patch.py``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent import futures
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from grpc import aio
from kserve import Model, ModelServer
from kserve import model_server as _kserve_model_server
from kserve.errors import InferenceError, inference_error_handler
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, to_http_parameters
from kserve.protocol.rest.multiprocess import server as _kserve_multiprocess_server
from kserve.protocol.rest.server import RESTServer
from prometheus_client import Counter, Gauge

from shopserve import metric_names
from shopserve.errors import InvalidInput, ModelNotReady, ShopserveError
from shopserve.protocol import (
    CONTRACTS,
    ModelContract,
    check_tensor,
    from_json_tensor,
    from_raw,
    v2_datatype,
)
from shopserve.settings import DEFAULT_MAX_REQUEST_BYTES

log = logging.getLogger(__name__)

REQUESTS_BY_CODE = Counter(
    metric_names.REQUESTS_TOTAL,
    "Inference requests answered, by model and HTTP-equivalent status code (REST and gRPC).",
    ["model", "code"],
)
MODEL_INFO = Gauge(
    metric_names.MODEL_INFO,
    "What a server loaded (value 1): bundle version and serving variant (the search's lexical "
    "index, recall's top-k index, the ranker's packaged variant).",
    ["component", "model", "version", "variant"],
)


# --------------------------------------------------------------------------------------------------
# Requests and responses.
# --------------------------------------------------------------------------------------------------


def decode_inputs(request: InferRequest, contract: ModelContract) -> dict[str, np.ndarray]:
    """Validate a request's tensors against ``contract`` and decode them into numpy.

    Raises:
        InvalidInput: an unknown or repeated input, a missing required input, a wrong datatype or
            rank, or data that does not fill the declared shape; the message names the input.
    """
    specs = {spec.name: spec for spec in contract.inputs}
    arrays: dict[str, np.ndarray] = {}
    for tensor in request.inputs:
        name = tensor.name
        if name not in specs:
            raise InvalidInput(
                f"unknown input '{name}' for model '{contract.name}'; "
                f"expected one of {sorted(specs)}"
            )
        if name in arrays:
            raise InvalidInput(f"input '{name}' is given twice")
        shape = [int(d) for d in tensor.shape]
        check_tensor(specs[name], tensor.datatype, shape)
        raw = getattr(tensor, "_raw_data", None)  # set by KServe for gRPC raw / REST binary data
        if raw is not None:
            arrays[name] = from_raw(raw, tensor.datatype, shape, name)
        else:
            data = tensor.data
            if isinstance(data, np.ndarray):
                data = data.tolist()
            arrays[name] = from_json_tensor(
                {"name": name, "datatype": tensor.datatype, "shape": shape, "data": data}
            )
    missing = [s.name for s in contract.inputs if not s.optional and s.name not in arrays]
    if missing:
        raise InvalidInput(f"missing input '{missing[0]}' for model '{contract.name}'")
    return arrays


def request_parameters(request: InferRequest) -> dict[str, Any]:
    """The request-level parameters as plain Python values, for REST and gRPC alike."""
    params = request.parameters
    if not params:
        return {}
    if isinstance(params, Mapping) and all(not hasattr(v, "WhichOneof") for v in params.values()):
        return dict(params)
    return dict(to_http_parameters(params))


def encode_response(
    request: InferRequest,
    contract: ModelContract,
    outputs: Mapping[str, np.ndarray],
    parameters: Mapping[str, Any] | None = None,
) -> InferResponse:
    """A v2 response with the contract's outputs, in the contract's order and datatypes (an
    optional output only when ``outputs`` has it)."""
    infer_outputs = []
    for spec in contract.outputs:
        if spec.optional and spec.name not in outputs:
            continue
        array = np.asarray(outputs[spec.name])
        if v2_datatype(array) != spec.datatype:
            raise TypeError(f"output '{spec.name}' is {v2_datatype(array)}, not {spec.datatype}")
        out = InferOutput(name=spec.name, shape=list(array.shape), datatype=spec.datatype)
        out.set_data_from_numpy(array, binary_data=request.use_binary_outputs)
        infer_outputs.append(out)
    return InferResponse(
        response_id=request.id or "",
        model_name=contract.name,
        infer_outputs=infer_outputs,
        from_grpc=request.from_grpc,
        parameters=dict(parameters) if parameters else None,
        use_binary_outputs=request.use_binary_outputs,
    )


class ContractModel(Model):
    """A ``kserve.Model`` that reports the contract's tensors in its v2 metadata."""

    contract: ModelContract

    def __init__(self, contract: ModelContract, name: str | None = None) -> None:
        super().__init__(name or contract.name)
        self.contract = contract

    async def __call__(self, body: Any, headers: dict[str, str] | None = None,
                       verb: Any = None) -> Any:
        """KServe's call, counting each answer by status code for the error-ratio alerts."""
        try:
            result = await (super().__call__(body, headers) if verb is None
                            else super().__call__(body, headers, verb))
        except ShopserveError as exc:
            REQUESTS_BY_CODE.labels(self.name, str(int(exc.http_status))).inc()
            raise
        except Exception:
            REQUESTS_BY_CODE.labels(self.name, "500").inc()
            raise
        REQUESTS_BY_CODE.labels(self.name, "200").inc()
        return result

    def v2_request(self, payload: Any, loaded: bool) -> InferRequest:
        """The payload as a v2 request, or the typed error: not loaded (503), not v2 (400)."""
        if not loaded:
            raise ModelNotReady(f"model '{self.name}' is not loaded")
        if not isinstance(payload, InferRequest):
            raise InvalidInput("expected a v2 inference request")
        return payload

    def get_input_types(self) -> list[dict[str, Any]]:
        """v2 metadata of the inputs."""
        return [spec.metadata() for spec in self.contract.inputs]

    def get_output_types(self) -> list[dict[str, Any]]:
        """v2 metadata of the outputs."""
        return [spec.metadata() for spec in self.contract.outputs]


# --------------------------------------------------------------------------------------------------
# The server.
# --------------------------------------------------------------------------------------------------


async def _shopserve_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ShopserveError)
    # Logged once here, at the boundary; payloads are never logged.
    level = logging.WARNING if exc.http_status < 500 else logging.ERROR
    log.log(level, "%s: %s", type(exc).__name__, exc)
    return JSONResponse(status_code=int(exc.http_status), content=exc.body())


async def _request_validation_handler(_: Request, exc: Exception) -> JSONResponse:
    # FastAPI answers 422 with its own body shape; the v2 contract says 400 {"error": ...}.
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', 'invalid')}"
        for err in exc.errors()[:3]
    )
    return JSONResponse(status_code=400, content={"error": f"invalid request body ({problems})"})


async def _kserve_inference_error_handler(request: Request, exc: Exception) -> JSONResponse:
    # KServe turns REST binary BYTES inputs into text before the model sees them and answers a
    # non-UTF-8 element with a 500 InferenceError; that is bad input, so answer 400 naming it.
    assert isinstance(exc, InferenceError)
    if str(exc.reason).startswith("Failed to encode"):
        contract = CONTRACTS.get(request.path_params.get("model_name", ""))
        names = [t.name for t in contract.inputs if t.datatype == "BYTES"] if contract else []
        field = f"input '{names[0]}'" if len(names) == 1 else "a BYTES input"
        log.warning("rejected non-UTF-8 BYTES data in %s", field)
        return JSONResponse(status_code=400, content={"error": f"{field}: an element is not valid "
                                                      "UTF-8 (BYTES over REST must be UTF-8 text)"})
    return await inference_error_handler(request, exc)


def serve(
    models: Sequence[Model],
    *,
    http_port: int,
    grpc_port: int,
    workers: int = 1,
    bind_host: str = "0.0.0.0",
    grace_period: int = 10,
    event_loop: str = "auto",
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    request_logs: bool = False,
) -> None:
    """Run KServe's ModelServer for ``models`` until SIGINT/SIGTERM.

    KServe's own options do what they can (ports, workers, grace period, latency logging, event
    loop, the model registry: :class:`ServedModels`); at SIGINT/SIGTERM KServe calls each model's
    ``stop()``, the place to close what a model holds. What KServe has no option for (the bind
    address, our REST error table, the size limit, readiness that tells the truth) is
    :func:`_patch_kserve` and :class:`ServedDataPlane`.

    Args:
        models: Loaded models to register.
        http_port: REST port (v2 endpoints and ``/metrics``).
        grpc_port: gRPC ``GRPCInferenceService`` port.
        workers: uvicorn worker processes (1 keeps one copy of the model in memory; more spawn
            REST workers with a copy each, behind the same address, errors and size limit).
        bind_host: Address to listen on: ``0.0.0.0`` in a pod, ``127.0.0.1`` on one machine.
        grace_period: Seconds to finish in-flight requests on shutdown.
        event_loop: ``auto`` (uvloop when installed, KServe's own default), ``uvloop`` or
            ``asyncio``.
        max_request_bytes: Largest request body (REST) or message (gRPC) accepted: REST answers
            413 while reading a larger body, gRPC ``RESOURCE_EXHAUSTED`` (see
            :class:`RequestSizeLimit`).
        request_logs: Log a line per request (uvicorn's access log, KServe's ``kserve.trace``
            timing lines and its gRPC method line); off, the servers log only what is not
            per request (see :func:`request_logging`).
    """
    _patch_kserve(bind_host, max_request_bytes, request_logs)
    server = ModelServer(
        http_port=http_port,
        grpc_port=grpc_port,
        workers=workers,
        grace_period=grace_period,
        enable_docs_url=False,
        # KServe's per-request model latency line repeats what the stage histograms and
        # ``stage_ms`` already say, at a cost on every request: only when asked for.
        enable_latency_logging=request_logs,
        event_loop=event_loop,
        registered_models=ServedModels(),
    )
    # ModelServer configured KServe's loggers just now (KSERVE_LOG_CONFIG); REST workers configure
    # them again in their own process and apply this in ShopserveRESTServer.create_application.
    request_logging(request_logs)
    server.dataplane = ServedDataPlane(model_registry=server.registered_models)
    _install_event_loop(event_loop)
    server.start(list(models))


#: Loggers that write one record per request: uvicorn's access log and KServe's trace logger (the
#: REST ``TimingMiddleware`` line KServe always installs, and the model latency line).
PER_REQUEST_LOGGERS = ("uvicorn.access", "kserve.trace")


class _PerRequestRecords(logging.Filter):
    """Drops the per-request records KServe writes to its main logger (its gRPC
    ``LoggingInterceptor``'s ``grpc method: ...`` line, at INFO for every call)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.INFO
                    and str(record.msg).startswith("grpc method:"))


_PER_REQUEST_FILTER = _PerRequestRecords()


class _UpstreamFailureRecords(logging.Filter):
    """Drops KServe's ``InferenceGRPCClient`` record of a failed call (``Failed to infer: ...`` at
    ERROR on ``kserve.trace``, a traceback for every timed-out or refused upstream call). The
    caller accounts for each failure itself (the transformer's degraded answers: the first in full,
    then counts per interval), so under overload this would be the one line per request left."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to infer")


_UPSTREAM_FAILURE_FILTER = _UpstreamFailureRecords()


def request_logging(enabled: bool) -> None:
    """Turn the servers' per-request log lines on or off, through KServe's and uvicorn's loggers.

    KServe has an option for only one of them (``enable_latency_logging``, the model latency line);
    its REST ``TimingMiddleware`` writes to the ``kserve.trace`` logger on every request whatever
    the options, uvicorn's access log to ``uvicorn.access``, its gRPC interceptor a line to
    ``kserve``, and its gRPC client a traceback to ``kserve.trace`` for every failed upstream call.
    Off, the two per-request loggers log only warnings and above, and the gRPC line and the client's
    failure records are filtered out (the transformer logs its degraded answers itself, summarised
    per interval); the other records of ``kserve`` (start-up, errors) are untouched. On, the
    per-request loggers log at INFO. Idempotent; called again in every REST worker, after KServe
    configured logging there.
    """
    level = logging.INFO if enabled else logging.WARNING
    for name in PER_REQUEST_LOGGERS:
        logging.getLogger(name).setLevel(level)
    for logger, quiet in ((logging.getLogger("kserve"), _PER_REQUEST_FILTER),
                          (logging.getLogger("kserve.trace"), _UPSTREAM_FAILURE_FILTER)):
        if enabled:
            logger.removeFilter(quiet)
        elif quiet not in logger.filters:
            logger.addFilter(quiet)


def _install_event_loop(event_loop: str) -> None:
    """Make ``asyncio.run`` in ``ModelServer.start`` create the chosen loop.

    KServe's ``event_loop`` reaches only uvicorn's config (0.21.0); with one worker KServe runs
    uvicorn and the gRPC server inside its own ``asyncio.run``, which builds the default
    (pure-Python) loop, so ``auto`` never gets uvloop. gRPC aio and uvicorn both run on it: search
    without the ranker answered 765 instead of 336 requests/s from one client on 2 cores.
    ``ModelServer.setup_event_loop`` asks for the current loop before ``asyncio.run`` exists, which
    uvloop's policy refuses: one is set for it.
    """
    if event_loop not in ("auto", "uvloop", "asyncio"):
        raise ValueError(f"event_loop must be auto, uvloop or asyncio, not {event_loop!r}")
    if event_loop == "asyncio":
        return
    try:
        import uvloop
    except ImportError:
        if event_loop == "uvloop":
            raise
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())


# --------------------------------------------------------------------------------------------------
# Readiness that tells the truth: a server is ready only while every model it serves is.
# --------------------------------------------------------------------------------------------------
# KServe 0.21.0 answers ``/v2/health/ready`` (and gRPC ``ServerReady``) with ``True`` whatever its
# models' state, and its repository API (``POST /v2/repository/models/{name}/unload``, gRPC
# ``RepositoryModelUnload``) can remove the one model a shopserve server exists for: it then kept
# answering ready while every inference answered 404, so a pod in that state stayed in rotation.
# Here the server remembers the models it was started with (KServe's ``registered_models`` option
# takes the registry), is ready only while each of them is registered and ready, answers 503 (gRPC
# UNAVAILABLE) for an inference on one that was unloaded, 404 only for a name it never served, and
# loads an unloaded one again on ``POST /v2/repository/models/{name}/load``, as Triton's explicit
# model control does. During shutdown KServe unloads every model, so a stopping server also reports
# not ready while it drains.


class ServedModels(ModelRepository):
    """KServe's model registry, remembering every model registered so it can be loaded again."""

    def __init__(self) -> None:
        super().__init__()
        self.served: dict[str, Model] = {}

    def update(self, model: Any, name: str | None = None) -> None:
        """Register ``model`` (KServe's registration path) and remember it as served here."""
        super().update(model, name)
        self.served[name or model.name] = model

    def load(self, name: str) -> bool:
        """Load a served model again after an unload (KServe's repository ``load``)."""
        model = self.served.get(name)
        if model is None:
            return False  # KServe's extension answers that it could not be made ready
        if name not in self.models:
            log.info("loading model '%s' again (repository API)", name)
            model.load()
            self.models[name] = model
        return bool(model.ready)

    def is_unloaded(self, name: str) -> bool:
        """Whether ``name`` was served here and is not registered now."""
        return name in self.served and name not in self.models

    async def all_ready(self) -> bool:
        """Every served model registered and ready (False before any was registered)."""
        if not self.served:
            return False
        return all([await self.is_model_ready(name) for name in self.served])


class ServedDataPlane(DataPlane):
    """KServe's data plane with readiness from :class:`ServedModels`."""

    @property
    def served_models(self) -> ServedModels:
        """The registry, which :func:`serve` makes a :class:`ServedModels`."""
        registry = self.model_registry
        assert isinstance(registry, ServedModels)
        return registry

    async def ready(self) -> bool:
        """Server readiness: every served model registered and ready."""
        return await self.served_models.all_ready() and await super().ready()

    async def model_ready(self, model_name: str, disable_predictor_health_check: bool = False
                          ) -> bool:
        """An unloaded served model is not ready (REST answers 503), not unknown (404)."""
        if self.served_models.is_unloaded(model_name):
            return False
        return bool(await super().model_ready(model_name, disable_predictor_health_check))

    async def get_model(self, name: str) -> Any:
        """The model to infer with; an unloaded served model is :class:`ModelNotReady` (503)."""
        if self.served_models.is_unloaded(name):
            raise ModelNotReady(f"model '{name}' is not loaded (unloaded through the repository "
                                f"API; POST /v2/repository/models/{name}/load loads it again)")
        return await super().get_model(name)


# --------------------------------------------------------------------------------------------------
# Limits at the door: a request body over ``max_request_bytes`` is refused while it is read.
# --------------------------------------------------------------------------------------------------
#
# Why: uvicorn and FastAPI read a whole body into memory before a route sees it, whatever its size;
# four concurrent 200 MB bodies took search from 0.4 GB to 2.24 GB of RSS (past its 2Gi limit)
# before each was refused with a 400. REST: a pure ASGI middleware on KServe's FastAPI app refuses
# a declared ``Content-Length`` over the limit at once, without reading, and counts the bytes of an
# undeclared (chunked) body as they stream, answering 413 as soon as the count passes the limit;
# uvicorn then discards the rest of the body as it arrives instead of buffering it. gRPC: KServe's
# ``grpc_max_receive_message_length`` option; gRPC itself answers ``RESOURCE_EXHAUSTED``.

_Scope = dict[str, Any]
_Message = dict[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]


#: A v2 inference path, naming the model.
_INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/[^/]+)?/infer")


class _BodyTooLarge(Exception):
    """Raised into the app from ``receive`` once a streamed body passes the limit."""


class RequestSizeLimit:
    """ASGI middleware: answer 413 ``{"error": ...}`` to a body over ``max_bytes``, before it is
    buffered.

    A ``Content-Length`` over the limit is refused before the app runs; a body without one is
    counted chunk by chunk as the app receives it, and the 413 goes out the moment the count passes
    the limit: the app's ``receive`` then raises and whatever it tries to send is dropped.
    Non-HTTP scopes (lifespan, websockets) pass untouched.
    """

    def __init__(self, app: Callable[[_Scope, _Receive, _Send], Awaitable[None]],
                 max_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    def _error_body(self) -> bytes:
        return json.dumps(
            {"error": f"request body over {self.max_bytes} bytes (max_request_bytes)"}
        ).encode()

    async def _refuse(self, scope: _Scope, send: _Send) -> None:
        # Counted with the model's answers, as ContractModel counts them, when the path names one.
        model = _INFER_PATH.fullmatch(scope.get("path", ""))
        if model:
            REQUESTS_BY_CODE.labels(model.group(1), "413").inc()
        body = self._error_body()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        """Run the app on ``scope`` with the body limit in force."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            log.warning("refused a request body of %d bytes (max_request_bytes %d)",
                        declared, self.max_bytes)
            await self._refuse(scope, send)
            return
        received = 0
        refused = False
        started = False

        async def limited_receive() -> _Message:
            nonlocal received, refused
            if refused:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    log.warning("refused a streamed request body at %d bytes "
                                "(max_request_bytes %d)", received, self.max_bytes)
                    if not started:
                        await self._refuse(scope, send)
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: _Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 is the answer; drop what the app makes of the failed read
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if not refused:  # pragma: no cover - raised only after refusing
                raise


def _content_length(scope: _Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # uvicorn refuses a malformed length itself
    return None


# --------------------------------------------------------------------------------------------------
# The KServe patch: the one place shopserve changes KServe's internals. Written for KServe 0.21.0.
# --------------------------------------------------------------------------------------------------
#
# Why: KServe 0.21.0 has no option for
#   * the address its servers listen on: ``RESTServer.__init__`` builds its uvicorn config with
#     ``host="0.0.0.0"`` and ``GRPCServer.start`` adds the port ``[::]:<port>``; we bind to
#     127.0.0.1 locally (DESIGN.md: every local port on loopback);
#   * REST exception handlers of ours: ``RESTServer.create_application`` registers KServe's own in
#     ``_add_exception_handlers`` when the server starts, after any of ours, so for a class both
#     handle (``InferenceError``: non-UTF-8 BYTES is bad input, 400, not KServe's 500) KServe's would
#     win. ``ModelServer.register_exception_handler`` is for the event loop, not for HTTP;
#   * a request-size limit: no middleware option on ``ModelServer`` and no constructor argument for
#     ``grpc_max_receive_message_length``;
#   * server readiness from the models: ``ModelServer.__init__`` builds a plain ``DataPlane``, whose
#     ``ready()`` is always True; :func:`serve` replaces it with a :class:`ServedDataPlane`.
# How: ``ModelServer.start`` builds its servers from the names ``RESTServer`` and ``GRPCServer`` in
# ``kserve.model_server``, and with ``workers`` > 1 ``RESTServerMultiProcess`` builds its REST
# server from the name ``RESTServer`` in ``kserve.protocol.rest.multiprocess.server`` and sends it,
# pickled, to each spawned worker, which runs ``create_application`` there on a freshly imported
# ``kserve.model_server.app``. :func:`_patch_kserve` points those names at the classes below,
# with their settings bound by ``functools.partial``: module-level classes, so that the REST server
# travels to spawned workers, and everything the app needs (host, handlers, the size-limit
# middleware) is added in ``create_application``, which runs in whichever process serves. The gRPC
# limit is KServe's ``grpc_max_receive_message_length`` option on ``kserve.model_server.args``,
# the parsed arguments ``ModelServer.start`` hands its gRPC server. The gRPC server copies the body
# of ``GRPCServer.start`` (changing only the address), since the address is built inside it.
# Guard: tests/unit/shopserve/test_kserve_patch.py fails when an upgrade moves what this relies on
# (the version, the names and signatures, the source of ``GRPCServer.start`` by its hash, the host,
# handlers, limit and readiness taking effect with one and with two workers, the copied start
# serving on the host). After an upgrade, check whether KServe gained options for these, and drop
# what it did.

#: The KServe version the patch was written for.
KSERVE_VERSION = "0.21.0"
#: sha256 of ``inspect.getsource(kserve.protocol.grpc.server.GRPCServer.start)`` in that version,
#: the body ``BoundGRPCServer.start`` copies.
GRPC_START_SHA256 = "f4ea7b4eb6f0d9f7ac4947c7bda31531f4bf870529f9de0964a2dad2f6a7fb5e"


def _patch_kserve(bind_host: str, max_request_bytes: int, request_logs: bool = False) -> None:
    """Make ``ModelServer.start`` build servers that listen on ``bind_host`` with our REST errors,
    refuse request bodies (REST) or messages (gRPC) over ``max_request_bytes``, and log per
    request only with ``request_logs``."""
    if max_request_bytes < 1:
        raise ValueError(f"max_request_bytes must be positive, not {max_request_bytes}")
    rest = functools.partial(ShopserveRESTServer, bind_host=bind_host or "0.0.0.0",
                             max_request_bytes=max_request_bytes, request_logs=request_logs)
    _kserve_model_server.RESTServer = rest  # type: ignore[misc]
    _kserve_multiprocess_server.RESTServer = rest  # type: ignore[misc]
    _kserve_model_server.args.grpc_max_receive_message_length = max_request_bytes
    if bind_host not in ("0.0.0.0", "::", ""):
        _kserve_model_server.GRPCServer = functools.partial(  # type: ignore[misc]
            BoundGRPCServer, bind_host=bind_host)


class ShopserveRESTServer(RESTServer):
    """KServe's REST server, listening on ``bind_host``, with shopserve's error table, the
    request-size limit, and per-request log lines only with ``request_logs``."""

    def __init__(self, *args: Any, bind_host: str, max_request_bytes: int,
                 request_logs: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.host = bind_host  # the uvicorn config its server (or its workers' socket) uses
        self.max_request_bytes = max_request_bytes
        self.request_logs = request_logs

    def create_application(self) -> None:
        """KServe's app set-up, then the size limit as the outermost middleware; per-request log
        lines set here too, in the process that serves (a spawned worker configured KServe's
        logging afresh before this)."""
        request_logging(self.request_logs)
        super().create_application()
        app = _kserve_model_server.app  # the app KServe just set up, in this process
        app.user_middleware = [m for m in app.user_middleware if m.cls is not RequestSizeLimit]
        app.add_middleware(RequestSizeLimit, max_bytes=self.max_request_bytes)

    def _add_exception_handlers(self, app: Any) -> None:
        super()._add_exception_handlers(app)
        # Registered after KServe's so that ours win for the classes both handle.
        app.add_exception_handler(ShopserveError, _shopserve_error_handler)
        app.add_exception_handler(RequestValidationError, _request_validation_handler)
        app.add_exception_handler(InferenceError, _kserve_inference_error_handler)


class BoundGRPCServer(GRPCServer):
    """KServe's gRPC server, listening on ``bind_host``; the rest as in ``GRPCServer.start``."""

    def __init__(self, *args: Any, bind_host: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bind_host = bind_host

    async def start(self, max_workers: int) -> None:
        # Copied from KServe 0.21.0 GRPCServer.start (GRPC_START_SHA256); only the address
        # differs.
        servicer = InferenceServicer(self._data_plane, self._model_repository_extension)
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
            options=[
                ("grpc.max_send_message_length",
                 self._kwargs.get("grpc_max_send_message_length")),
                ("grpc.max_receive_message_length",
                 self._kwargs.get("grpc_max_receive_message_length")),
            ],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            servicer, self._server
        )
        self._server.add_insecure_port(f"{self.bind_host}:{self._port}")
        log.info("gRPC server listening on %s:%s", self.bind_host, self._port)
        await self._server.start()
        await self._server.wait_for_termination()
