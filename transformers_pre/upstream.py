"""Async v2 gRPC calls to the recall predictor and the ranker, with deadlines and bounded retries.

Built on KServe's ``InferenceGRPCClient`` (``tritonclient.grpc`` cannot live beside kserve in one
process, see DESIGN.md). Retries are gRPC's own retry policy, limited to ``UNAVAILABLE`` (the
status of connection errors and of a 503 from the server), and the call's deadline bounds the
whole exchange including retries. Reconnect backoff is capped at one second so a dependency that
comes back is used again within a second, not after gRPC's default two minutes.

A small circuit breaker keeps a dead dependency from costing every request its retry backoff:
after ``breaker_failures`` consecutive failures the upstream is skipped (the caller degrades at
once) for ``breaker_cooldown_s``; then the next request probes it again, and one success closes it.

What counts as a failure: an error status, a dropped or refused connection, and a timeout. A busy
ranker is kept from timing out by the engine's admission limit (``ranker_max_concurrency``): calls
beyond what it finishes within its budget are never made (reason ``overload``), so they neither
count nor reset the count here, and a call that still runs past its budget means a ranker that
cannot keep the pace it was admitted at (stopped, hung, or the limit set above its capacity) and
counts like an error. With the limit off (0) a burst can still time calls out and open the circuit,
as before admission existed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np
from kserve import InferenceGRPCClient
from kserve.protocol.infer_type import InferInput, InferRequest

from shopserve.errors import CircuitOpen, UpstreamTimeout, UpstreamUnavailable
from shopserve.protocol import v2_datatype

log = logging.getLogger(__name__)

_CHANNEL_ARGS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class Upstream:
    """One v2 model behind gRPC.

    Args:
        name: Stage name for errors and metrics (``recall``, ``ranker``).
        host: ``host:port`` of the gRPC endpoint.
        model: Model name to call.
        timeout_s: Deadline of one call, retries included.
        retries: Retries after the first attempt, only on ``UNAVAILABLE``.
        breaker_failures: Consecutive failures that open the circuit.
        breaker_cooldown_s: How long an open circuit skips the upstream.
    """

    def __init__(self, name: str, host: str, model: str, timeout_s: float, retries: int,
                 breaker_failures: int = 3, breaker_cooldown_s: float = 1.0) -> None:
        self.name = name
        self.host = host
        self.model = model
        self.timeout_s = timeout_s
        self.retries = retries
        self.breaker_failures = breaker_failures
        self.breaker_cooldown_s = breaker_cooldown_s
        self._failures = 0
        self._open_until = 0.0
        self._client: InferenceGRPCClient | None = None

    @property
    def circuit_open(self) -> bool:
        """Whether calls are being skipped right now."""
        return time.monotonic() < self._open_until

    @property
    def client(self) -> InferenceGRPCClient:
        """The channel, opened on first use inside the serving event loop."""
        if self._client is None:
            self._client = InferenceGRPCClient(
                # maxAttempts counts the first try; gRPC rejects a policy of one attempt.
                self.host, timeout=self.timeout_s,
                retries=1 + self.retries if self.retries else 0,
                channel_args=list(_CHANNEL_ARGS),
            )
        return self._client

    async def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        parameters: Mapping[str, Any] | None = None,
        request_id: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Call the model; returns its outputs by name.

        Raises:
            UpstreamTimeout: the deadline passed.
            UpstreamUnavailable: the call failed for any other reason (named in the message).
            CircuitOpen: the circuit is open: no call was made.
        """
        if self.circuit_open:
            raise CircuitOpen(f"{self.name} ({self.host}) skipped: circuit open after "
                              f"{self._failures} consecutive failures")
        try:
            outputs = await self._infer(inputs, parameters, request_id)
        except (UpstreamTimeout, UpstreamUnavailable):
            self._failures += 1
            if self._failures >= self.breaker_failures:
                self._open_until = time.monotonic() + self.breaker_cooldown_s
            raise
        self._failures = 0
        return outputs

    async def _infer(
        self,
        inputs: Mapping[str, np.ndarray],
        parameters: Mapping[str, Any] | None,
        request_id: str | None,
    ) -> dict[str, np.ndarray]:
        infer_inputs = []
        for name, array in inputs.items():
            tensor = InferInput(name, list(array.shape), v2_datatype(array))
            tensor.set_data_from_numpy(array, binary_data=True)
            infer_inputs.append(tensor)
        request = InferRequest(self.model, infer_inputs, request_id=request_id,
                               parameters=dict(parameters) if parameters else None)
        metadata = (("x-request-id", request_id),) if request_id else None
        try:
            response = await asyncio.wait_for(
                self.client.infer(request, timeout=self.timeout_s, headers=metadata),
                self.timeout_s + 0.05,
            )
        except TimeoutError:
            raise UpstreamTimeout(f"{self.name} ({self.host}) gave no answer within "
                                  f"{self.timeout_s * 1000:.0f} ms") from None
        except grpc.RpcError as exc:
            # The async channel raises ``grpc.aio.AioRpcError``, which is no ``grpc.Call``: a
            # deadline missed on it would otherwise read as "unavailable", not as a timeout.
            call = exc if isinstance(exc, grpc.Call | grpc.aio.AioRpcError) else None
            code = call.code() if call is not None else None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise UpstreamTimeout(f"{self.name} ({self.host}) gave no answer within "
                                      f"{self.timeout_s * 1000:.0f} ms") from None
            details = call.details() if call is not None else str(exc)
            raise UpstreamUnavailable(
                f"{self.name} ({self.host}) failed: {code.name if code else 'error'}: {details}"
            ) from None
        return {out.name: out.as_numpy() for out in response.outputs}

    async def close(self) -> None:
        """Close the channel."""
        if self._client is not None:
            await self._client.close()
            self._client = None
