"""A KServe server through ``shopserve.serving.serve()``, for ``test_kserve_patch.py``.

Run as ``python -m tests.unit.shopserve.kserve_probe HTTP GRPC WORKERS MAX_BYTES``: a model that
refuses every request with our error and prints when KServe calls its ``stop()``. A module, not a
``-c`` script, because with two workers KServe pickles the model into spawned REST workers, which
must be able to import its class.
"""

from __future__ import annotations

import sys
from typing import Any

from shopserve.errors import InvalidInput
from shopserve.protocol import SEARCH
from shopserve.serving import ContractModel, decode_inputs, serve


class Probe(ContractModel):
    """Answers every valid request with a 400 of ours; says when it is loaded and stopped."""

    def load(self) -> bool:
        print("probe model loaded", flush=True)
        self.ready = True
        return True

    async def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
        decode_inputs(self.v2_request(payload, True), self.contract)
        raise InvalidInput("input 'query': refused by the probe")

    def stop(self) -> None:
        print("probe model stopped", flush=True)
        super().stop()


def main(http_port: int, grpc_port: int, workers: int, max_request_bytes: int) -> None:
    model = Probe(SEARCH)
    model.load()
    serve([model], http_port=http_port, grpc_port=grpc_port, workers=workers,
          bind_host="127.0.0.1", grace_period=2, max_request_bytes=max_request_bytes)


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:5]))
