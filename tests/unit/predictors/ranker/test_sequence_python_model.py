"""The local ``seq-recommender`` Python-backend model (``triton_sequence_model.py``) without Triton.

The model runs inside Triton's stub, where ``triton_python_backend_utils`` is the stub's own module;
here a stand-in with the same few names (requests, tensors, responses, errors) takes its place, so
``initialize`` and ``execute`` run for real: the configuration Triton would hand over (the local
folder's ``config.pbtxt``), ONNX Runtime on a real exported graph, and every check per request. The
integration tests run the same file inside the real Triton.
"""

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
import torch

from predictors.ranker.sequence_repo import (
    SequenceServing,
    write_local_sequence_repository,
    write_sequence_repository,
)
from predictors.ranker.triton_repo import read_config
from shopserve.protocol import ITEM_SEQUENCE, NEXT_ITEMS, NEXT_SCORES, SEQUENCE_MODEL, SESSION_EMBEDDING
from training.sequence.export import export_onnx, run_onnx
from training.sequence.model import SASRec

N, LENGTH, DIM, TOP_K = 40, 6, 8, 12


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


def _triton_model_config(config_file: Path) -> dict[str, Any]:
    """The JSON Triton hands to ``initialize`` for a ``config.pbtxt`` (the fields the model reads)."""
    config = read_config(config_file)
    dtype = {"INT64": "TYPE_INT64", "FP32": "TYPE_FP32"}

    def tensors(entries: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "data_type": dtype[t.datatype], "dims": [str(d) for d in t.dims]}
                for t in entries]

    return {"name": config.name, "backend": config.backend, "max_batch_size": config.max_batch_size,
            "input": tensors(config.inputs), "output": tensors(config.outputs),
            "parameters": {k: {"string_value": v} for k, v in config.parameters.items()}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local ``seq-recommender`` folder of a toy component, as the launcher writes it."""
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("sequence")
    graph = export_onnx(SASRec(N, LENGTH, dim=DIM, layers=1, heads=2, dropout=0.0).eval(),
                        tmp / "model.onnx", TOP_K)
    write_sequence_repository(tmp / "sequence", graph, SequenceServing.from_onnx(graph, N))
    return write_local_sequence_repository(tmp / "sequence", tmp / "models")


@pytest.fixture
def model(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _stand_in())
    module = importlib.import_module("predictors.ranker.triton_sequence_model")
    module = importlib.reload(module)  # bound to this test's stand-in
    instance = module.TritonPythonModel()
    instance.initialize({"model_config": json.dumps(_triton_model_config(model_dir / "config.pbtxt")),
                         "model_repository": str(model_dir), "model_version": "1"})
    yield instance
    instance.finalize()
    sys.modules.pop("predictors.ranker.triton_sequence_model", None)


def _sessions(rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((rows, LENGTH), dtype=np.int64)
    for r in range(rows):
        k = int(rng.integers(1, LENGTH + 1))
        out[r, LENGTH - k:] = rng.choice(np.arange(1, N + 1), k, replace=False)
    return out


def test_it_reads_the_configuration(model: Any) -> None:
    assert model.input_name == ITEM_SEQUENCE
    assert [name for name, _ in model.outputs] == [NEXT_ITEMS, NEXT_SCORES, SESSION_EMBEDDING]
    assert (model.length, model.n_items) == (LENGTH, N)


def test_answers_equal_the_graph_run_directly(model: Any, model_dir: Path) -> None:
    sessions = _sessions(3)
    (response,) = model.execute([_Request(item_sequence=sessions)])
    assert response.error is None
    expected = run_onnx(model_dir / "1" / "model.onnx", sessions)
    assert response.outputs[NEXT_ITEMS].dtype == np.int64
    assert response.outputs[NEXT_SCORES].dtype == np.float32
    assert response.outputs[NEXT_ITEMS].shape == (3, TOP_K)
    assert response.outputs[SESSION_EMBEDDING].shape == (3, DIM)
    for name, array in expected.items():
        np.testing.assert_allclose(response.outputs[name], array, rtol=1e-5, atol=1e-5)
    for row, items in zip(sessions, response.outputs[NEXT_ITEMS], strict=True):
        assert not np.isin(items, row).any() and (items > 0).all()


BAD = {
    "wrong dtype": (_sessions(1).astype(np.int32), "datatype INT32, expected INT64"),
    "float": (_sessions(1).astype(np.float32), "datatype FP32, expected INT64"),
    "rank 1": (_sessions(1)[0], f"shape [{LENGTH}], expected [-1, {LENGTH}]"),
    "rank 3": (_sessions(2)[None], "expected [-1, "),
    "empty batch": (_sessions(1)[:0], "empty batch"),
    "too short": (_sessions(1)[:, 1:], f"length {LENGTH - 1}, the model takes exactly {LENGTH}"),
    "too long": (np.pad(_sessions(1), ((0, 0), (1, 0))), f"length {LENGTH + 1}"),
    "negative index": (np.concatenate([[[-1]], _sessions(1)[:, 1:]], axis=1),
                       f"item index -1 outside [0, {N}]"),
    "index past the items": (np.full((1, LENGTH), N + 1, dtype=np.int64),
                             f"item index {N + 1} outside [0, {N}]"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_request_gets_invalid_arg_naming_the_input(model: Any, case: str) -> None:
    array, message = BAD[case]
    (response,) = model.execute([_Request(item_sequence=array)])
    assert response.error is not None and response.error.code() == _Error.INVALID_ARG
    assert f"input '{ITEM_SEQUENCE}'" in response.error.message()
    assert message in response.error.message()


def test_a_missing_input_is_invalid_arg(model: Any) -> None:
    (response,) = model.execute([_Request(other=_sessions(1))])
    assert response.error.code() == _Error.INVALID_ARG
    assert f"input '{ITEM_SEQUENCE}' is missing" in response.error.message()


def test_the_padding_and_the_last_item_are_valid_indices(model: Any) -> None:
    edge = np.zeros((1, LENGTH), dtype=np.int64)
    edge[0, -1] = N
    (response,) = model.execute([_Request(item_sequence=edge)])
    assert response.error is None


def test_a_bad_request_fails_alone_in_its_batch(model: Any, model_dir: Path) -> None:
    first, second = _sessions(1, seed=1), _sessions(2, seed=2)
    responses = model.execute([_Request(item_sequence=first), _Request(item_sequence=first[:, 1:]),
                               _Request(item_sequence=second)])
    assert responses[1].error.code() == _Error.INVALID_ARG
    for response, sessions in ((responses[0], first), (responses[2], second)):
        assert response.error is None
        expected = run_onnx(model_dir / "1" / "model.onnx", sessions)
        np.testing.assert_array_equal(response.outputs[NEXT_ITEMS], expected[NEXT_ITEMS])
        np.testing.assert_allclose(response.outputs[SESSION_EMBEDDING], expected[SESSION_EMBEDDING],
                                   rtol=1e-5, atol=1e-5)


def test_a_session_failure_is_internal_for_each_good_request(model: Any) -> None:
    class Broken:
        def run(self, *_args: object) -> None:
            raise RuntimeError("onnxruntime: out of memory")

    model.session = Broken()
    responses = model.execute([_Request(item_sequence=_sessions(1)),
                               _Request(item_sequence=_sessions(1).astype(np.int32))])
    assert responses[0].error.code() == _Error.INTERNAL
    assert "inference failed: onnxruntime: out of memory" in responses[0].error.message()
    assert responses[1].error.code() == _Error.INVALID_ARG


def test_the_model_folder_is_the_launchers(model_dir: Path) -> None:
    assert model_dir.name == SEQUENCE_MODEL
    assert read_config(model_dir / "config.pbtxt").backend == "python"
