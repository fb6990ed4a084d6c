"""``seq-recommender``'s Triton repository: config.pbtxt == ONNX graph == shared contract, the bundle's
two configurations, the local Python-backend folder, and the launcher serving it beside the ranker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from predictors.ranker.sequence_repo import (
    N_ITEMS,
    PYTHON_MODEL_SOURCE,
    SequenceServing,
    sequence_config_pbtxt,
    sequence_cpu_graph,
    sequence_profiles,
    write_local_sequence_repository,
    write_sequence_repository,
)
from predictors.ranker.server import (
    RankerSettings,
    local_repository,
    sequence_component,
    sequence_probe_body,
    server_command,
    triton_dist,
)
from predictors.ranker.triton_repo import (
    CPU_CONFIG_NAME,
    TritonModelConfig,
    model_path,
    onnx_io,
    read_config,
    selected_config,
    write_bundle_repository,
)
from shopserve.errors import BundleError
from shopserve.protocol import (
    ITEM_SEQUENCE,
    RANKER_MODEL,
    SEQUENCE,
    SEQUENCE_MODEL,
)
from training.sequence.export import export_onnx
from training.sequence.model import SASRec

N_ITEMS_TOY, LENGTH, DIM, TOP_K = 30, 5, 8, 10


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The serving graph of an untrained toy SASRec: the real export, a second to write."""
    torch.manual_seed(0)
    model = SASRec(N_ITEMS_TOY, LENGTH, dim=DIM, layers=1, heads=1, dropout=0.0).eval()
    return export_onnx(model, tmp_path_factory.mktemp("graph") / "model.onnx", TOP_K)


@pytest.fixture
def serving(graph: Path) -> SequenceServing:
    return SequenceServing.from_onnx(graph, N_ITEMS_TOY)


@pytest.fixture
def component(graph: Path, serving: SequenceServing, tmp_path: Path) -> Path:
    folder = tmp_path / "sequence"
    write_sequence_repository(folder, graph, serving)
    return folder


def test_dims_are_read_from_the_graph(serving: SequenceServing) -> None:
    assert (serving.sequence_length, serving.top_k, serving.dim, serving.n_items) == (
        LENGTH, TOP_K, DIM, N_ITEMS_TOY)  # fmt: skip


def test_a_graph_that_is_not_the_contract_is_refused(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])],
                                                "other", [x], [y]))
    onnx.save(model, tmp_path / "other.onnx")
    with pytest.raises(BundleError, match="contract"):
        SequenceServing.from_onnx(tmp_path / "other.onnx", 10)


@pytest.mark.parametrize("field", ["sequence_length", "top_k", "dim", "n_items", "max_batch_size"])
def test_serving_refuses_non_positive_fields(field: str) -> None:
    values = {"sequence_length": 5, "top_k": 3, "dim": 8, "n_items": 20, field: 0}
    with pytest.raises(ValueError, match=field):
        SequenceServing(**values)


def test_component_layout(component: Path, graph: Path) -> None:
    files = sorted(p.relative_to(component).as_posix() for p in component.rglob("*") if p.is_file())
    assert files == [f"{SEQUENCE_MODEL}/1/model.onnx", f"{SEQUENCE_MODEL}/config.pbtxt",
                     f"{SEQUENCE_MODEL}/configs/cpu.pbtxt"]
    assert (component / SEQUENCE_MODEL / "1" / "model.onnx").read_bytes() == graph.read_bytes()
    for profile in sequence_profiles().values():
        assert (component / profile["config"]).is_file() and (component / profile["model"]).is_file()


