"""Triton model repositories for ``query-encoder``, the semantic path's query embedder served beside
the ranker.

The bundle's ``semantic`` component holds one model folder with two configurations, as the
ranker's and the sequence model's (:mod:`predictors.ranker.triton_repo`, whose writer this module
uses)::

    semantic/query-encoder/config.pbtxt         GPU: onnxruntime_onnx, KIND_GPU (the default)
    semantic/query-encoder/configs/cpu.pbtxt    CPU: onnxruntime_onnx, KIND_CPU
                                                (``tritonserver --model-config-name=cpu``)
    semantic/query-encoder/1/model.onnx         the CPU's graph: int8 when the build's recall
                                                guard passed it, else the fp32 graph (both serve it)
    semantic/query-encoder/1/model-fp32.onnx    the GPU's fp32 graph (only beside an int8 one)

Locally (``python -m predictors.ranker``) the CPU configuration becomes a Python-backend model
folder whose ``model.py`` is ``triton_encoder_model.py`` (the ``tritonserver`` of
``nvidia-pytriton`` has only that backend), with ``bert_ranker_batch.py`` beside it for the
grouped calls.

**Dims.** ``input_ids`` and ``attention_mask`` are ``[-1, -1]`` as in the contract
(:data:`shopserve.protocol.QUERY_ENCODER`): batch and length vary. ``query_embedding`` is
``[-1, D]``: ``D`` is fixed in the graph (the hidden size) and Triton's ONNX Runtime backend refuses
a configuration whose dims differ from a fixed dim of the graph, so the configurations carry it.

**Parameters** (``parameters`` of both configurations, read by the Python model):
``max_query_length`` (the manifest's; longer inputs are refused) and ``vocab_size`` (token ids
are within ``[0, vocab_size)``), and on the CPU ``intra_op_thread_count``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from predictors.ranker.triton_repo import (
    CONFIG_FILE,
    INTRA_OP_THREADS,
    MODEL_FILE,
    PYTHON_MODEL_FILE,
    SHARED_MODULE,
    CpuGraph,
    PbtxtModel,
    Profile,
    cpu_graph,
    onnx_config_pbtxt,
    onnx_io,
    onnx_profiles,
    write_model_folder,
    write_onnx_repository,
)
from shopserve.artifacts import SEMANTIC_MAX_QUERY_LENGTH
from shopserve.errors import BundleError
from shopserve.protocol import QUERY_EMBEDDING, QUERY_ENCODER, QUERY_ENCODER_MODEL, TensorSpec

VOCAB_SIZE = "vocab_size"
"""config.pbtxt parameter: token ids are within ``[0, vocab_size)``."""
PYTHON_MODEL_SOURCE = Path(__file__).with_name("triton_encoder_model.py")
"""The local Python-backend model, copied as ``query-encoder/1/model.py``."""


@dataclass(frozen=True)
class EncoderServing:
    """What ``query-encoder``'s ``config.pbtxt`` says: the graph's output size, the input limits
    and the batching.

    Attributes:
        dim: ``D`` of ``query_embedding``.
        max_query_length: Longest ``input_ids`` row accepted (the manifest's
            ``max_query_length``, the shipped tokenizer's truncation).
        vocab_size: Token ids are within ``[0, vocab_size)``.
        max_batch_size: Most queries in one batch Triton forms.
        preferred_batch_sizes: Sizes the dynamic batcher aims for (a request is one query).
        max_queue_delay_us: How long the batcher may hold a request to fill a batch: short, as a
            search waits for its query's embedding before it can retrieve.
        instances: Model instances per GPU (GPU) or in total (CPU, local).
        threads: ONNX Runtime intra-op threads per instance (CPU and local): one query of ten
            tokens is too small a job to split (see the issue report's measurements), and one
            thread leaves the other cores to the ranker.
    """

    dim: int
    max_query_length: int
    vocab_size: int
    max_batch_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = (8, 32)
    max_queue_delay_us: int = 200
    instances: int = 1
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("dim", "max_query_length", "vocab_size", "max_batch_size", "instances",
                     "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"EncoderServing.{name} must be >= 1, got {getattr(self, name)}")

    def tensors(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """The contract's inputs (as they are) and outputs with ``D`` fixed (batch dim -1)."""
        return (QUERY_ENCODER.inputs,
                tuple(replace(t, shape=(-1, self.dim)) for t in QUERY_ENCODER.outputs))

    def parameters(self) -> dict[str, str]:
        """The ``parameters`` entries of the configuration."""
        return {SEMANTIC_MAX_QUERY_LENGTH: str(self.max_query_length),
                VOCAB_SIZE: str(self.vocab_size)}

    @classmethod
    def from_onnx(cls, path: Path, *, max_query_length: int, vocab_size: int,
                  **serving: int | tuple[int, ...]) -> EncoderServing:
        """The output size of an exported graph, checked against the contract.

        Raises:
            BundleError: the graph's tensors are not the contract's (names, datatypes, ranks) or
                ``D`` is not fixed.
        """
        io = onnx_io(path)
        seen = ([(n, d, len(s)) for n, d, s in io["inputs"]],
                [(n, d, len(s)) for n, d, s in io["outputs"]])
        wanted = ([(t.name, t.datatype, len(t.shape)) for t in QUERY_ENCODER.inputs],
                  [(t.name, t.datatype, len(t.shape)) for t in QUERY_ENCODER.outputs])
        if seen != wanted:
            raise BundleError(f"{path}: graph tensors {seen} are not the {QUERY_ENCODER_MODEL} "
                              f"contract {wanted}")
        dim = io["outputs"][0][2][1]
        if dim < 1:
            raise BundleError(f"{path}: the size of '{QUERY_EMBEDDING}' must be fixed, got {dim}")
        return cls(dim=dim, max_query_length=max_query_length, vocab_size=vocab_size,
                   **serving)  # type: ignore[arg-type]

    @classmethod
    def from_config(cls, config: PbtxtModel, **serving: int | tuple[int, ...]) -> EncoderServing:
        """The output size and limits a written configuration carries (batching from ``serving``).

        Raises:
            BundleError: a parameter or the output tensor is missing.
        """
        try:
            dims = {t.name: t.dims for t in config.outputs}
            return cls(dim=dims[QUERY_EMBEDDING][0],
                       max_query_length=int(config.parameters[SEMANTIC_MAX_QUERY_LENGTH]),
                       vocab_size=int(config.parameters[VOCAB_SIZE]),
                       **serving)  # type: ignore[arg-type]
        except (KeyError, IndexError, ValueError) as exc:
            raise BundleError(f"{QUERY_ENCODER_MODEL} configuration: {exc!r}") from exc


def encoder_config_pbtxt(
    profile: Profile, serving: EncoderServing, *, model_filename: str | None = None
) -> str:
    """The ``config.pbtxt`` text of ``query-encoder`` for a profile (``cluster``, ``cpu``,
    ``local``), rendered by the ranker's writer."""
    return onnx_config_pbtxt(QUERY_ENCODER_MODEL, profile, serving, model_filename=model_filename)


def write_encoder_repository(component_dir: Path, onnx_path: Path, serving: EncoderServing, *,
                             cpu_onnx: Path | None = None) -> Path:
    """Write the bundle's ``query-encoder/`` folder: GPU ``config.pbtxt`` serving the fp32
    ``onnx_path``, CPU ``configs/cpu.pbtxt`` serving ``cpu_onnx`` (the int8 graph) when given,
    else the same fp32 graph.

    Returns:
        The model folder ``<component_dir>/query-encoder``.
    """
    return write_onnx_repository(component_dir, QUERY_ENCODER_MODEL, onnx_path, serving,
                                 cpu_onnx=cpu_onnx)


def encoder_profiles(cpu_precision: str = "fp32") -> dict[str, dict[str, str]]:
    """Which configuration and file each profile of the component uses (for the manifest)."""
    return onnx_profiles(QUERY_ENCODER_MODEL, cpu_precision=cpu_precision)


def encoder_cpu_graph(component_dir: Path) -> CpuGraph:
    """The CPU configuration of a semantic component and the graph it names, checked.

    Raises:
        BundleError: no model folder, a parameter missing, or the graph missing.
    """
    return cpu_graph(component_dir, QUERY_ENCODER_MODEL, (SEMANTIC_MAX_QUERY_LENGTH, VOCAB_SIZE))


def write_local_encoder_repository(component_dir: Path, repository: Path) -> Path:
    """The local Python-backend ``query-encoder`` folder from a semantic component.

    Takes the component's CPU configuration (as ``--model-config-name=cpu`` would) and the graph
    it names: ``D``, the limits, batching and threads are the bundle's.

    Returns:
        The model folder ``<repository>/query-encoder``.

    Raises:
        BundleError: the component has no usable CPU configuration or graph.
    """
    graph = encoder_cpu_graph(component_dir)
    config = graph.config
    threads = int(config.parameters.get(INTRA_OP_THREADS) or 1)
    serving = EncoderServing.from_config(config, max_batch_size=config.max_batch_size,
                                         threads=threads)
    return write_model_folder(
        repository, QUERY_ENCODER_MODEL, {CONFIG_FILE: encoder_config_pbtxt("local", serving)},
        {MODEL_FILE: graph.onnx_file, PYTHON_MODEL_FILE: PYTHON_MODEL_SOURCE,
         SHARED_MODULE.name: SHARED_MODULE},
    )
