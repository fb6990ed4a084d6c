"""``query-encoder`` on the real local Triton, beside ``bert-ranker``, from the tiny bundle.

The launcher (``python -m predictors.ranker``, started by ``tests.servers.start_ranker`` on the
tiny bundle's ``ranker`` component) finds the ``semantic`` component beside it and serves its
query encoder too. Checked over v2 HTTP in-process and over v2 gRPC with ``tritonclient`` from a
child process (``tritonclient.grpc`` and kserve cannot share a process, DESIGN.md: this file is
that child's script too, see :func:`grpc_main`): the model is ready, its metadata is the contract,
its answers are the ONNX graph's run locally (within 1e-5) on queries tokenised with the bundle's
``tokenizer.json``, bad inputs are 400 / INVALID_ARGUMENT naming the input while the server stays
up, and a killed model process is replaced by the watchdog with the same answers.

Usage as the child: ``python test_query_encoder_triton.py HOST:PORT QUERIES.npz``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from shopserve.artifacts import (
    SEMANTIC_COMPONENT,
    SEMANTIC_DIM,
    SEMANTIC_MAX_QUERY_LENGTH,
    SEMANTIC_TOKENIZER_FILE,
    load_component,
)
from shopserve.protocol import (
    ATTENTION_MASK,
    INPUT_IDS,
    QUERY_EMBEDDING,
    QUERY_ENCODER,
    QUERY_ENCODER_MODEL,
    RANKER_MODEL,
)

pytestmark = pytest.mark.integration

HERE = Path(__file__)
RECOVERY_DEADLINE_S = 30.0
QUERIES = ["red lamp", "waterproof shoes for running in the rain", "a mug that is not white"]


# ------------------------------------------------------------------ the child: gRPC


def _grpc_inputs(grpcclient: Any, arrays: dict[str, np.ndarray],
                 datatypes: dict[str, str] | None = None) -> list[Any]:
    out = []
    for spec in QUERY_ENCODER.inputs:
        if spec.name not in arrays:
            continue
        array = arrays[spec.name]
        tensor = grpcclient.InferInput(spec.name, list(array.shape),
                                       (datatypes or {}).get(spec.name, "INT64"))
        tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


def grpc_main(url: str, queries_path: str) -> dict[str, Any]:
    """What a v2 gRPC client sees: metadata, the embeddings of the queries, and errors of bad
    inputs (``status: message``); printed as JSON by the child."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    with np.load(queries_path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    max_length = int(arrays.pop("max_length")[0])
    client = grpcclient.InferenceServerClient(url)

    def error(tensors: dict[str, np.ndarray], datatypes: dict[str, str] | None = None) -> str | None:
        try:
            client.infer(QUERY_ENCODER_MODEL, _grpc_inputs(grpcclient, tensors, datatypes))
        except InferenceServerException as exc:
            return f"{exc.status()}: {exc.message()}"
        return None

    ids, mask = arrays[INPUT_IDS], arrays[ATTENTION_MASK]
    embeddings = []
    for row in range(ids.shape[0]):  # one query per request, as the transformer sends them
        length = int(mask[row].sum())
        one = {INPUT_IDS: ids[row:row + 1, :length], ATTENTION_MASK: mask[row:row + 1, :length]}
        result = client.infer(QUERY_ENCODER_MODEL, _grpc_inputs(grpcclient, one))
        embeddings.append(result.as_numpy(QUERY_EMBEDDING)[0].tolist())
    batch = client.infer(QUERY_ENCODER_MODEL, _grpc_inputs(grpcclient, arrays))
    first = {name: array[:1, :int(mask[0].sum())] for name, array in arrays.items()}
    too_long = max_length + 1
    out = {
        "model_ready": client.is_model_ready(QUERY_ENCODER_MODEL),
        "metadata": client.get_model_metadata(QUERY_ENCODER_MODEL, as_json=True),
        "embeddings": embeddings,
        "batch": batch.as_numpy(QUERY_EMBEDDING).tolist(),
        "bad": {
            "int32": error({k: v.astype(np.int32) for k, v in first.items()},
                           {INPUT_IDS: "INT32", ATTENTION_MASK: "INT32"}),
            "missing_mask": error({INPUT_IDS: first[INPUT_IDS]}),
            "too_long": error({INPUT_IDS: np.ones((1, too_long), np.int64),
                               ATTENTION_MASK: np.ones((1, too_long), np.int64)}),
            "out_of_vocab": error({**first, INPUT_IDS: first[INPUT_IDS] + 10**9}),
            "no_token": error({**first, ATTENTION_MASK: np.zeros_like(first[ATTENTION_MASK])}),
        },
        "live_after": client.is_server_live() and client.is_model_ready(QUERY_ENCODER_MODEL),
    }
    client.close()
    return out


if __name__ == "__main__":
    print(json.dumps(grpc_main(sys.argv[1], sys.argv[2])))
    sys.exit(0)


