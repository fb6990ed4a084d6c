"""Triton model repositories for ``bert-ranker``: the bundle's (onnxruntime backend) and the local
one (Python backend running the bundle's CPU graph), plus a small ``config.pbtxt`` reader.

Three profiles share one writer, so tensor names and dims cannot drift between them:

* ``cluster``: ``platform: "onnxruntime_onnx"`` on ``KIND_GPU`` (optionally the TensorRT
  execution accelerator in fp16), what the KServe Triton ``ServingRuntime`` serves on a GPU;
* ``cpu``: the same ONNX Runtime platform on ``KIND_CPU`` (a CPU-only cluster, the dev values);
* ``local``: ``backend: "python"``, because the ``tritonserver`` shipped in ``nvidia-pytriton``
  has only the Python backend; its ``model.py`` runs the bundle's CPU graph with ONNX Runtime.

The bundle holds ONE model repository with two configurations (:func:`write_bundle_repository`),
chosen when Triton starts ("Custom Model Configuration" in Triton's model_configuration.md;
``--model-config-name`` exists since Triton 24.05 / 2.46, the chart pins 24.10 / 2.51):

* ``bert-ranker/config.pbtxt``: the ``cluster`` profile, the default, serving
  ``default_model_filename: "model-fp32.onnx"``, the fp32 graph (ONNX Runtime's CUDA and TensorRT
  providers have no kernels for the int8 graph's ``MatMulInteger`` / ``DynamicQuantizeLinear`` and
  would run them on the CPU);
* ``bert-ranker/configs/cpu.pbtxt``: the ``cpu`` profile, selected with
  ``tritonserver --model-config-name=cpu``, serving ``model.onnx``, the graph the quality guard
  chose (int8 when quantised), built for the CPU.

Both files are in ``bert-ranker/1/`` and are the same model (same layers and weights; the int8 one
quantised from the fp32 one). Triton falls back to ``config.pbtxt`` when the named file does not
exist, so a CPU server given a bundle without ``configs/cpu.pbtxt`` loads the GPU config and fails.

Tensor names, dtypes and dims come from ``shopserve.protocol.RANKER``; with ``max_batch_size > 0``
Triton's ``dims`` leave out the batch dim, so the contract's ``[-1, -1]`` is ``dims: [ -1 ]``.

The writer is shared: :func:`render_config` renders any model's configuration and
:func:`write_model_folder` lays out any model folder; ``seq-recommender``, served by the same
Triton beside ``bert-ranker``, is written through them by :mod:`predictors.ranker.sequence_repo`.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from shopserve.artifacts import MAX_SEQUENCE_LENGTH, RANKER_TOKENIZER_DIR
from shopserve.errors import BundleError
from shopserve.protocol import RANKER, RANKER_MODEL, TensorSpec

Profile = Literal["cluster", "cpu", "local"]

MODEL_FILE = "model.onnx"
"""The CPU graph (Triton's default ONNX file name): the guard's choice, int8 when quantised."""
GPU_MODEL_FILE = "model-fp32.onnx"
"""The fp32 graph of the same model, what the GPU configuration (``config.pbtxt``) serves."""
PYTHON_MODEL_FILE = "model.py"
SHARED_MODULE = Path(__file__).with_name("bert_ranker_batch.py")
"""Checks and grouped scoring the Python model imports from beside it (as the TorchServe handler)."""
VERSION = "1"
CONFIG_FILE = "config.pbtxt"
"""Triton's default model configuration (the GPU one in the bundle)."""
CONFIGS_DIR = "configs"
"""Folder of the custom configurations ``--model-config-name=<name>`` selects (``<name>.pbtxt``)."""
CPU_CONFIG_NAME = "cpu"
"""``--model-config-name`` of Triton on CPU: selects ``configs/cpu.pbtxt``."""
TOKENIZER_DIR = RANKER_TOKENIZER_DIR
"""Tokenizer folder inside the ranker component (the shared core's name)."""
# The same key names the manifest parameter and the config.pbtxt parameter: the longest sequence
# the model accepts (the tokenizer's truncation length).
INTRA_OP_THREADS = "intra_op_thread_count"
"""config.pbtxt parameter (ONNX Runtime backend's own name): intra-op threads per instance."""


@dataclass(frozen=True)
class TritonModelConfig:
    """Serving parameters of ``bert-ranker`` written into ``config.pbtxt``.

    Attributes:
        max_sequence_length: Longest pair in tokens (chosen from the data at training time).
        max_batch_size: Most pairs in one batch Triton forms.
        preferred_batch_sizes: Sizes the dynamic batcher aims for (a request is ~50 pairs).
        max_queue_delay_us: How long the batcher may hold a request to fill a batch.
        instances: Model instances per GPU (cluster) or in total (cpu, local).
        threads: ONNX Runtime intra-op threads per instance.
        tensorrt_fp16: Add the TensorRT execution accelerator in fp16 (cluster profile only).
        tensorrt_workspace_bytes: TensorRT workspace size.
    """

    max_sequence_length: int = 64
    max_batch_size: int = 256
    preferred_batch_sizes: tuple[int, ...] = (50, 100, 200)
    max_queue_delay_us: int = 2000
    instances: int = 1
    threads: int = 2
    tensorrt_fp16: bool = False
    tensorrt_workspace_bytes: int = 1 << 30
    extra_parameters: dict[str, str] = field(default_factory=dict)


_DTYPE = {"INT64": "TYPE_INT64", "FP32": "TYPE_FP32", "INT32": "TYPE_INT32", "FP16": "TYPE_FP16"}
"""v2 datatype -> config.pbtxt data_type."""
DTYPE_FROM_PBTXT = {v: k for k, v in _DTYPE.items()}


def _tensor(spec: TensorSpec) -> str:
    dims = ", ".join(str(d) for d in spec.shape[1:])  # batch dim implicit (max_batch_size > 0)
    return (
        "  {\n"
        f'    name: "{spec.name}"\n'
        f"    data_type: {_DTYPE[spec.datatype]}\n"
        f"    dims: [ {dims} ]\n"
        "  }"
    )


def _parameter(key: str, value: str) -> str:
    return f'parameters: {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}'


def render_config(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    profile: Profile,
    *,
    max_batch_size: int,
    preferred_batch_sizes: Sequence[int],
    max_queue_delay_us: int,
    instances: int,
    threads: int,
    parameters: Mapping[str, str],
    model_filename: str | None = None,
    tensorrt_fp16: bool = False,
    tensorrt_workspace_bytes: int = 1 << 30,
) -> str:
    """The ``config.pbtxt`` text of any model of this package for a profile (see module docstring).

    The one writer of both models' configurations (``bert-ranker`` through :func:`config_pbtxt`,
    ``seq-recommender`` through :mod:`predictors.ranker.sequence_repo`).

    Args:
        name: Model name (the folder name too).
        inputs, outputs: Tensors with their full shapes (batch dim first; it is left out of
            ``dims`` since ``max_batch_size > 0``).
        profile: ``cluster``, ``cpu`` or ``local``.
        max_batch_size, preferred_batch_sizes, max_queue_delay_us: The dynamic batcher.
        instances: Model instances per GPU (cluster) or in total (cpu, local).
        threads: ONNX Runtime intra-op threads per instance (not written for ``cluster``).
        parameters: String parameters (``parameters`` entries), sorted by key.
        model_filename: ``default_model_filename``, the file in the version folder the backend
            loads (ONNX Runtime's default is ``model.onnx``). Not for ``local``: the Python backend
            reads it as the name of its ``model.py``.
        tensorrt_fp16: Add the TensorRT execution accelerator in fp16 (``cluster`` only).
        tensorrt_workspace_bytes: TensorRT workspace size.
    """
    if profile not in ("cluster", "cpu", "local"):
        raise ValueError(f"unknown profile {profile!r}")
    if model_filename is not None and profile == "local":
        raise ValueError("the local profile's default_model_filename is the Python model's")
    preferred = ", ".join(str(b) for b in preferred_batch_sizes if b <= max_batch_size)
    lines = [f'name: "{name}"']
    if profile == "local":
        lines.append('backend: "python"')
    else:
        lines.append('platform: "onnxruntime_onnx"')
    if model_filename is not None:
        if "/" in model_filename or '"' in model_filename or not model_filename.strip():
            raise ValueError(f"bad model file name {model_filename!r}")
        lines.append(f'default_model_filename: "{model_filename}"')
    lines.append(f"max_batch_size: {max_batch_size}")
    lines.append("input [\n" + ",\n".join(_tensor(t) for t in inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(_tensor(t) for t in outputs) + "\n]")
    lines.append(
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {preferred} ]\n"
        f"  max_queue_delay_microseconds: {max_queue_delay_us}\n"
        "}"
    )
    kind = "KIND_GPU" if profile == "cluster" else "KIND_CPU"
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]")
    if profile == "cluster" and tensorrt_fp16:
        lines.append(
            "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator : [ {\n"
            '      name : "tensorrt"\n'
            '      parameters { key: "precision_mode" value: "FP16" }\n'
            f'      parameters {{ key: "max_workspace_size_bytes" '
            f'value: "{tensorrt_workspace_bytes}" }}\n'
            "    } ]\n  }\n}"
        )
    params = {} if profile == "cluster" else {INTRA_OP_THREADS: str(threads)}
    params.update(parameters)
    lines.extend(_parameter(k, v) for k, v in sorted(params.items()))
    return "\n".join(lines) + "\n"


