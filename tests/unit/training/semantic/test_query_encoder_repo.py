"""``query-encoder``'s Triton side without Triton: the repository writer (config.pbtxt == graph ==
shared contract), the local Python-backend folder, the Python model itself (``initialize`` and
``execute`` on a toy graph, with a stand-in for the stub's ``triton_python_backend_utils``), the
launcher serving it beside the ranker, and the pipeline step that builds it."""

from __future__ import annotations

import importlib
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.lifecycle.config import SEMANTIC_PRESETS, ConfigError, semantic_config
from pipeline.lifecycle.run import STEPS
from pipeline.lifecycle.semantic import SEMANTIC_TRAIN_DIR
from predictors.ranker.encoder_repo import (
    PYTHON_MODEL_SOURCE,
    EncoderServing,
    encoder_config_pbtxt,
    encoder_profiles,
    write_encoder_repository,
    write_local_encoder_repository,
)
from predictors.ranker.server import (
    RankerSettings,
    encoder_probe_body,
    local_repository,
    semantic_component,
    server_command,
    triton_dist,
)
from predictors.ranker.triton_repo import (
    TritonModelConfig,
    read_config,
    write_bundle_repository,
)
from shopserve.errors import BundleError
from shopserve.protocol import (
    ATTENTION_MASK,
    INPUT_IDS,
    QUERY_EMBEDDING,
    QUERY_ENCODER,
    QUERY_ENCODER_MODEL,
    RANKER_MODEL,
)
from tests.unit.training.semantic.conftest import TOY_DIM, TOY_VOCAB
from training.semantic.export import run_onnx

MAX_LENGTH = 8


