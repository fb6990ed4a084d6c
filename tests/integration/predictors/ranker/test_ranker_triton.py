"""The real local Triton serving a tiny ranker trained in this test run, over v2 HTTP and gRPC.

The bundle is built by the same ``build_ranker`` the pipeline calls, with the ``tiny`` config
(seconds). HTTP is driven in-process with ``tritonclient.http``; gRPC from a child process
(``ranker_grpc_client.py``), because ``tritonclient.grpc`` cannot share a process with kserve,
which other integration tests of the same session import.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from predictors.ranker.server import RankerSettings, TritonServer, classify_probe
from predictors.ranker.triton_repo import TOKENIZER_DIR, read_config
from shopserve.artifacts import load_component
from shopserve.protocol import (
    ATTENTION_MASK,
    INPUT_IDS,
    RANKER,
    RANKER_MODEL,
    SCORE,
    TOKEN_TYPE_IDS,
)
from shopserve.text import PairTokenizer
from training.data.generator import GeneratorConfig, generate
from training.ranker.build import RankerBuildConfig, build_ranker
from training.ranker.optimise import OrtScorer
from training.ranker.pairs import encode_pairs

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
REPO = HERE.parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "ranker"
    build_ranker(generate(GeneratorConfig.tiny()), out, RankerBuildConfig.tiny(), version="test")
    return out


@pytest.fixture(scope="module")
def server(bundle: Path) -> Iterator[TritonServer]:
    settings = RankerSettings(
        bundle=bundle, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    triton = TritonServer(settings)
    triton.start()
    try:
        triton.wait_ready(timeout_s=90)
        yield triton
    finally:
        triton.stop()


@pytest.fixture
def http(server: TritonServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.http_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def batch(bundle: Path) -> dict[str, np.ndarray]:
    """50 real (query, title) pairs as the transformer would send them."""
    tokenizer = PairTokenizer.from_dir(bundle / TOKENIZER_DIR)
    max_length = int(read_config(bundle / RANKER_MODEL / "config.pbtxt").parameters[
        "max_sequence_length"])  # fmt: skip
    titles = [f"{c} running shoe size {40 + i % 6}" for i, c in
              enumerate(["red nike", "blue adidas", "black puma", "white asics", "grey"] * 10)]
    return encode_pairs(tokenizer, ["red running shoes"] * 50, titles, max_length)


def _inputs(arrays: dict[str, np.ndarray], datatype: str = "INT64") -> list[httpclient.InferInput]:
    out = []
    for spec in RANKER.inputs:
        tensor = httpclient.InferInput(spec.name, list(arrays[spec.name].shape), datatype)
        tensor.set_data_from_numpy(arrays[spec.name], binary_data=True)
        out.append(tensor)
    return out


def test_bundle_is_complete_and_verified(bundle: Path) -> None:
    manifest = load_component(bundle, "ranker")
    assert f"{RANKER_MODEL}/1/model.onnx" in manifest.files
    assert f"{RANKER_MODEL}/config.pbtxt" in manifest.files
    # One repository, two configurations: GPU (default) serves fp32, CPU (configs/cpu.pbtxt) the
    # guard's variant; both files of the same model are in the manifest.
    profiles = manifest.params["profiles"]
    assert profiles["gpu"]["model"] == f"{RANKER_MODEL}/1/model-fp32.onnx"
    assert profiles["cpu"]["config"] == f"{RANKER_MODEL}/configs/cpu.pbtxt"
    assert profiles["cpu"]["model_config_name"] == "cpu"
    for profile in profiles.values():
        assert {profile["config"], profile["model"]} <= set(manifest.files)
    assert profiles["gpu"]["precision"] == "fp32"
    assert profiles["cpu"]["precision"] == (
        "fp32" if manifest.params["variant"].endswith("fp32") else "int8")
    assert any(f.startswith(f"{TOKENIZER_DIR}/") for f in manifest.files)
    names = [row["name"] for row in manifest.metrics["evaluation"]]
    assert names[:3] == ["bm25", "zero-shot", "torch-fp32"]
    assert manifest.params["variant"] in names


def test_health(http: httpclient.InferenceServerClient) -> None:
    assert http.is_server_live() and http.is_server_ready()
    assert http.is_model_ready(RANKER_MODEL)


def test_metadata_lists_the_contract(http: httpclient.InferenceServerClient) -> None:
    metadata = http.get_model_metadata(RANKER_MODEL)
    assert metadata["inputs"] == [t.metadata() for t in RANKER.inputs]
    assert metadata["outputs"] == [t.metadata() for t in RANKER.outputs]


def test_http_scores_equal_onnxruntime_in_process(
    http: httpclient.InferenceServerClient, bundle: Path, batch: dict[str, np.ndarray]
) -> None:
    result = http.infer(RANKER_MODEL, _inputs(batch))
    scores = result.as_numpy(SCORE)
    assert scores.shape == (50, 1) and scores.dtype == np.float32
    expected = OrtScorer(bundle / RANKER_MODEL / "1" / "model.onnx")(batch)
    np.testing.assert_allclose(scores.reshape(-1), expected, rtol=1e-4, atol=1e-4)


def test_http_json_request_is_answered(server: TritonServer, batch: dict[str, np.ndarray]) -> None:
    body = {"inputs": [
        {"name": t.name, "datatype": "INT64", "shape": list(batch[t.name][:2].shape),
         "data": batch[t.name][:2].reshape(-1).tolist()} for t in RANKER.inputs
    ]}  # fmt: skip
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/{RANKER_MODEL}/infer",
        data=json.dumps(body).encode(), headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        answer = json.load(response)
    assert answer["outputs"][0]["name"] == SCORE and answer["outputs"][0]["shape"] == [2, 1]


def _bad_requests(batch: dict[str, np.ndarray]) -> dict[str, tuple[dict[str, np.ndarray], str]]:
    ids = batch[INPUT_IDS]
    return {
        "wrong dtype": ({k: v.astype(np.int32) for k, v in batch.items()}, "INT32"),
        "mismatched shapes": ({**batch, ATTENTION_MASK: batch[ATTENTION_MASK][:, :-1]}, "INT64"),
        "too long": ({k: np.tile(v, (1, 40)) for k, v in batch.items()}, "INT64"),
        "empty batch": ({k: v[:0] for k, v in batch.items()}, "INT64"),
        "out of vocabulary": ({**batch, INPUT_IDS: ids + 10**9}, "INT64"),
    }


@pytest.mark.parametrize(
    "case", ["wrong dtype", "mismatched shapes", "too long", "empty batch", "out of vocabulary"]
)
def test_http_bad_request_is_an_error_and_the_server_stays_up(
    http: httpclient.InferenceServerClient, batch: dict[str, np.ndarray], case: str
) -> None:
    arrays, datatype = _bad_requests(batch)[case]
    with pytest.raises(InferenceServerException) as info:
        http.infer(RANKER_MODEL, _inputs(arrays, datatype))
    assert info.value.status() == "400", info.value.message()
    assert info.value.message()
    assert http.is_server_live() and http.is_model_ready(RANKER_MODEL)
    assert http.infer(RANKER_MODEL, _inputs(batch)).as_numpy(SCORE).shape == (50, 1)


def test_unknown_model_is_not_found(http: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException):
        http.get_model_metadata("no-such-model")


def test_grpc_from_a_child_process(
    server: TritonServer, bundle: Path, batch: dict[str, np.ndarray], tmp_path: Path
) -> None:
    np.savez(tmp_path / "batch.npz", **batch)
    done = subprocess.run(
        [sys.executable, str(HERE / "ranker_grpc_client.py"), server.grpc_url,
         str(tmp_path / "batch.npz")],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in seen["inputs"]] == [
        (t.name, t.datatype, list(t.shape)) for t in RANKER.inputs
    ]
    assert seen["score_shape"] == [50, 1]
    expected = OrtScorer(bundle / RANKER_MODEL / "1" / "model.onnx")(batch)
    np.testing.assert_allclose(seen["scores"], expected, rtol=1e-4, atol=1e-4)
    for case, error in seen["bad"].items():
        assert error is not None, f"{case} was answered"
        assert "INVALID_ARGUMENT" in error, f"{case}: {error}"
    assert seen["live_after"]


def test_metrics_endpoint_counts_inferences(
    http: httpclient.InferenceServerClient, server: TritonServer, batch: dict[str, np.ndarray]
) -> None:
    http.infer(RANKER_MODEL, _inputs(batch))
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    assert f'nv_inference_request_success{{model="{RANKER_MODEL}",version="1"}}' in text
    assert "nv_inference_request_failure" in text


def test_watchdog_probe_answers_ok(server: TritonServer) -> None:
    assert classify_probe(*server.probe_model()) == "ok"


def test_reload_keeps_the_scores(
    http: httpclient.InferenceServerClient, server: TritonServer, batch: dict[str, np.ndarray]
) -> None:
    before = http.infer(RANKER_MODEL, _inputs(batch)).as_numpy(SCORE)
    server.reload_model()
    assert http.is_model_ready(RANKER_MODEL) and http.is_server_ready()
    np.testing.assert_array_equal(http.infer(RANKER_MODEL, _inputs(batch)).as_numpy(SCORE), before)


def _stubs(server: TritonServer) -> list[psutil.Process]:
    assert server.process is not None
    return [p for p in psutil.Process(server.process.pid).children(recursive=True)
            if p.name().startswith("triton_python") and p.status() != psutil.STATUS_ZOMBIE]


def test_the_model_is_warmed_to_its_largest_batch_at_load(
    http: httpclient.InferenceServerClient, server: TritonServer, bundle: Path
) -> None:
    # A fresh model process: it scored a [max_batch_size, max_sequence_length] batch at load, so
    # ONNX Runtime's arena is full size before traffic and the largest batch, then other shapes,
    # leave its memory where it was (before, the arena grew with each new shape: +36% in a soak).
    server.reload_model()
    config = read_config(bundle / RANKER_MODEL / "config.pbtxt")
    max_batch, max_length = config.max_batch_size, int(config.parameters["max_sequence_length"])
    (stub,) = _stubs(server)
    loaded = stub.memory_info().rss
    for rows, length in [(max_batch, max_length), (50, 9), (100, max_length - 5), (150, 13),
                         (max_batch, 7), (200, max_length)]:
        ids = np.full((rows, length), 1000, np.int64)
        arrays = {INPUT_IDS: ids, ATTENTION_MASK: np.ones_like(ids),
                  TOKEN_TYPE_IDS: np.zeros_like(ids)}
        assert http.infer(RANKER_MODEL, _inputs(arrays)).as_numpy(SCORE).shape == (rows, 1)
    grown = stub.memory_info().rss - loaded
    assert grown < 0.05 * loaded, f"{grown / 2**20:.1f} MB over {loaded / 2**20:.0f} MB after load"


def test_watchdog_reloads_a_model_whose_stub_was_killed(
    http: httpclient.InferenceServerClient, server: TritonServer, batch: dict[str, np.ndarray]
) -> None:
    # Last in the module: it kills the shared server's model process (and brings it back).
    before = http.infer(RANKER_MODEL, _inputs(batch)).as_numpy(SCORE)
    stubs = _stubs(server)
    assert len(stubs) == 1, stubs  # the reload above left no second stub behind
    stubs[0].kill()
    status, body = server.probe_model()
    assert (status, classify_probe(status, body)) == (500, "dead"), body
    assert http.is_model_ready(RANKER_MODEL)  # what Triton itself says: the lie the watchdog fixes
    watchdog = server.watchdog()
    assert watchdog.check()  # recovered (unload, then load)
    assert not watchdog.check()  # answers again
    np.testing.assert_array_equal(http.infer(RANKER_MODEL, _inputs(batch)).as_numpy(SCORE), before)
