"""Typed errors, each carrying its HTTP status and gRPC code: one table for REST and gRPC.

Every server raises these; the KServe adapter (``shopserve.serving``) turns them into a
``{"error": ...}`` body with the HTTP status, and the gRPC interceptor KServe installs turns them
into the gRPC code, because the base class is a ``grpc_interceptor`` ``GrpcException``. The
mapping is therefore written once, here.
"""

from __future__ import annotations

from http import HTTPStatus

from grpc import StatusCode
from grpc_interceptor.exceptions import GrpcException


class ShopserveError(GrpcException):
    """Base of every error a shopserve server answers with.

    Attributes:
        http_status: Status of the REST answer.
        status_code: gRPC code of the gRPC answer.
        details: The message, which names the offending field where there is one.
    """

    http_status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR
    status_code: StatusCode = StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(details=message)
        Exception.__init__(self, message)

    @property
    def message(self) -> str:
        """The human-readable message (also ``str(error)``)."""
        return self.details

    def __str__(self) -> str:
        return self.details

    def body(self) -> dict[str, str]:
        """The REST body: ``{"error": message}``."""
        return {"error": self.details}


class InvalidInput(ShopserveError):
    """The request is malformed; the message names the field (400, INVALID_ARGUMENT)."""

    http_status = HTTPStatus.BAD_REQUEST
    status_code = StatusCode.INVALID_ARGUMENT


class ModelNotFound(ShopserveError):
    """No model of that name is served here (404, NOT_FOUND)."""

    http_status = HTTPStatus.NOT_FOUND
    status_code = StatusCode.NOT_FOUND


class ModelNotReady(ShopserveError):
    """The model is loading or failed to load (503, UNAVAILABLE)."""

    http_status = HTTPStatus.SERVICE_UNAVAILABLE
    status_code = StatusCode.UNAVAILABLE


class UpstreamUnavailable(ShopserveError):
    """A dependency refused or dropped the call (503, UNAVAILABLE)."""

    http_status = HTTPStatus.SERVICE_UNAVAILABLE
    status_code = StatusCode.UNAVAILABLE


class CircuitOpen(UpstreamUnavailable):
    """A dependency was skipped without a call: its circuit breaker is open after consecutive
    failures (503, UNAVAILABLE)."""


class UpstreamOverloaded(UpstreamUnavailable):
    """A dependency was skipped without a call: as many calls to it are in flight as it is
    admitted (its concurrency limit), so this one would only queue past its budget (503,
    UNAVAILABLE). Not a failure of the dependency: it never opens its circuit breaker."""


class UpstreamTimeout(ShopserveError):
    """A dependency did not answer within its time budget (504, DEADLINE_EXCEEDED)."""

    http_status = HTTPStatus.GATEWAY_TIMEOUT
    status_code = StatusCode.DEADLINE_EXCEEDED


class InferenceFailed(ShopserveError):
    """An internal failure while computing the answer (500, INTERNAL)."""

    http_status = HTTPStatus.INTERNAL_SERVER_ERROR
    status_code = StatusCode.INTERNAL


class BundleError(Exception):
    """An artifact bundle is missing, incomplete or corrupt; the server refuses to serve it."""


ERRORS: tuple[type[ShopserveError], ...] = (
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    UpstreamUnavailable,
    CircuitOpen,
    UpstreamOverloaded,
    UpstreamTimeout,
    InferenceFailed,
)
"""Every typed error, for tables in docs and tests."""