@pytest.fixture(scope="module")
def component(toy_graph: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("component") / "semantic"
    serving = EncoderServing.from_onnx(toy_graph, max_query_length=MAX_LENGTH, vocab_size=TOY_VOCAB)
    write_encoder_repository(folder, toy_graph, serving)
    return folder


# ------------------------------------------------------------------ the repository


def test_serving_reads_the_graph_and_refuses_another(toy_graph: Path, tmp_path: Path) -> None:
    serving = EncoderServing.from_onnx(toy_graph, max_query_length=MAX_LENGTH, vocab_size=TOY_VOCAB)
    assert (serving.dim, serving.max_query_length, serving.vocab_size) == (TOY_DIM, 8, TOY_VOCAB)
    inputs, outputs = serving.tensors()
    assert inputs == QUERY_ENCODER.inputs
    assert [(t.name, t.shape) for t in outputs] == [(QUERY_EMBEDDING, (-1, TOY_DIM))]
    import onnx

    graph = onnx.load(str(toy_graph))
    graph.graph.output[0].name = "embedding"
    for node in graph.graph.node:
        node.output[:] = ["embedding" if o == QUERY_EMBEDDING else o for o in node.output]
    onnx.save(graph, str(tmp_path / "renamed.onnx"))
    with pytest.raises(BundleError, match="contract"):
        EncoderServing.from_onnx(tmp_path / "renamed.onnx", max_query_length=8, vocab_size=10)
    with pytest.raises(ValueError, match="max_query_length"):
        EncoderServing(dim=4, max_query_length=0, vocab_size=10)


def test_the_bundle_folder_has_a_gpu_and_a_cpu_configuration(component: Path) -> None:
    model = component / QUERY_ENCODER_MODEL
    gpu, cpu = read_config(model / "config.pbtxt"), read_config(model / "configs" / "cpu.pbtxt")
    assert (gpu.platform, gpu.instance_kind, gpu.default_model_filename) == (
        "onnxruntime_onnx", "KIND_GPU", "model.onnx")
    assert (cpu.platform, cpu.instance_kind, cpu.default_model_filename) == (
        "onnxruntime_onnx", "KIND_CPU", "model.onnx")
    assert (model / "1" / "model.onnx").is_file()
    assert sorted(p.name for p in (model / "1").iterdir()) == ["model.onnx"]
    assert encoder_profiles()["gpu"]["model"] == f"{QUERY_ENCODER_MODEL}/1/model.onnx"
    assert encoder_profiles()["cpu"]["config"] == f"{QUERY_ENCODER_MODEL}/configs/cpu.pbtxt"


def test_an_int8_graph_serves_the_cpu_and_the_fp32_graph_the_gpu(
    toy_graph: Path, tmp_path: Path
) -> None:
    import shutil

    int8 = tmp_path / "int8.onnx"  # any other file: the writer places, never reads, the graphs
    shutil.copyfile(toy_graph, int8)
    with open(int8, "ab") as handle:
        handle.write(b"\0")
    serving = EncoderServing.from_onnx(toy_graph, max_query_length=MAX_LENGTH, vocab_size=TOY_VOCAB)
    model = write_encoder_repository(tmp_path / "semantic", toy_graph, serving, cpu_onnx=int8)
    gpu, cpu = read_config(model / "config.pbtxt"), read_config(model / "configs" / "cpu.pbtxt")
    assert (gpu.instance_kind, gpu.default_model_filename) == ("KIND_GPU", "model-fp32.onnx")
    assert (cpu.instance_kind, cpu.default_model_filename) == ("KIND_CPU", "model.onnx")
    assert (model / "1" / "model.onnx").read_bytes() == int8.read_bytes()
    assert (model / "1" / "model-fp32.onnx").read_bytes() == toy_graph.read_bytes()
    profiles = encoder_profiles("int8")
    assert profiles["gpu"] == {**encoder_profiles()["gpu"], "precision": "fp32",
                               "model": f"{QUERY_ENCODER_MODEL}/1/model-fp32.onnx"}
    assert (profiles["cpu"]["model"], profiles["cpu"]["precision"]) == (
        f"{QUERY_ENCODER_MODEL}/1/model.onnx", "int8")
    with pytest.raises(ValueError, match="cpu_precision"):
        encoder_profiles("fp16")
    # The local Triton takes the CPU configuration's graph: the int8 one.
    local = write_local_encoder_repository(tmp_path / "semantic", tmp_path / "models")
    assert (local / "1" / "model.onnx").read_bytes() == int8.read_bytes()


def test_the_local_folder_is_a_python_model_with_the_bundles_parameters(
    component: Path, tmp_path: Path
) -> None:
    folder = write_local_encoder_repository(component, tmp_path / "models")
    config = read_config(folder / "config.pbtxt")
    assert config.backend == "python" and config.platform is None
    assert config.instance_kind == "KIND_CPU" and config.default_model_filename is None
    assert config.parameters == {"intra_op_thread_count": "1", "max_query_length": "8",
                                 "vocab_size": str(TOY_VOCAB)}
    assert sorted(p.name for p in (folder / "1").iterdir()) == [
        "bert_ranker_batch.py", "model.onnx", "model.py"]
    assert (folder / "1" / "model.py").read_text() == PYTHON_MODEL_SOURCE.read_text()
    text = encoder_config_pbtxt("local", EncoderServing.from_config(config))
    assert 'backend: "python"' in text and "dims: [ 16 ]" in text


def test_a_component_without_parameters_is_refused(component: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "semantic"
    shutil.copytree(component, broken)
    cpu = broken / QUERY_ENCODER_MODEL / "configs" / "cpu.pbtxt"
    cpu.write_text(cpu.read_text().replace('key: "vocab_size"', 'key: "vocabulary"'))
    with pytest.raises(BundleError, match="vocab_size"):
        write_local_encoder_repository(broken, tmp_path / "models")


# ------------------------------------------------------------------ the launcher


def _ranker_component(folder: Path, graph: Path) -> Path:
    """A stand-in ranker component (any graph does: the launcher only lays it out here)."""
    write_bundle_repository(folder, graph, graph, TritonModelConfig())
    return folder


def test_the_launcher_serves_the_semantic_component_beside_the_ranker(
    component: Path, toy_graph: Path, tmp_path: Path
) -> None:
    ranker = _ranker_component(component.parent / "ranker", toy_graph)
    settings = RankerSettings(bundle=ranker)
    assert semantic_component(settings) == component
    assert semantic_component(RankerSettings(bundle=ranker, semantic_bundle="")) is None
    assert semantic_component(RankerSettings(bundle=tmp_path / "ranker")) is None
    repo = local_repository(ranker, tmp_path, settings, None, component)
    assert sorted(p.name for p in repo.iterdir()) == [RANKER_MODEL, QUERY_ENCODER_MODEL]
    command = server_command(triton_dist(), tmp_path, repo, settings,
                             (RANKER_MODEL, QUERY_ENCODER_MODEL))
    assert f"--load-model={QUERY_ENCODER_MODEL}" in command


def test_the_setting_reads_ranker_semantic_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKER_SEMANTIC_BUNDLE", "/b/semantic")
    assert RankerSettings().semantic_bundle == "/b/semantic"
    assert semantic_component(RankerSettings()) == Path("/b/semantic")


def test_the_probe_is_a_valid_request(component: Path) -> None:
    body = json.loads(encoder_probe_body())
    assert [(t["name"], t["datatype"]) for t in body["inputs"]] == [
        (t.name, t.datatype) for t in QUERY_ENCODER.inputs]
    assert all(t["shape"] == [1, len(t["data"])] for t in body["inputs"])


# ------------------------------------------------------------------ the Python model


class _Error:
    INVALID_ARG = "INVALID_ARG"
    INTERNAL = "INTERNAL"

    def __init__(self, message: str, code: str = "INTERNAL") -> None:
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> str:
        return self._code


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Response:
    def __init__(self, output_tensors: list[_Tensor] | None = None, error: _Error | None = None) -> None:
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors or []}
        self.error = error


class _Request:
    def __init__(self, **tensors: np.ndarray) -> None:
        self.tensors = {name: _Tensor(name, array) for name, array in tensors.items()}


def _stand_in() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _Tensor  # type: ignore[attr-defined]
    module.InferenceResponse = _Response  # type: ignore[attr-defined]
    module.TritonError = _Error  # type: ignore[attr-defined]
    module.get_input_tensor_by_name = (  # type: ignore[attr-defined]
        lambda request, name: request.tensors.get(name))
    return module


@pytest.fixture(scope="module")
def model_dir(component: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_local_encoder_repository(component, tmp_path_factory.mktemp("models"))


@pytest.fixture
def model(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    config = read_config(model_dir / "config.pbtxt")
    dtype = {"INT64": "TYPE_INT64", "FP32": "TYPE_FP32"}

    def tensors(entries: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "data_type": dtype[t.datatype], "dims": [str(d) for d in t.dims]}
                for t in entries]

    triton_config = {"name": config.name, "backend": config.backend,
                     "max_batch_size": config.max_batch_size, "input": tensors(config.inputs),
                     "output": tensors(config.outputs),
                     "parameters": {k: {"string_value": v} for k, v in config.parameters.items()}}
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _stand_in())
    module = importlib.reload(importlib.import_module("predictors.ranker.triton_encoder_model"))
    instance = module.TritonPythonModel()
    instance.initialize({"model_config": json.dumps(triton_config),
                         "model_repository": str(model_dir), "model_version": "1"})
    yield instance
    instance.finalize()
    sys.modules.pop("predictors.ranker.triton_encoder_model", None)


def _query(ids: list[list[int]], mask: list[list[int]] | None = None) -> dict[str, np.ndarray]:
    array = np.asarray(ids, dtype=np.int64)
    return {INPUT_IDS: array,
            ATTENTION_MASK: np.ones_like(array) if mask is None else np.asarray(mask, np.int64)}


def test_answers_are_the_graphs_request_by_request(model: Any, toy_graph: Path) -> None:
    queries = [_query([[1, 5, 9, 2]]), _query([[1, 7, 2]]), _query([[1, 5, 9, 2], [1, 3, 2, 0]],
                                                                   [[1, 1, 1, 1], [1, 1, 1, 0]])]
    responses = model.execute([_Request(**q) for q in queries])
    for query, response in zip(queries, responses, strict=True):
        assert response.error is None
        out = response.outputs[QUERY_EMBEDDING]
        assert out.dtype == np.float32 and out.shape == (query[INPUT_IDS].shape[0], TOY_DIM)
        np.testing.assert_allclose(out, run_onnx(toy_graph, query), atol=1e-6)


BAD: dict[str, tuple[dict[str, np.ndarray], str]] = {
    "missing mask": ({INPUT_IDS: np.array([[1, 2]], np.int64)}, ATTENTION_MASK),
    "int32 ids": ({**_query([[1, 2]]), INPUT_IDS: np.array([[1, 2]], np.int32)}, INPUT_IDS),
    "rank 1": ({INPUT_IDS: np.array([1, 2], np.int64), ATTENTION_MASK: np.array([1, 1], np.int64)},
               INPUT_IDS),
    "shapes differ": ({**_query([[1, 2, 3]]), ATTENTION_MASK: np.ones((1, 2), np.int64)},
                      ATTENTION_MASK),
    "empty": (_query([[]]), INPUT_IDS),
    "too long": (_query([[1] * (MAX_LENGTH + 1)]), INPUT_IDS),
    "negative id": (_query([[1, -3, 2]]), INPUT_IDS),
    "id past the vocabulary": (_query([[1, TOY_VOCAB, 2]]), INPUT_IDS),
    "mask of 2": (_query([[1, 2]], [[1, 2]]), ATTENTION_MASK),
    "no unmasked token": (_query([[1, 2]], [[0, 0]]), ATTENTION_MASK),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_request_fails_alone_naming_its_input(model: Any, toy_graph: Path, case: str) -> None:
    tensors, name = BAD[case]
    good = _query([[1, 4, 2]])
    bad, ok = model.execute([_Request(**tensors), _Request(**good)])
    assert bad.error is not None and bad.error.code() == "INVALID_ARG"
    assert f"'{name}'" in bad.error.message(), bad.error.message()
    assert ok.error is None
    np.testing.assert_allclose(ok.outputs[QUERY_EMBEDDING], run_onnx(toy_graph, good), atol=1e-6)


# ------------------------------------------------------------------ the pipeline step


def test_the_step_reads_the_data_and_feeds_the_package_step() -> None:
    steps = {s.name: s for s in STEPS}
    step = steps["train-semantic"]
    assert step.folder == SEMANTIC_TRAIN_DIR and step.inputs == ("data",)
    assert set(step.sections) == {"semantic", "ranker"}  # the ranker's split
    assert "train-semantic" in steps["package"].inputs and "semantic" in steps["package"].sections
    names = [s.name for s in STEPS]
    assert names.index("data") < names.index("train-semantic") < names.index("package")


def test_the_presets_and_overrides() -> None:
    assert semantic_config({}).steps > semantic_config({"preset": "tiny"}).steps > 0
    assert set(SEMANTIC_PRESETS) == {"demo", "tiny"}
    config = semantic_config({"preset": "tiny", "seed": 3,
                              "overrides": {"steps": 0, "index": {"ef_search": 64}}}, progress=False)
    assert (config.steps, config.seed, config.index.ef_search, config.progress) == (0, 3, 64, False)
    with pytest.raises(ConfigError, match="semantic.preset"):
        semantic_config({"preset": "huge"})
    with pytest.raises(ConfigError, match="unknown field"):
        semantic_config({"overrides": {"epochs": 3}})
    with pytest.raises(ConfigError, match="semantic.overrides"):
        semantic_config({"overrides": {"batch_size": 0}})
