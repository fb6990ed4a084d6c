"""gRPC side of the ranker's Triton integration test, run in a child process.

``tritonclient.grpc`` and kserve cannot share a process (DESIGN.md), and a pytest session that also
collects the transformer's tests imports kserve, so the gRPC client speaks from here and prints its
observations as JSON on stdout.

Usage: ``python tests/integration/predictors/ranker/ranker_grpc_client.py HOST:PORT BATCH.npz``
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from shopserve.protocol import RANKER, RANKER_MODEL, SCORE


def _inputs(arrays: dict[str, np.ndarray], datatype: str = "INT64") -> list[Any]:
    out = []
    for spec in RANKER.inputs:
        array = arrays[spec.name]
        tensor = grpcclient.InferInput(spec.name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


def _error(client: grpcclient.InferenceServerClient, arrays: dict[str, np.ndarray],
           datatype: str = "INT64") -> str | None:  # fmt: skip
    try:
        client.infer(RANKER_MODEL, _inputs(arrays, datatype))
    except InferenceServerException as exc:
        return f"{exc.status()}: {exc.message()}"
    return None


def main(url: str, batch_path: str) -> dict[str, Any]:
    with np.load(batch_path, allow_pickle=False) as data:
        batch = {name: data[name] for name in data.files}
    client = grpcclient.InferenceServerClient(url)
    metadata = client.get_model_metadata(RANKER_MODEL, as_json=True)
    result = client.infer(RANKER_MODEL, _inputs(batch))
    ids = batch[RANKER.inputs[0].name]
    bad = {
        "wrong_dtype": _error(client, {k: v.astype(np.int32) for k, v in batch.items()}, "INT32"),
        "mismatched": _error(client, {**batch, RANKER.inputs[1].name: batch[RANKER.inputs[1].name][:, :-1]}),
        "too_long": _error(client, {k: np.tile(v, (1, 40)) for k, v in batch.items()}),
        "empty": _error(client, {k: v[:0] for k, v in batch.items()}),
        "out_of_vocab": _error(client, {**batch, RANKER.inputs[0].name: ids + 10**9}),
    }  # fmt: skip
    out = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(RANKER_MODEL),
        "inputs": metadata["inputs"],
        "outputs": metadata["outputs"],
        "scores": result.as_numpy(SCORE).reshape(-1).tolist(),
        "score_shape": list(result.as_numpy(SCORE).shape),
        "bad": bad,
        "live_after": client.is_server_live() and client.is_model_ready(RANKER_MODEL),
    }
    client.close()
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
