"""gRPC side of the sequence model's Triton integration test, run in a child process.

``tritonclient.grpc`` and kserve cannot share a process (DESIGN.md), so, as for the ranker
(``ranker_grpc_client.py``), the gRPC client speaks from here and prints its observations as JSON.

Usage: ``python tests/integration/predictors/ranker/sequence_grpc_client.py HOST:PORT SESSIONS.npy``
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from shopserve.protocol import ITEM_SEQUENCE, NEXT_ITEMS, NEXT_SCORES, SEQUENCE_MODEL, SESSION_EMBEDDING


def _input(array: np.ndarray, datatype: str = "INT64") -> list[Any]:
    tensor = grpcclient.InferInput(ITEM_SEQUENCE, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return [tensor]


def _error(client: grpcclient.InferenceServerClient, array: np.ndarray,
           datatype: str = "INT64") -> str | None:
    try:
        client.infer(SEQUENCE_MODEL, _input(array, datatype))
    except InferenceServerException as exc:
        return f"{exc.status()}: {exc.message()}"
    return None


def main(url: str, sessions_path: str, n_items: int) -> dict[str, Any]:
    sessions = np.load(sessions_path, allow_pickle=False)
    client = grpcclient.InferenceServerClient(url)
    metadata = client.get_model_metadata(SEQUENCE_MODEL, as_json=True)
    result = client.infer(SEQUENCE_MODEL, _input(sessions))
    bad = {
        "wrong_dtype": _error(client, sessions.astype(np.int32), "INT32"),
        "too_short": _error(client, sessions[:, 1:]),
        "negative": _error(client, np.full_like(sessions, -1)),
        "unknown_item": _error(client, np.full_like(sessions, n_items + 1)),
    }
    out = {
        "model_ready": client.is_model_ready(SEQUENCE_MODEL),
        "inputs": metadata["inputs"],
        "outputs": metadata["outputs"],
        **{name: result.as_numpy(name).tolist() for name in (NEXT_ITEMS, NEXT_SCORES, SESSION_EMBEDDING)},
        "bad": bad,
        "live_after": client.is_server_live() and client.is_model_ready(SEQUENCE_MODEL),
    }
    client.close()
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