# ------------------------------------------------------------------ the tests

from tests.servers import (  # noqa: E402 - not needed by the child above
    ROOT,
    Server,
    call_until_recovered,
    free_port,
    http_call,
    model_stubs,
    start_ranker,
)


@pytest.fixture(scope="module")
def component(tiny_bundle: Path) -> Path:
    return tiny_bundle / SEMANTIC_COMPONENT


@pytest.fixture(scope="module")
def params(component: Path) -> dict[str, Any]:
    return load_component(component, SEMANTIC_COMPONENT).params


@pytest.fixture(scope="module")
def triton(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_ranker(tiny_bundle, tmp_path_factory.mktemp("encoder-triton"), free_port(),
                          free_port())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def queries(component: Path) -> dict[str, np.ndarray]:
    """The queries tokenised with the bundle's tokenizer.json, right-padded into one batch."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(component / SEMANTIC_TOKENIZER_FILE))
    rows = [tokenizer.encode(q).ids for q in QUERIES]
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    return {INPUT_IDS: ids, ATTENTION_MASK: mask}


def _one(queries: dict[str, np.ndarray], row: int) -> dict[str, np.ndarray]:
    length = int(queries[ATTENTION_MASK][row].sum())
    return {name: array[row:row + 1, :length] for name, array in queries.items()}


def _call(url: str, body: dict | None = None) -> tuple[int | None, dict]:
    status, raw = http_call(url, None if body is None else json.dumps(body).encode())
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        return status, {"error": raw.decode(errors="replace")}


def _body(arrays: dict[str, np.ndarray], datatype: str = "INT64") -> dict:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": list(array.shape),
                        "data": array.reshape(-1).tolist()} for name, array in arrays.items()]}


def _infer(server: Server, arrays: dict[str, np.ndarray]) -> tuple[int | None, np.ndarray | dict]:
    status, answer = _call(f"{server.http_url}/v2/models/{QUERY_ENCODER_MODEL}/infer", _body(arrays))
    if status != 200:
        return status, answer
    (output,) = answer["outputs"]
    assert output["name"] == QUERY_EMBEDDING and output["datatype"] == "FP32"
    return status, np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def _direct(component: Path, arrays: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(component / QUERY_ENCODER_MODEL / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return session.run([QUERY_EMBEDDING], arrays)[0]


def test_every_model_is_ready(triton: Server) -> None:
    assert _call(f"{triton.http_url}/v2/health/ready")[0] == 200
    assert _call(f"{triton.http_url}/v2/models/{QUERY_ENCODER_MODEL}/ready")[0] == 200
    assert _call(f"{triton.http_url}/v2/models/{RANKER_MODEL}/ready")[0] == 200


def test_metadata_is_the_contract(triton: Server, params: dict[str, Any]) -> None:
    status, metadata = _call(f"{triton.http_url}/v2/models/{QUERY_ENCODER_MODEL}")
    assert status == 200 and metadata["name"] == QUERY_ENCODER_MODEL
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        (t.name, t.datatype, list(t.shape)) for t in QUERY_ENCODER.inputs]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]] == [
        (QUERY_EMBEDDING, "FP32", [-1, params[SEMANTIC_DIM]])]


def test_answers_are_the_graphs_one_query_and_a_padded_batch(
    triton: Server, component: Path, queries: dict[str, np.ndarray], params: dict[str, Any]
) -> None:
    for row in range(len(QUERIES)):
        one = _one(queries, row)
        status, out = _infer(triton, one)
        assert status == 200, out
        assert isinstance(out, np.ndarray) and out.shape == (1, params[SEMANTIC_DIM])
        np.testing.assert_allclose(out, _direct(component, one), atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(out), 1.0, atol=1e-5)
    status, batch = _infer(triton, queries)
    assert status == 200, batch
    np.testing.assert_allclose(batch, _direct(component, queries), atol=1e-5)


def _bad(queries: dict[str, np.ndarray], max_length: int
         ) -> dict[str, tuple[dict, str, tuple[str, ...]]]:
    """Per case: the tensors, their datatype, and the input names the error may name (Triton
    itself refuses a wrong datatype, naming whichever input it checks first)."""
    one = _one(queries, 0)
    long = np.ones((1, max_length + 1), np.int64)
    return {
        "wrong dtype": (one, "INT32", (INPUT_IDS, ATTENTION_MASK)),
        "missing mask": ({INPUT_IDS: one[INPUT_IDS]}, "INT64", (ATTENTION_MASK,)),
        "shapes differ": ({**one, ATTENTION_MASK: one[ATTENTION_MASK][:, :-1]}, "INT64",
                          (ATTENTION_MASK,)),
        "too long": ({INPUT_IDS: long, ATTENTION_MASK: long}, "INT64", (INPUT_IDS,)),
        "token id past the vocabulary": ({**one, INPUT_IDS: one[INPUT_IDS] + 10**6}, "INT64",
                                         (INPUT_IDS,)),
        "mask not 0 or 1": ({**one, ATTENTION_MASK: one[ATTENTION_MASK] * 2}, "INT64",
                            (ATTENTION_MASK,)),
        "no unmasked token": ({**one, ATTENTION_MASK: one[ATTENTION_MASK] * 0}, "INT64",
                              (ATTENTION_MASK,)),
    }


@pytest.mark.parametrize("case", ["wrong dtype", "missing mask", "shapes differ", "too long",
                                  "token id past the vocabulary", "mask not 0 or 1",
                                  "no unmasked token"])
def test_a_bad_input_is_a_400_naming_it_and_the_server_stays_up(
    triton: Server, queries: dict[str, np.ndarray], params: dict[str, Any], case: str
) -> None:
    arrays, datatype, names = _bad(queries, int(params[SEMANTIC_MAX_QUERY_LENGTH]))[case]
    status, answer = _call(f"{triton.http_url}/v2/models/{QUERY_ENCODER_MODEL}/infer",
                           _body(arrays, datatype))
    assert status == 400, answer
    assert any(f"'{name}'" in answer["error"] for name in names), answer
    assert _call(f"{triton.http_url}/v2/health/live")[0] == 200
    assert _call(f"{triton.http_url}/v2/health/ready")[0] == 200
    assert _infer(triton, _one(queries, 0))[0] == 200


def test_grpc_with_tritonclient_from_a_child_process(
    triton: Server, component: Path, queries: dict[str, np.ndarray], params: dict[str, Any],
    tmp_path: Path,
) -> None:
    np.savez(tmp_path / "queries.npz", **queries,
             max_length=np.array([params[SEMANTIC_MAX_QUERY_LENGTH]], np.int64))
    done = subprocess.run(
        [sys.executable, str(HERE), triton.grpc_address, str(tmp_path / "queries.npz")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["model_ready"] and seen["live_after"]
    assert [(t["name"], t["datatype"]) for t in seen["metadata"]["inputs"]] == [
        (t.name, t.datatype) for t in QUERY_ENCODER.inputs]
    for row in range(len(QUERIES)):
        one = _one(queries, row)
        np.testing.assert_allclose(np.asarray([seen["embeddings"][row]], np.float32),
                                   _direct(component, one), atol=1e-5)
    np.testing.assert_allclose(np.asarray(seen["batch"], np.float32), _direct(component, queries),
                               atol=1e-5)
    names = {"int32": (INPUT_IDS, ATTENTION_MASK), "missing_mask": (ATTENTION_MASK,),
             "too_long": (INPUT_IDS,), "out_of_vocab": (INPUT_IDS,), "no_token": (ATTENTION_MASK,)}
    for case, error in seen["bad"].items():
        assert error is not None, f"{case} was answered"
        assert "INVALID_ARGUMENT" in error, f"{case}: {error}"
        assert any(f"'{name}'" in error for name in names[case]), f"{case}: {error}"


def test_a_killed_model_process_goes_not_ready_and_comes_back_with_the_same_answers(
    triton: Server, queries: dict[str, np.ndarray]
) -> None:
    # Last in the module: it kills the shared server's query-encoder process.
    one = _one(queries, 0)
    status, before = _infer(triton, one)
    assert status == 200, before
    ranker_stubs = {p.pid for p in model_stubs(triton, RANKER_MODEL)}
    stubs = model_stubs(triton, QUERY_ENCODER_MODEL)
    assert len(stubs) == 1, stubs
    stubs[0].kill()  # SIGKILL, as a crash or the OOM killer would
    status, after, failed = call_until_recovered(lambda: _infer(triton, one), RECOVERY_DEADLINE_S)
    assert failed, "no inference failed after the stub was killed"
    assert status == 200, f"not recovered within {RECOVERY_DEADLINE_S:.0f}s: {after!r}"
    np.testing.assert_array_equal(after, before)
    new = model_stubs(triton, QUERY_ENCODER_MODEL)
    assert len(new) == 1 and new[0].pid != stubs[0].pid
    assert {p.pid for p in model_stubs(triton, RANKER_MODEL)} == ranker_stubs  # untouched
    deadline = time.monotonic() + 10.0
    while (f"{QUERY_ENCODER_MODEL} answers again" not in triton.log()
           and time.monotonic() < deadline):
        time.sleep(0.1)
    log = triton.log()
    assert f"{QUERY_ENCODER_MODEL} cannot answer" in log, log[-3000:]
    # Readiness told the truth while the model was reloaded, as the watchdog saw it over HTTP (the
    # reload of this small model takes ~0.4 s; a test thread sampling /ready can miss it on a
    # loaded machine, and once did in CI).
    assert f"{QUERY_ENCODER_MODEL} not ready (400)" in log, log[-3000:]
    assert f"{QUERY_ENCODER_MODEL} answers again" in log, log[-3000:]
