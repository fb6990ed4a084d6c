"""The local ranker (``python -m predictors.ranker``) recovers by itself when its model process dies.

Triton keeps answering ready while every inference of a model whose Python stub died fails with
500 "Stub process ... is not healthy"; the launcher's watchdog sees it with a tiny inference,
unloads the model (readiness false) and loads it again. The test kills the stub with SIGKILL, as a
crash or the OOM killer would, and watches readiness go false, then answers come back with the same
scores as before, within seconds, twice in a row.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from predictors.ranker.triton_repo import TOKENIZER_DIR, read_config
from shopserve.protocol import RANKER, RANKER_MODEL, SCORE
from shopserve.text import PairTokenizer
from tests.servers import (
    ReadinessWatch,
    Server,
    call_until_recovered,
    free_port,
    http_call,
    model_stubs,
    start_server,
)
from training.ranker.pairs import encode_pairs

pytestmark = pytest.mark.integration

STUB = "triton_python_backend_stub"
RECOVERY_DEADLINE_S = 20.0


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> Path:
    return tiny_bundle / "ranker"


@pytest.fixture(scope="module")
def ranker(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    http_port, grpc_port = free_port(), free_port()
    env = {
        "RANKER_BUNDLE": str(bundle),
        "RANKER_HTTP_PORT": str(http_port),
        "RANKER_GRPC_PORT": str(grpc_port),
        "RANKER_METRICS_PORT": str(free_port()),
        "RANKER_HEALTH_INTERVAL_S": "0.5",
    }
    log_path = tmp_path_factory.mktemp("ranker") / "ranker.log"
    server = start_server("predictors.ranker", env, log_path, http_port=http_port,
                          grpc_port=grpc_port, ready_path=f"/v2/models/{RANKER_MODEL}/ready")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def body(bundle: Path) -> bytes:
    """20 real (query, title) pairs as a v2 JSON request."""
    tokenizer = PairTokenizer.from_dir(bundle / TOKENIZER_DIR)
    max_length = int(read_config(bundle / RANKER_MODEL / "config.pbtxt").parameters[
        "max_sequence_length"])  # fmt: skip
    titles = [f"{c} running shoe size {40 + i % 6}" for i, c in
              enumerate(["red nike", "blue adidas", "black puma", "white asics", "grey"] * 4)]
    batch = encode_pairs(tokenizer, ["red running shoes"] * 20, titles, max_length)
    return json.dumps({"inputs": [
        {"name": t.name, "datatype": "INT64", "shape": list(batch[t.name].shape),
         "data": batch[t.name].reshape(-1).tolist()} for t in RANKER.inputs
    ]}).encode()  # fmt: skip


def _scores(server: Server, body: bytes) -> tuple[int | None, np.ndarray | bytes]:
    status, answer = http_call(f"{server.http_url}/v2/models/{RANKER_MODEL}/infer", body)
    if status != 200:
        return status, answer
    output = next(o for o in json.loads(answer)["outputs"] if o["name"] == SCORE)
    return status, np.asarray(output["data"], dtype=np.float32)


def _stubs(server: Server) -> list[psutil.Process]:
    """The stubs of ``bert-ranker`` (the tiny bundle's ``seq-recommender`` has one of its own)."""
    return model_stubs(server, RANKER_MODEL)


def _kill_stub_and_wait(server: Server, body: bytes) -> tuple[float, bool, ReadinessWatch]:
    """SIGKILL the model's stub; seconds until it scores again, whether a call failed meanwhile."""
    stubs = _stubs(server)
    assert len(stubs) == 1, stubs
    with ReadinessWatch(server, RANKER_MODEL) as watch:
        stubs[0].kill()
        killed = time.monotonic()
        _, _, failed = call_until_recovered(lambda: _scores(server, body), RECOVERY_DEADLINE_S)
        took = time.monotonic() - killed
        time.sleep(0.1)
    return took, failed, watch


def test_killed_model_process_goes_not_ready_and_recovers_with_the_same_scores(
    ranker: Server, body: bytes
) -> None:
    status, before = _scores(ranker, body)
    assert status == 200, before
    old = _stubs(ranker)

    took, failed, watch = _kill_stub_and_wait(ranker, body)

    assert failed, "no inference failed after the stub was killed"
    status, after = _scores(ranker, body)
    assert status == 200, f"not recovered within {RECOVERY_DEADLINE_S:.0f}s: {after!r}"
    assert took < RECOVERY_DEADLINE_S
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    # Readiness told the truth while the model was reloading, for the model and the server.
    assert watch.went_not_ready(f"/v2/models/{RANKER_MODEL}/ready"), watch.seen
    assert watch.went_not_ready("/v2/health/ready"), watch.seen
    assert http_call(f"{ranker.http_url}/v2/models/{RANKER_MODEL}/ready")[0] == 200
    assert http_call(f"{ranker.http_url}/v2/health/ready")[0] == 200
    new = _stubs(ranker)
    assert len(new) == 1 and new[0].pid not in {p.pid for p in old}
    # "answers again" is logged by the watchdog's next probe after the reload (every second).
    deadline = time.monotonic() + 10
    while "answers again" not in ranker.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    log = ranker.log()
    assert "recovering it (recovery 1)" in log and "answers again" in log, log[-3000:]


def test_recovers_again_after_a_second_crash(ranker: Server, body: bytes) -> None:
    status, before = _scores(ranker, body)
    assert status == 200, before
    took, failed, _watch = _kill_stub_and_wait(ranker, body)
    status, after = _scores(ranker, body)
    assert failed and status == 200, after
    assert took < RECOVERY_DEADLINE_S
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


def test_launcher_stops_cleanly_after_recoveries(ranker: Server) -> None:
    assert ranker.process.poll() is None
    assert ranker.stop() == 0
    assert not _stubs_alive(ranker)


def _stubs_alive(server: Server) -> bool:
    return any(p.info["name"] == STUB for p in psutil.process_iter(["name", "ppid"])
               if p.info["ppid"] == server.process.pid)
