"""TorchServe serving a tiny ranker trained in this test run, beside Triton on the same bundle.

The bundle is built by ``build_ranker`` with the ``tiny`` config and ``torchserve=True``, so the
packaged model store (``torchserve/``) is checked too. TorchServe runs as
``python -m predictors.ranker --runtime torchserve`` (the command a user types), Triton in-process
through ``TritonServer``; both serve the bundle's ``model.onnx``, so their scores must agree.

Skipped only when the optional ``torchserve`` extra or Java 17 is missing (``make test`` installs the
extra); under ``CI=true`` that is a failure instead (:mod:`tests.requirements`).
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.requirements import require

EXTRA = "the optional extra is not installed: pip install '.[torchserve]' (make test does)"
require(importlib.util.find_spec("ts"), f"TorchServe: {EXTRA}")
require(importlib.util.find_spec("model_archiver"), f"torch-model-archiver: {EXTRA}")

import tritonclient.http as httpclient  # noqa: E402

from predictors.ranker.server import RankerSettings, TritonServer  # noqa: E402
from predictors.ranker.torchserve import (  # noqa: E402
    ARCHIVE,
    CONFIG_DIR,
    CONFIG_PROPERTIES,
    MODEL_STORE_DIR,
    TORCHSERVE_DIR,
    java_binary,
)
from predictors.ranker.triton_repo import TOKENIZER_DIR, read_config  # noqa: E402
from shopserve.artifacts import load_component  # noqa: E402
from shopserve.protocol import ATTENTION_MASK, INPUT_IDS, RANKER, RANKER_MODEL, SCORE  # noqa: E402
from shopserve.text import PairTokenizer  # noqa: E402
from tests.servers import LOOPBACK, Server, free_port, start_server  # noqa: E402
from training.data.generator import GeneratorConfig, generate  # noqa: E402
from training.ranker.build import RankerBuildConfig, build_ranker  # noqa: E402
from training.ranker.pairs import encode_pairs  # noqa: E402

pytestmark = pytest.mark.integration


def _has_java() -> bool:
    try:
        java_binary()
    except RuntimeError:
        return False
    return True


require(_has_java(), "TorchServe 0.12 needs Java 17: no java on PATH and JAVA_HOME unset "
                     "(apt-get install openjdk-17-jre-headless)")

INFER = f"/v2/models/{RANKER_MODEL}/infer"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "ranker"
    build_ranker(generate(GeneratorConfig.tiny()), out, RankerBuildConfig.tiny(), version="test",
                 torchserve=True)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def torchserve(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, int]]:
    """``python -m predictors.ranker --runtime torchserve``; yields the server and its management port."""
    management = free_port()
    http_port = free_port()
    env = {
        "RANKER_BUNDLE": str(bundle), "RANKER_HTTP_PORT": str(http_port),
        "RANKER_GRPC_PORT": str(free_port()), "RANKER_METRICS_PORT": str(free_port()),
        "RANKER_MANAGEMENT_PORT": str(management), "RANKER_GRPC_MANAGEMENT_PORT": str(free_port()),
        # A long batch window so that concurrent requests really share TorchServe batches.
        "RANKER_MAX_QUEUE_DELAY_US": "50000", "RANKER_BATCH_SIZE": "8",
    }  # fmt: skip
    log = tmp_path_factory.mktemp("logs") / "torchserve.log"
    server = start_server("predictors.ranker", env, log, args=["--runtime", "torchserve"],
                          http_port=http_port, ready_path="/ping", timeout=120)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # /ping can answer before the worker has loaded
            workers = _get_json(f"http://{LOOPBACK}:{management}/models/{RANKER_MODEL}")[0]["workers"]
            if any(w["status"] == "READY" for w in workers):
                break
            time.sleep(0.2)
        yield server, management
    finally:
        server.stop()


@pytest.fixture(scope="module")
def triton(bundle: Path) -> Iterator[TritonServer]:
    settings = RankerSettings(bundle=bundle, http_port=free_port(), grpc_port=free_port(),
                              metrics_port=free_port())  # fmt: skip
    server = TritonServer(settings)
    server.start()
    try:
        server.wait_ready(timeout_s=90)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def batch(bundle: Path) -> dict[str, np.ndarray]:
    """50 real (query, title) pairs as the transformer would send them."""
    tokenizer = PairTokenizer.from_dir(bundle / TOKENIZER_DIR)
    max_length = int(read_config(bundle / RANKER_MODEL / "config.pbtxt").parameters["max_sequence_length"])
    titles = [f"{c} running shoe size {40 + i % 6}" for i, c in
              enumerate(["red nike", "blue adidas", "black puma", "white asics", "grey"] * 10)]
    return encode_pairs(tokenizer, ["red running shoes"] * 50, titles, max_length)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        return json.load(response)


def _post(server: Server, body: bytes, path: str = INFER) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{server.http_url}{path}", data=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _body(arrays: dict[str, np.ndarray], **override: Any) -> dict[str, Any]:
    return {"inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(arrays[t.name].shape),
                        "data": arrays[t.name].reshape(-1).tolist()} for t in RANKER.inputs], **override}


def _http_inputs(arrays: dict[str, np.ndarray]) -> list[httpclient.InferInput]:
    out = []
    for spec in RANKER.inputs:
        tensor = httpclient.InferInput(spec.name, list(arrays[spec.name].shape), spec.datatype)
        # JSON tensors: TorchServe does not speak the v2 binary tensor extension.
        tensor.set_data_from_numpy(arrays[spec.name], binary_data=False)
        out.append(tensor)
    return out


def test_bundle_carries_the_torchserve_model_store(bundle: Path) -> None:
    manifest = load_component(bundle, "ranker")
    store = f"{TORCHSERVE_DIR}/{MODEL_STORE_DIR}/{ARCHIVE}"
    conf = f"{TORCHSERVE_DIR}/{CONFIG_DIR}/{CONFIG_PROPERTIES}"
    assert {store, conf} <= set(manifest.files)
    assert manifest.params["profiles"]["torchserve"]["model"] == manifest.params["profiles"]["cpu"]["model"]
    text = (bundle / conf).read_text()
    assert "service_envelope=kservev2" in text
    assert "model_store=/mnt/models/model-store" in text
    assert "inference_address=http://0.0.0.0:8085" in text
    # The cluster keeps TorchServe's token authorisation on; only the loopback stack turns it off.
    assert "disable_token_authorization" not in text
    snapshot = json.loads(next(line.split("=", 1)[1] for line in text.splitlines()
                               if line.startswith("model_snapshot=")))  # fmt: skip
    entry = snapshot["models"][RANKER_MODEL]["1"]
    assert entry["marName"] == ARCHIVE and entry["batchSize"] > 1 and entry["maxBatchDelay"] > 0


def test_health_and_model_status(torchserve: tuple[Server, int]) -> None:
    server, management = torchserve
    assert _get_json(f"{server.http_url}/ping")["status"] == "Healthy"
    described = _get_json(f"http://{LOOPBACK}:{management}/models/{RANKER_MODEL}")[0]
    assert described["modelName"] == RANKER_MODEL
    assert described["batchSize"] == 8
    assert any(w["status"] == "READY" for w in described["workers"])


def test_v2_health_and_metadata_are_the_documented_gap(torchserve: tuple[Server, int]) -> None:
    server, _ = torchserve
    for path in ("/v2/health/ready", f"/v2/models/{RANKER_MODEL}"):
        with pytest.raises(urllib.error.HTTPError) as info:
            _get_json(f"{server.http_url}{path}")
        assert info.value.code == 404, path


def test_tritonclient_http_infers_and_scores_equal_triton(
    torchserve: tuple[Server, int], triton: TritonServer, batch: dict[str, np.ndarray]
) -> None:
    server, _ = torchserve
    client = httpclient.InferenceServerClient(server.http_address)
    try:
        result = client.infer(RANKER_MODEL, _http_inputs(batch))
    finally:
        client.close()
    scores = result.as_numpy(SCORE)
    assert scores.shape == (50, 1) and scores.dtype == np.float32
    reference = httpclient.InferenceServerClient(triton.http_url)
    try:
        expected = reference.infer(RANKER_MODEL, _http_inputs(batch)).as_numpy(SCORE)
    finally:
        reference.close()
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)


def test_json_response_echoes_the_request_id(torchserve: tuple[Server, int],
                                             batch: dict[str, np.ndarray]) -> None:  # fmt: skip
    server, _ = torchserve
    small = {k: v[:3] for k, v in batch.items()}
    code, answer = _post(server, json.dumps(_body(small, id="req-7")).encode())
    assert code == 200, answer
    assert answer["id"] == "req-7" and answer["model_name"] == RANKER_MODEL
    assert answer["outputs"] == [{"name": SCORE, "datatype": "FP32", "shape": [3, 1],
                                  "data": answer["outputs"][0]["data"]}]  # fmt: skip


def test_concurrent_requests_share_batches_and_each_gets_its_scores(
    torchserve: tuple[Server, int], batch: dict[str, np.ndarray]
) -> None:
    """TorchServe's stock kservev2 envelope fails every request of a batch > 1 (pytorch/serve#2158)."""
    server, _ = torchserve
    sizes = [1, 2, 3, 5, 8, 13, 21, 34]
    results: dict[int, tuple[int, dict[str, Any]]] = {}
    start = threading.Barrier(len(sizes))

    def send(n: int) -> None:
        body = json.dumps(_body({k: v[:n] for k, v in batch.items()})).encode()
        start.wait()
        results[n] = _post(server, body)

    threads = [threading.Thread(target=send, args=(n,)) for n in sizes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    _, full = _post(server, json.dumps(_body(batch)).encode())
    reference = np.asarray(full["outputs"][0]["data"], dtype=np.float32)
    for n in sizes:
        code, answer = results[n]
        assert code == 200, (n, answer)
        assert answer["outputs"][0]["shape"] == [n, 1]
        np.testing.assert_allclose(answer["outputs"][0]["data"], reference[:n], rtol=1e-5, atol=1e-5)


def _bad(batch: dict[str, np.ndarray]) -> dict[str, bytes]:
    ids = batch[INPUT_IDS]
    good = _body(batch)
    float_ids = _body(batch)
    float_ids["inputs"][0]["data"] = [0.5] * ids.size
    flat = _body(batch)
    flat["inputs"][0]["shape"] = [ids.size]
    return {
        "missing tensor": json.dumps({"inputs": good["inputs"][:2]}).encode(),
        "wrong shape": json.dumps(flat).encode(),
        "non-integer": json.dumps(float_ids).encode(),
        "wrong datatype": json.dumps(_body({k: v for k, v in batch.items()})).replace(
            '"INT64"', '"INT32"').encode(),
        "mismatched shapes": json.dumps(
            _body({**batch, ATTENTION_MASK: batch[ATTENTION_MASK][:, :-1]})).encode(),
        "too long": json.dumps(_body({k: np.tile(v, (1, 40)) for k, v in batch.items()})).encode(),
        "out of vocabulary": json.dumps(_body({**batch, INPUT_IDS: ids + 10**9})).encode(),
        "not json": b"{inputs: oops",
        "no inputs": b"{}",
    }


@pytest.mark.parametrize("case", ["missing tensor", "wrong shape", "non-integer", "wrong datatype",
                                  "mismatched shapes", "too long", "out of vocabulary", "not json",
                                  "no inputs"])  # fmt: skip
def test_bad_request_is_a_400_and_the_worker_stays_up(
    torchserve: tuple[Server, int], batch: dict[str, np.ndarray], case: str
) -> None:
    server, management = torchserve
    describe = f"http://{LOOPBACK}:{management}/models/{RANKER_MODEL}"
    pids = sorted(w["pid"] for w in _get_json(describe)[0]["workers"])
    code, answer = _post(server, _bad(batch)[case])
    assert code == 400, answer
    assert answer.get("error"), answer
    assert server.process.poll() is None
    code, answer = _post(server, json.dumps(_body(batch)).encode())
    assert code == 200 and answer["outputs"][0]["shape"] == [50, 1]
    workers = _get_json(describe)[0]["workers"]
    # The same worker processes, all READY: the bad request did not crash and restart one.
    assert sorted(w["pid"] for w in workers) == pids
    assert all(w["status"] == "READY" for w in workers)