@pytest.mark.parametrize(("model_config_name", "kind"), [("", "KIND_GPU"), (CPU_CONFIG_NAME, "KIND_CPU")])
def test_each_configuration_equals_the_graph_and_the_contract(
    component: Path, model_config_name: str, kind: str
) -> None:
    model_dir = component / SEQUENCE_MODEL
    config_file = selected_config(model_dir, model_config_name)
    assert config_file == (model_dir / "config.pbtxt" if not model_config_name
                           else model_dir / "configs" / "cpu.pbtxt")
    config = read_config(config_file)
    assert config.name == SEQUENCE_MODEL == model_dir.name
    assert config.platform == "onnxruntime_onnx" and config.backend is None
    assert config.instance_kind == kind and config.max_batch_size > 0
    assert config.default_model_filename == "model.onnx"
    assert "dynamic_batching" in config_file.read_text()
    onnx_file = model_path(model_dir, config)
    assert onnx_file == model_dir / "1" / "model.onnx"
    io = onnx_io(onnx_file)
    # Triton's ONNX Runtime backend wants the graph's fixed dims; the batch dim is implicit.
    assert [(t.name, t.datatype, (-1, *t.dims)) for t in config.inputs] == io["inputs"]
    assert [(t.name, t.datatype, (-1, *t.dims)) for t in config.outputs] == io["outputs"]
    assert [(t.name, t.datatype) for t in config.inputs] == [(t.name, t.datatype) for t in SEQUENCE.inputs]
    assert [(t.name, t.datatype) for t in config.outputs] == [
        (t.name, t.datatype) for t in SEQUENCE.outputs]
    assert {k: config.parameters[k] for k in ("sequence_length", "top_k", N_ITEMS)} == {
        "sequence_length": str(LENGTH), "top_k": str(TOP_K), N_ITEMS: str(N_ITEMS_TOY)}
    assert ("intra_op_thread_count" in config.parameters) == (kind == "KIND_CPU")


def test_gpu_and_cpu_configurations_differ_only_in_the_device(component: Path) -> None:
    gpu = (component / SEQUENCE_MODEL / "config.pbtxt").read_text()
    cpu = (component / SEQUENCE_MODEL / "configs" / "cpu.pbtxt").read_text()
    differing = {line for line in set(gpu.splitlines()) ^ set(cpu.splitlines())}
    assert differing <= {"    kind: KIND_GPU", "    kind: KIND_CPU", '  key: "intra_op_thread_count"',
                         '  value: { string_value: "1" }', "parameters: {", "}"}


def test_profiles_name_the_files_and_the_config_names() -> None:
    profiles = sequence_profiles()
    assert profiles["gpu"] == {"config": f"{SEQUENCE_MODEL}/config.pbtxt",
                               "model": f"{SEQUENCE_MODEL}/1/model.onnx", "model_config_name": "",
                               "instance_kind": "KIND_GPU", "precision": "fp32"}
    assert profiles["cpu"]["config"] == f"{SEQUENCE_MODEL}/configs/cpu.pbtxt"
    assert profiles["cpu"]["model_config_name"] == CPU_CONFIG_NAME


def test_the_ranker_writer_renders_it() -> None:
    """One writer: the same text layout as bert-ranker's, only names, dims and parameters differ."""
    text = sequence_config_pbtxt("local", SequenceServing(LENGTH, TOP_K, DIM, N_ITEMS_TOY))
    assert text.startswith(f'name: "{SEQUENCE_MODEL}"\nbackend: "python"\nmax_batch_size: 256\n')
    assert "default_model_filename" not in text and "KIND_CPU" in text
    with pytest.raises(ValueError):
        sequence_config_pbtxt("local", SequenceServing(LENGTH, TOP_K, DIM, N_ITEMS_TOY),
                              model_filename="model.onnx")


def test_local_folder_runs_the_cpu_configuration_on_the_python_backend(
    component: Path, graph: Path, tmp_path: Path
) -> None:
    model_dir = write_local_sequence_repository(component, tmp_path / "models")
    config = read_config(model_dir / "config.pbtxt")
    cpu = read_config(component / SEQUENCE_MODEL / "configs" / "cpu.pbtxt")
    assert config.backend == "python" and config.platform is None
    assert config.default_model_filename is None
    assert (config.inputs, config.outputs, config.parameters) == (cpu.inputs, cpu.outputs, cpu.parameters)
    assert config.instance_kind == "KIND_CPU" and config.max_batch_size == cpu.max_batch_size
    assert (model_dir / "1" / "model.py").read_bytes() == PYTHON_MODEL_SOURCE.read_bytes()
    assert (model_dir / "1" / "model.onnx").read_bytes() == graph.read_bytes()


