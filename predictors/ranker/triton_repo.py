"""Triton model repositories for ``bert-ranker``: the bundle's (onnxruntime backend) and the local
one (Python backend running the same ``model.onnx``), plus a small ``config.pbtxt`` reader.

Two profiles share one writer, so tensor names and dims cannot drift between them:

* ``cluster``: ``platform: "onnxruntime_onnx"`` on ``KIND_GPU`` (optionally the TensorRT
  execution accelerator in fp16), what the KServe Triton ``ServingRuntime`` serves from the bundle;
* ``cpu``: the same ONNX Runtime platform on ``KIND_CPU`` (a CPU-only cluster, the dev values);
* ``local``: ``backend: "python"``, because the ``tritonserver`` shipped in ``nvidia-pytriton``
  has only the Python backend; its ``model.py`` runs the bundle's ``model.onnx`` with ONNX Runtime.

Tensor names, dtypes and dims come from ``shopserve.protocol.RANKER``; with ``max_batch_size > 0``
Triton's ``dims`` leave out the batch dim, so the contract's ``[-1, -1]`` is ``dims: [ -1 ]``.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from shopserve.artifacts import MAX_SEQUENCE_LENGTH, RANKER_TOKENIZER_DIR
from shopserve.protocol import RANKER, RANKER_MODEL, TensorSpec

Profile = Literal["cluster", "cpu", "local"]

MODEL_FILE = "model.onnx"
PYTHON_MODEL_FILE = "model.py"
VERSION = "1"
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


def config_pbtxt(profile: Profile, config: TritonModelConfig) -> str:
    """The ``config.pbtxt`` text of ``bert-ranker`` for a profile (see module docstring)."""
    if profile not in ("cluster", "cpu", "local"):
        raise ValueError(f"unknown profile {profile!r}")
    preferred = ", ".join(str(b) for b in config.preferred_batch_sizes if b <= config.max_batch_size)
    lines = [f'name: "{RANKER_MODEL}"']
    if profile == "local":
        lines.append('backend: "python"')
    else:
        lines.append('platform: "onnxruntime_onnx"')
    lines.append(f"max_batch_size: {config.max_batch_size}")
    lines.append("input [\n" + ",\n".join(_tensor(t) for t in RANKER.inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(_tensor(t) for t in RANKER.outputs) + "\n]")
    lines.append(
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {preferred} ]\n"
        f"  max_queue_delay_microseconds: {config.max_queue_delay_us}\n"
        "}"
    )
    kind = "KIND_GPU" if profile == "cluster" else "KIND_CPU"
    lines.append(f"instance_group [\n  {{\n    count: {config.instances}\n    kind: {kind}\n  }}\n]")
    if profile == "cluster" and config.tensorrt_fp16:
        lines.append(
            "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator : [ {\n"
            '      name : "tensorrt"\n'
            '      parameters { key: "precision_mode" value: "FP16" }\n'
            f'      parameters {{ key: "max_workspace_size_bytes" '
            f'value: "{config.tensorrt_workspace_bytes}" }}\n'
            "    } ]\n  }\n}"
        )
    params = {MAX_SEQUENCE_LENGTH: str(config.max_sequence_length)}
    if profile != "cluster":
        params[INTRA_OP_THREADS] = str(config.threads)
    params.update(config.extra_parameters)
    lines.extend(_parameter(k, v) for k, v in sorted(params.items()))
    return "\n".join(lines) + "\n"


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
    model_dir = Path(out_dir) / RANKER_MODEL
    version_dir = model_dir / VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(config_pbtxt(profile, config))
    if Path(onnx_path).resolve() != (version_dir / MODEL_FILE).resolve():
        shutil.copyfile(onnx_path, version_dir / MODEL_FILE)
    if profile == "local":
        shutil.copyfile(Path(__file__).with_name("triton_python_model.py"),
                        version_dir / PYTHON_MODEL_FILE)
    return model_dir


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
