"""``seq-recommender`` on the real local Triton, beside ``bert-ranker``, from the tiny bundle.

The launcher (``python -m predictors.ranker``, started by ``tests.servers.start_ranker`` on the
tiny bundle's ``ranker`` component) finds the ``sequence`` component beside it and serves it too.
Checked over v2 HTTP in-process and gRPC from a child process (``sequence_grpc_client.py``): the
model is ready, its metadata is the contract, its answers are the ONNX graph's, bad inputs are 400s
naming the input while the server stays up, and a killed model process is replaced by the
watchdog (not ready meanwhile) with the same answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from shopserve.artifacts import SEQUENCE_COMPONENT, SEQUENCE_LENGTH, SEQUENCE_TOP_K, load_component
from shopserve.protocol import (
    ITEM_SEQUENCE,
    NEXT_ITEMS,
    NEXT_SCORES,
    RANKER_MODEL,
    SEQUENCE,
    SEQUENCE_MODEL,
    SESSION_EMBEDDING,
)
from tests.servers import (
    ROOT,
    ReadinessWatch,
    Server,
    call_until_recovered,
    free_port,
    http_call,
    model_stubs,
    start_ranker,
)

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
RECOVERY_DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def component(tiny_bundle: Path) -> Path:
    return tiny_bundle / SEQUENCE_COMPONENT


@pytest.fixture(scope="module")
def params(component: Path) -> dict[str, int]:
    manifest = load_component(component, SEQUENCE_COMPONENT)
    return {"L": int(manifest.params[SEQUENCE_LENGTH]), "K": int(manifest.params[SEQUENCE_TOP_K]),
            "n": int(manifest.params["n_items"]), "D": int(manifest.params["dim"])}


@pytest.fixture(scope="module")
def triton(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_ranker(tiny_bundle, tmp_path_factory.mktemp("seq-triton"), free_port(), free_port())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sessions(params: dict[str, int]) -> np.ndarray:
    """Two sessions: three items (left-padded), and a full one."""
    length, n = params["L"], params["n"]
    out = np.zeros((2, length), dtype=np.int64)
    out[0, -3:] = [7, 3, 11]
    out[1] = np.arange(n - length + 1, n + 1)
    return out


def _call(url: str, body: dict | None = None) -> tuple[int | None, dict]:
    status, raw = http_call(url, None if body is None else json.dumps(body).encode())
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        return status, {"error": raw.decode(errors="replace")}


def _body(array: np.ndarray, datatype: str = "INT64") -> dict:
    return {"inputs": [{"name": ITEM_SEQUENCE, "datatype": datatype, "shape": list(array.shape),
                        "data": array.reshape(-1).tolist()}]}


def _infer(server: Server, array: np.ndarray) -> tuple[int | None, dict[str, np.ndarray] | dict]:
    status, answer = _call(f"{server.http_url}/v2/models/{SEQUENCE_MODEL}/infer", _body(array))
    if status != 200:
        return status, answer
    return status, {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}


def _direct(component: Path, array: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(component / SEQUENCE_MODEL / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    outputs = session.run(None, {ITEM_SEQUENCE: array})
    return {o.name: v for o, v in zip(session.get_outputs(), outputs, strict=True)}


def test_both_models_are_ready(triton: Server) -> None:
    assert _call(f"{triton.http_url}/v2/health/ready")[0] == 200
    assert _call(f"{triton.http_url}/v2/models/{SEQUENCE_MODEL}/ready")[0] == 200
    assert _call(f"{triton.http_url}/v2/models/{RANKER_MODEL}/ready")[0] == 200


def test_metadata_is_the_contract(triton: Server, params: dict[str, int]) -> None:
    status, metadata = _call(f"{triton.http_url}/v2/models/{SEQUENCE_MODEL}")
    assert status == 200 and metadata["name"] == SEQUENCE_MODEL
    fixed = {ITEM_SEQUENCE: params["L"], NEXT_ITEMS: params["K"], NEXT_SCORES: params["K"],
             SESSION_EMBEDDING: params["D"]}
    for served, contract in ((metadata["inputs"], SEQUENCE.inputs), (metadata["outputs"], SEQUENCE.outputs)):
        assert [(t["name"], t["datatype"]) for t in served] == [(t.name, t.datatype) for t in contract]
        for tensor, spec in zip(served, contract, strict=True):
            # The contract's -1 admits any size; the served model names its fixed ones.
            assert tensor["shape"] == [-1, fixed[spec.name]] and len(spec.shape) == 2
            assert all(c in (-1, s) for c, s in zip(spec.shape, tensor["shape"], strict=True))


def test_answers_are_the_graphs_and_exclude_the_session(
    triton: Server, component: Path, sessions: np.ndarray, params: dict[str, int]
) -> None:
    status, out = _infer(triton, sessions[:1])
    assert status == 200, out
    assert out[NEXT_ITEMS].shape == (1, params["K"]) and out[NEXT_SCORES].shape == (1, params["K"])
    assert out[SESSION_EMBEDDING].shape == (1, params["D"])
    items = out[NEXT_ITEMS][0]
    assert not np.isin(items, sessions[0]).any() and (items > 0).all() and (items <= params["n"]).all()
    assert len(set(items.tolist())) == params["K"]
    assert (np.diff(out[NEXT_SCORES][0]) <= 0).all()
    direct = _direct(component, sessions[:1])
    np.testing.assert_allclose(out[SESSION_EMBEDDING], direct[SESSION_EMBEDDING], atol=1e-4)
    np.testing.assert_allclose(out[NEXT_SCORES], direct[NEXT_SCORES], atol=1e-4)
    np.testing.assert_array_equal(out[NEXT_ITEMS], direct[NEXT_ITEMS])


def test_a_batch_of_sessions_is_answered_row_by_row(
    triton: Server, component: Path, sessions: np.ndarray
) -> None:
    status, out = _infer(triton, sessions)
    assert status == 200, out
    direct = _direct(component, sessions)
    np.testing.assert_allclose(out[SESSION_EMBEDDING], direct[SESSION_EMBEDDING], atol=1e-4)
    for row in range(sessions.shape[0]):
        assert not np.isin(out[NEXT_ITEMS][row], sessions[row]).any()


def _bad(sessions: np.ndarray, n: int) -> dict[str, tuple[np.ndarray, str]]:
    one = sessions[:1]
    return {
        "wrong dtype": (one.astype(np.int32), "INT32"),
        "rank 1": (one[0], "INT64"),
        "rank 3": (one[None], "INT64"),
        "too short": (one[:, 1:], "INT64"),
        "too long": (np.pad(one, ((0, 0), (1, 0))), "INT64"),
        "negative index": (np.full_like(one, -1), "INT64"),
        "index past the items": (np.full_like(one, n + 1), "INT64"),
    }


@pytest.mark.parametrize("case", ["wrong dtype", "rank 1", "rank 3", "too short", "too long",
                                  "negative index", "index past the items"])
def test_a_bad_input_is_a_400_naming_it_and_the_server_stays_up(
    triton: Server, sessions: np.ndarray, params: dict[str, int], case: str
) -> None:
    array, datatype = _bad(sessions, params["n"])[case]
    status, answer = _call(f"{triton.http_url}/v2/models/{SEQUENCE_MODEL}/infer", _body(array, datatype))
    assert status == 400, answer
    assert ITEM_SEQUENCE in answer["error"], answer
    assert _call(f"{triton.http_url}/v2/health/live")[0] == 200
    assert _call(f"{triton.http_url}/v2/health/ready")[0] == 200
    assert _infer(triton, sessions[:1])[0] == 200


def test_grpc_from_a_child_process(
    triton: Server, component: Path, sessions: np.ndarray, params: dict[str, int], tmp_path: Path
) -> None:
    np.save(tmp_path / "sessions.npy", sessions[:1], allow_pickle=False)
    done = subprocess.run(
        [sys.executable, str(HERE / "sequence_grpc_client.py"), triton.grpc_address,
         str(tmp_path / "sessions.npy"), str(params["n"])],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["model_ready"]
    assert [(t["name"], t["datatype"]) for t in seen["inputs"]] == [(ITEM_SEQUENCE, "INT64")]
    direct = _direct(component, sessions[:1])
    np.testing.assert_array_equal(seen[NEXT_ITEMS], direct[NEXT_ITEMS])
    np.testing.assert_allclose(seen[SESSION_EMBEDDING], direct[SESSION_EMBEDDING], atol=1e-4)
    for case, error in seen["bad"].items():
        assert error is not None, f"{case} was answered"
        assert "INVALID_ARGUMENT" in error and ITEM_SEQUENCE in error, f"{case}: {error}"
    assert seen["live_after"]


def test_a_killed_model_process_goes_not_ready_and_comes_back_with_the_same_answers(
    triton: Server, sessions: np.ndarray
) -> None:
    # Last in the module: it kills the shared server's sequence model process.
    status, before = _infer(triton, sessions)
    assert status == 200, before
    ranker_stubs = {p.pid for p in model_stubs(triton, RANKER_MODEL)}
    stubs = model_stubs(triton, SEQUENCE_MODEL)
    assert len(stubs) == 1, stubs
    with ReadinessWatch(triton, SEQUENCE_MODEL) as watch:
        stubs[0].kill()  # SIGKILL, as a crash or the OOM killer would
        status, after, failed = call_until_recovered(lambda: _infer(triton, sessions),
                                                     RECOVERY_DEADLINE_S)
        time.sleep(0.1)
    assert failed, "no inference failed after the stub was killed"
    assert status == 200, f"not recovered within {RECOVERY_DEADLINE_S:.0f}s: {after!r}"
    assert watch.went_not_ready(f"/v2/models/{SEQUENCE_MODEL}/ready"), watch.seen
    assert watch.went_not_ready("/v2/health/ready"), watch.seen
    for name in (NEXT_ITEMS, NEXT_SCORES, SESSION_EMBEDDING):
        np.testing.assert_array_equal(after[name], before[name])
    assert _call(f"{triton.http_url}/v2/models/{SEQUENCE_MODEL}/ready")[0] == 200
    assert _call(f"{triton.http_url}/v2/health/ready")[0] == 200
    new = model_stubs(triton, SEQUENCE_MODEL)
    assert len(new) == 1 and new[0].pid != stubs[0].pid
    assert {p.pid for p in model_stubs(triton, RANKER_MODEL)} == ranker_stubs  # the ranker was untouched
    # The watchdog logs the recovery, and "answers again" at its next probe after it.
    deadline = time.monotonic() + 10.0
    while f"{SEQUENCE_MODEL} answers again" not in triton.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = triton.log()
    assert f"{SEQUENCE_MODEL} cannot answer" in log and f"{SEQUENCE_MODEL} answers again" in log, log[-3000:]