def config_pbtxt(
    profile: Profile, config: TritonModelConfig, *, model_filename: str | None = None
) -> str:
    """The ``config.pbtxt`` text of ``bert-ranker`` for a profile (see module docstring).

    Args:
        profile: ``cluster``, ``cpu`` or ``local``.
        config: Serving parameters.
        model_filename: ``default_model_filename`` (see :func:`render_config`).
    """
    return render_config(
        RANKER_MODEL, RANKER.inputs, RANKER.outputs, profile,
        max_batch_size=config.max_batch_size,
        preferred_batch_sizes=config.preferred_batch_sizes,
        max_queue_delay_us=config.max_queue_delay_us,
        instances=config.instances,
        threads=config.threads,
        parameters={MAX_SEQUENCE_LENGTH: str(config.max_sequence_length),
                    **config.extra_parameters},
        model_filename=model_filename,
        tensorrt_fp16=config.tensorrt_fp16,
        tensorrt_workspace_bytes=config.tensorrt_workspace_bytes,
    )


def write_model_folder(
    out_dir: Path,
    name: str,
    configs: Mapping[str, str],
    files: Mapping[str, Path],
) -> Path:
    """Write one Triton model folder ``<out_dir>/<name>/``: its configurations and its files.

    The one layout of every model folder this package writes (bundle and local, both models).

    Args:
        out_dir: The repository (or component) folder.
        name: The model name.
        configs: Path inside the model folder (``config.pbtxt``, ``configs/cpu.pbtxt``) -> text.
        files: Path inside the version folder ``1/`` -> source file to copy there.

    Returns:
        The model folder ``<out_dir>/<name>``.
    """
    model_dir = Path(out_dir) / name
    version_dir = model_dir / VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    for rel, text in configs.items():
        (model_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (model_dir / rel).write_text(text)
    for rel, src in files.items():
        _copy(src, version_dir / rel)
    return model_dir


def write_repository(
    out_dir: Path,
    onnx_path: Path,
    config: TritonModelConfig,
    *,
    profile: Profile = "cluster",
) -> Path:
    """Write ``<out_dir>/bert-ranker/{config.pbtxt, 1/model.onnx}`` (and ``1/model.py`` locally).

    Returns:
        The model folder ``<out_dir>/bert-ranker``.
    """
    files = {MODEL_FILE: Path(onnx_path)}
    if profile == "local":
        files[PYTHON_MODEL_FILE] = Path(__file__).with_name("triton_python_model.py")
        files[SHARED_MODULE.name] = SHARED_MODULE
    return write_model_folder(out_dir, RANKER_MODEL, {CONFIG_FILE: config_pbtxt(profile, config)},
                              files)


def _copy(src: Path, dst: Path) -> None:
    if Path(src).resolve() != Path(dst).resolve():
        shutil.copyfile(src, dst)


def cpu_config_path() -> str:
    """Path of the CPU configuration inside the model folder (``configs/cpu.pbtxt``)."""
    return f"{CONFIGS_DIR}/{CPU_CONFIG_NAME}.pbtxt"


def write_bundle_repository(
    out_dir: Path, cpu_onnx: Path, gpu_onnx: Path, config: TritonModelConfig
) -> Path:
    """Write the bundle's model folder: one repository, a GPU and a CPU configuration.

    ``<out_dir>/bert-ranker/``: ``config.pbtxt`` (``cluster``, ``KIND_GPU``, serving
    ``1/model-fp32.onnx``) and ``configs/cpu.pbtxt`` (``cpu``, ``KIND_CPU``, serving
    ``1/model.onnx``); Triton picks the CPU one with ``--model-config-name=cpu``.

    Args:
        out_dir: The ranker component folder.
        cpu_onnx: The graph for the CPU (the guard's variant, int8 when quantised).
        gpu_onnx: The fp32 graph of the same model (same layers and weights) for the GPU.
        config: Serving parameters shared by both configurations (``tensorrt_fp16`` applies to
            the GPU one only, ``threads`` to the CPU one only).

    Returns:
        The model folder ``<out_dir>/bert-ranker``.
    """
    return write_model_folder(
        out_dir, RANKER_MODEL,
        {CONFIG_FILE: config_pbtxt("cluster", config, model_filename=GPU_MODEL_FILE),
         cpu_config_path(): config_pbtxt("cpu", config, model_filename=MODEL_FILE)},
        {MODEL_FILE: Path(cpu_onnx), GPU_MODEL_FILE: Path(gpu_onnx)},
    )


def bundle_profiles(
    model: str = RANKER_MODEL, gpu_model_file: str = GPU_MODEL_FILE
) -> dict[str, dict[str, str]]:
    """Which configuration and model file each profile of the bundle uses (for the manifest).

    Paths are relative to the component folder; ``model_config_name`` is the value of Triton's
    ``--model-config-name`` (empty: the default ``config.pbtxt``).

    Args:
        model: The model folder's name (``bert-ranker``, ``seq-recommender``).
        gpu_model_file: The file the GPU configuration serves (the ranker's fp32 graph; the
            sequence model serves its one graph, ``model.onnx``, on both).
    """
    return {
        "gpu": {"config": f"{model}/{CONFIG_FILE}",
                "model": f"{model}/{VERSION}/{gpu_model_file}",
                "model_config_name": "", "instance_kind": "KIND_GPU"},
        "cpu": {"config": f"{model}/{cpu_config_path()}",
                "model": f"{model}/{VERSION}/{MODEL_FILE}",
                "model_config_name": CPU_CONFIG_NAME, "instance_kind": "KIND_CPU"},
    }  # fmt: skip


class OnnxServing(Protocol):
    """What a one-graph ONNX model (``seq-recommender``, ``query-encoder``) serves with: its
    tensors, batching, instances, threads and ``config.pbtxt`` parameters."""

    max_batch_size: int
    preferred_batch_sizes: Sequence[int]
    max_queue_delay_us: int
    instances: int
    threads: int

    def tensors(self) -> tuple[Sequence[TensorSpec], Sequence[TensorSpec]]:
        """Inputs and outputs."""
        ...

    def parameters(self) -> Mapping[str, str]:
        """The ``config.pbtxt`` parameters."""
        ...


def onnx_config_pbtxt(model: str, profile: Profile, serving: OnnxServing, *,
                      model_filename: str | None = None) -> str:
    """The ``config.pbtxt`` text of a one-graph ONNX model for a profile (``cluster``, ``cpu``,
    ``local``)."""
    inputs, outputs = serving.tensors()
    return render_config(
        model, inputs, outputs, profile,
        max_batch_size=serving.max_batch_size,
        preferred_batch_sizes=serving.preferred_batch_sizes,
        max_queue_delay_us=serving.max_queue_delay_us,
        instances=serving.instances,
        threads=serving.threads,
        parameters=serving.parameters(),
        model_filename=model_filename,
    )


def write_onnx_repository(component_dir: Path, model: str, onnx_path: Path,
                          serving: OnnxServing, *, cpu_onnx: Path | None = None) -> Path:
    """Write a one-graph model's folder into a bundle component: GPU ``config.pbtxt`` and CPU
    ``configs/cpu.pbtxt``.

    Without ``cpu_onnx`` both serve ``1/model.onnx`` (``onnx_path``). With it, as the ranker's
    folder (:func:`write_bundle_repository`): the CPU configuration serves ``1/model.onnx``
    (``cpu_onnx``, an int8 graph of the same model) and the GPU one ``1/model-fp32.onnx``
    (``onnx_path``).

    Returns:
        The model folder ``<component_dir>/<model>``.
    """
    gpu_file = MODEL_FILE if cpu_onnx is None else GPU_MODEL_FILE
    files = {MODEL_FILE: Path(onnx_path)} if cpu_onnx is None else {
        MODEL_FILE: Path(cpu_onnx), GPU_MODEL_FILE: Path(onnx_path)}
    return write_model_folder(
        component_dir, model,
        {CONFIG_FILE: onnx_config_pbtxt(model, "cluster", serving, model_filename=gpu_file),
         cpu_config_path(): onnx_config_pbtxt(model, "cpu", serving, model_filename=MODEL_FILE)},
        files,
    )


def fp32_profiles(model: str) -> dict[str, dict[str, str]]:
    """:func:`bundle_profiles` of a one-graph fp32 model (the same ``model.onnx`` on both)."""
    return onnx_profiles(model, cpu_precision="fp32")


def onnx_profiles(model: str, *, cpu_precision: str) -> dict[str, dict[str, str]]:
    """:func:`bundle_profiles` of a folder of :func:`write_onnx_repository`: fp32 on the GPU;
    ``cpu_precision`` ``fp32`` (one ``model.onnx`` for both) or ``int8`` (``model.onnx`` on the
    CPU, ``model-fp32.onnx`` on the GPU)."""
    if cpu_precision not in ("fp32", "int8"):
        raise ValueError(f"cpu_precision must be fp32 or int8, got {cpu_precision!r}")
    profiles = bundle_profiles(model, MODEL_FILE if cpu_precision == "fp32" else GPU_MODEL_FILE)
    profiles["gpu"]["precision"] = "fp32"
    profiles["cpu"]["precision"] = cpu_precision
    return profiles


def selected_config(model_dir: Path, model_config_name: str = "") -> Path:
    """The configuration Triton loads for ``model_dir`` given ``--model-config-name``.

    Triton's rule (core ``GetModelConfigFullPath``): ``configs/<name>.pbtxt`` when a name is given
    and that file exists, else ``config.pbtxt``.
    """
    if model_config_name:
        custom = Path(model_dir) / CONFIGS_DIR / f"{model_config_name}.pbtxt"
        if custom.is_file():
            return custom
    return Path(model_dir) / CONFIG_FILE


def model_path(model_dir: Path, config: PbtxtModel) -> Path:
    """The ONNX file an onnxruntime-backend configuration serves (``default_model_filename``)."""
    return Path(model_dir) / VERSION / (config.default_model_filename or MODEL_FILE)


@dataclass(frozen=True)
class CpuGraph:
    """What a CPU server of the ranker serves: the CPU configuration and the ONNX graph it names.

    Attributes:
        config_file: ``configs/cpu.pbtxt`` (else ``config.pbtxt``), as Triton picks it.
        config: That configuration, parsed: the source of truth for the max sequence length and
            extra parameters (vocabulary size).
        onnx_file: The graph it serves (``default_model_filename``).
    """

    config_file: Path
    config: PbtxtModel
    onnx_file: Path

    @property
    def max_length(self) -> int:
        """The longest sequence the graph takes (special tokens included)."""
        return int(self.config.parameters[MAX_SEQUENCE_LENGTH])


def cpu_graph(
    component_dir: Path,
    model: str = RANKER_MODEL,
    required: Sequence[str] = (MAX_SEQUENCE_LENGTH,),
) -> CpuGraph:
    """The CPU configuration of a component's model folder and its graph, checked.

    ``tritonserver --model-config-name=cpu`` chooses the same file.

    Args:
        component_dir: The bundle's component folder (``ranker/``, ``sequence/``).
        model: The model folder inside it.
        required: Parameters the configuration must carry (the ranker's max sequence length).

    Raises:
        BundleError: the configuration lacks a required parameter or names a missing file.
    """
    source = Path(component_dir) / model
    config_file = selected_config(source, CPU_CONFIG_NAME)
    if not config_file.is_file():
        raise BundleError(f"{source}: no {CONFIG_FILE}; not a Triton model folder")
    config = read_config(config_file)
    for key in required:
        if key not in config.parameters:
            raise BundleError(f"{config_file} lacks parameter '{key}'")
    onnx_file = model_path(source, config)
    if not onnx_file.is_file():
        raise BundleError(f"{config_file} names {onnx_file.name}, which is not in {onnx_file.parent}")
    return CpuGraph(config_file, config, onnx_file)


# --------------------------------------------------------------------------------------------------
# Reading config.pbtxt back (enough of the text format for tests and for the local server).
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PbtxtTensor:
    """A tensor entry of ``config.pbtxt``: name, v2 datatype and dims (batch dim excluded)."""

    name: str
    datatype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class PbtxtModel:
    """The parts of a ``config.pbtxt`` the ranker checks."""

    name: str
    platform: str | None
    backend: str | None
    max_batch_size: int
    inputs: tuple[PbtxtTensor, ...]
    outputs: tuple[PbtxtTensor, ...]
    instance_kind: str | None
    parameters: dict[str, str]
    default_model_filename: str | None = None


def _block(text: str, key: str) -> str:
    """The bracketed body after ``key [`` (balanced), or ''."""
    match = re.search(rf"\b{key}\s*\[", text)
    if not match:
        return ""
    depth, start = 0, match.end() - 1
    for pos in range(start, len(text)):
        depth += {"[": 1, "]": -1}.get(text[pos], 0)
        if depth == 0:
            return text[start + 1 : pos]
    raise ValueError(f"unbalanced '{key} [' in config.pbtxt")


def _tensors(body: str) -> tuple[PbtxtTensor, ...]:
    out = []
    for entry in re.findall(r"\{([^{}]*)\}", body):
        name = re.search(r'name:\s*"([^"]+)"', entry)
        dtype = re.search(r"data_type:\s*(\w+)", entry)
        dims = re.search(r"dims:\s*\[([^\]]*)\]", entry)
        if not (name and dtype and dims):
            raise ValueError(f"incomplete tensor entry in config.pbtxt: {entry.strip()}")
        out.append(
            PbtxtTensor(
                name=name.group(1),
                datatype=DTYPE_FROM_PBTXT[dtype.group(1)],
                dims=tuple(int(d) for d in dims.group(1).split(",") if d.strip()),
            )
        )
    return tuple(out)


def read_config(path: Path) -> PbtxtModel:
    """Parse the ranker-relevant fields of a ``config.pbtxt``."""
    text = Path(path).read_text()

    def scalar(key: str) -> str | None:
        match = re.search(rf'^\s*{key}:\s*"?([^"\n]+)"?', text, re.MULTILINE)
        return match.group(1).strip() if match else None

    kind = re.search(r"kind:\s*(KIND_\w+)", text)
    params = dict(
        re.findall(r'key:\s*"([^"]+)"\s*value:\s*\{\s*string_value:\s*"([^"]*)"\s*\}', text)
    )
    return PbtxtModel(
        name=scalar("name") or "",
        platform=scalar("platform"),
        backend=scalar("backend"),
        max_batch_size=int(scalar("max_batch_size") or 0),
        inputs=_tensors(_block(text, "input")),
        outputs=_tensors(_block(text, "output")),
        instance_kind=kind.group(1) if kind else None,
        parameters=params,
        default_model_filename=scalar("default_model_filename"),
    )


def onnx_io(path: Path) -> dict[str, Any]:
    """Names, v2 datatypes and shapes (``-1`` for symbolic dims) of an ONNX graph's inputs/outputs."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    elem = {onnx.TensorProto.INT64: "INT64", onnx.TensorProto.FLOAT: "FP32",
            onnx.TensorProto.INT32: "INT32", onnx.TensorProto.FLOAT16: "FP16"}

    def describe(values: Any) -> list[tuple[str, str, tuple[int, ...]]]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
            out.append((value.name, elem[tensor.elem_type], dims))
        return out

    initialisers = {i.name for i in model.graph.initializer}
    return {
        "inputs": [v for v in describe(model.graph.input) if v[0] not in initialisers],
        "outputs": describe(model.graph.output),
    }