def test_a_component_without_its_model_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "sequence").mkdir()
    with pytest.raises(BundleError, match="not a Triton model folder"):
        sequence_cpu_graph(tmp_path / "sequence")


def test_a_cpu_configuration_naming_a_missing_graph_is_refused(component: Path, tmp_path: Path) -> None:
    (component / SEQUENCE_MODEL / "1" / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx"):
        write_local_sequence_repository(component, tmp_path / "models")


# --------------------------------------------------------------------------------------------------
# The launcher: which sequence component it serves, the repository and the command line.
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def ranker(tmp_path: Path) -> Path:
    onnx_file = tmp_path / "ranker.onnx"
    onnx_file.write_bytes(b"not parsed here")
    write_bundle_repository(tmp_path / "bundle" / "ranker", onnx_file, onnx_file, TritonModelConfig())
    return tmp_path / "bundle" / "ranker"


def test_sequence_component_defaults_to_the_folder_beside_the_ranker(ranker: Path) -> None:
    assert sequence_component(RankerSettings(bundle=ranker)) is None  # none beside it
    (ranker.parent / "sequence").mkdir()
    assert sequence_component(RankerSettings(bundle=ranker)) == ranker.parent / "sequence"
    assert sequence_component(RankerSettings(bundle=ranker, sequence_bundle="")) is None
    assert sequence_component(RankerSettings(bundle=ranker, sequence_bundle="/x/seq")) == Path("/x/seq")


def test_the_setting_reads_ranker_sequence_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKER_SEQUENCE_BUNDLE", "")
    assert RankerSettings().sequence_bundle == ""
    monkeypatch.setenv("RANKER_SEQUENCE_BUNDLE", "/b/sequence")
    assert RankerSettings().sequence_bundle == "/b/sequence"


def test_local_repository_holds_both_models(ranker: Path, component: Path, tmp_path: Path) -> None:
    repo = local_repository(ranker, tmp_path / "work", RankerSettings(), component)
    assert read_config(repo / RANKER_MODEL / "config.pbtxt").backend == "python"
    assert read_config(repo / SEQUENCE_MODEL / "config.pbtxt").backend == "python"
    alone = local_repository(ranker, tmp_path / "alone", RankerSettings())
    assert sorted(p.name for p in alone.iterdir()) == [RANKER_MODEL]


def test_command_loads_each_served_model(tmp_path: Path) -> None:
    settings = RankerSettings()
    both = server_command(triton_dist(), tmp_path, tmp_path, settings, (RANKER_MODEL, SEQUENCE_MODEL))
    assert [a for a in both if a.startswith("--load-model=")] == [
        f"--load-model={RANKER_MODEL}", f"--load-model={SEQUENCE_MODEL}"]
    alone = server_command(triton_dist(), tmp_path, tmp_path, settings)
    assert [a for a in alone if a.startswith("--load-model=")] == [f"--load-model={RANKER_MODEL}"]
    assert "--strict-readiness=true" in both  # the server is ready only while both models are


def test_probe_is_one_valid_session(graph: Path) -> None:
    import json

    from training.sequence.export import run_onnx

    body = json.loads(sequence_probe_body(LENGTH))
    (tensor,) = body["inputs"]
    assert tensor["name"] == ITEM_SEQUENCE and tensor["shape"] == [1, LENGTH]
    out = run_onnx(graph, np.asarray(tensor["data"], dtype=np.int64).reshape(1, LENGTH))
    assert 1 not in out["next_items"][0] and 0 not in out["next_items"][0]
