"""Triton model repositories for ``seq-recommender``, the sequence recommender served beside the ranker.

The bundle's ``sequence`` component holds one model folder with two configurations, as the
ranker's (:mod:`predictors.ranker.triton_repo`, whose writer this module uses)::

    sequence/seq-recommender/config.pbtxt        GPU: onnxruntime_onnx, KIND_GPU (the default)
    sequence/seq-recommender/configs/cpu.pbtxt   CPU: onnxruntime_onnx, KIND_CPU
                                                 (``tritonserver --model-config-name=cpu``)
    sequence/seq-recommender/1/model.onnx        the one graph both serve (fp32)

Both configurations serve the same fp32 graph: it is small (an embedding table, two attention
blocks and a TopK), and the GPU providers run it as it is. Locally (``python -m predictors.ranker``)
the CPU configuration is turned into a Python-backend model folder whose ``model.py`` is
``triton_sequence_model.py``, because the ``tritonserver`` of ``nvidia-pytriton`` has only that
backend.

**Dims.** The graph's input length ``L``, its ``K`` and the session size ``D`` are fixed in the
ONNX file (positional embeddings, TopK, hidden size). Triton's ONNX Runtime backend refuses a
configuration whose dims differ from a fixed dim of the graph, so the configurations carry them:
``item_sequence`` ``dims: [ L ]``, ``next_items``/``next_scores`` ``[ K ]``,
``session_embedding`` ``[ D ]``; the batch dim stays variable. The v2 metadata then reads
``[-1, L]`` where the contract (:data:`shopserve.protocol.SEQUENCE`) says ``[-1, -1]``: the
contract's ``-1`` admits any length, a served model names its own. Triton itself answers 400 to a
request of another length or datatype, before the model sees it.

**Parameters** (``parameters`` of both configurations, read by the Python model): the manifest's
``sequence_length`` and ``top_k``, ``n_items`` (valid indices are ``0..n_items``, 0 the padding),
and on the CPU ``intra_op_thread_count``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from predictors.ranker.triton_repo import (
    CONFIG_FILE,
    INTRA_OP_THREADS,
    MODEL_FILE,
    PYTHON_MODEL_FILE,
    CpuGraph,
    PbtxtModel,
    Profile,
    cpu_graph,
    fp32_profiles,
    onnx_config_pbtxt,
    onnx_io,
    write_model_folder,
    write_onnx_repository,
)
from shopserve.artifacts import SEQUENCE_LENGTH, SEQUENCE_TOP_K
from shopserve.errors import BundleError
from shopserve.protocol import SEQUENCE, SEQUENCE_MODEL, TensorSpec

N_ITEMS = "n_items"
"""config.pbtxt parameter: items of the model; valid indices are ``0..n_items`` (0 the padding)."""
PYTHON_MODEL_SOURCE = Path(__file__).with_name("triton_sequence_model.py")
"""The local Python-backend model, copied as ``seq-recommender/1/model.py``."""


@dataclass(frozen=True)
class SequenceServing:
    """What ``seq-recommender``'s ``config.pbtxt`` says: the graph's dims and the batching.

    Attributes:
        sequence_length: ``L``, the fixed input length (the manifest's ``sequence_length``).
        top_k: ``K`` of ``next_items`` and ``next_scores`` (the manifest's ``top_k``).
        dim: ``D`` of ``session_embedding``.
        n_items: Items of the model (indices ``1..n_items``).
        max_batch_size: Most sessions in one batch Triton forms.
        preferred_batch_sizes: Sizes the dynamic batcher aims for (a request is one session).
        max_queue_delay_us: How long the batcher may hold a request to fill a batch.
        instances: Model instances per GPU (GPU) or in total (CPU, local).
        threads: ONNX Runtime intra-op threads per instance (CPU and local): the graph is small,
            one thread leaves the cores to the ranker.
    """

    sequence_length: int
    top_k: int
    dim: int
    n_items: int
    max_batch_size: int = 256
    preferred_batch_sizes: tuple[int, ...] = (16, 64)
    max_queue_delay_us: int = 500
    instances: int = 1
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("sequence_length", "top_k", "dim", "n_items", "max_batch_size", "instances",
                     "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"SequenceServing.{name} must be >= 1, got {getattr(self, name)}")

    def tensors(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """The contract's inputs and outputs with this model's fixed dims (batch dim -1)."""
        dims = {"item_sequence": self.sequence_length, "next_items": self.top_k,
                "next_scores": self.top_k, "session_embedding": self.dim}
        return (tuple(replace(t, shape=(-1, dims[t.name])) for t in SEQUENCE.inputs),
                tuple(replace(t, shape=(-1, dims[t.name])) for t in SEQUENCE.outputs))

    def parameters(self) -> dict[str, str]:
        """The ``parameters`` entries of the configuration."""
        return {SEQUENCE_LENGTH: str(self.sequence_length), SEQUENCE_TOP_K: str(self.top_k),
                N_ITEMS: str(self.n_items)}

    @classmethod
    def from_onnx(cls, path: Path, n_items: int, **serving: int | tuple[int, ...]) -> SequenceServing:
        """The dims of an exported graph, checked against the contract.

        Raises:
            BundleError: the graph's tensors are not the contract's (names, datatypes, ranks) or
                a dim other than the batch is not fixed.
        """
        io = onnx_io(path)
        seen = ([(n, d, len(s)) for n, d, s in io["inputs"]],
                [(n, d, len(s)) for n, d, s in io["outputs"]])
        wanted = ([(t.name, t.datatype, len(t.shape)) for t in SEQUENCE.inputs],
                  [(t.name, t.datatype, len(t.shape)) for t in SEQUENCE.outputs])
        if seen != wanted:
            raise BundleError(f"{path}: graph tensors {seen} are not the {SEQUENCE_MODEL} "
                              f"contract {wanted}")
        dims = {n: s[1] for n, _, s in (*io["inputs"], *io["outputs"])}
        if min(dims.values()) < 1 or dims["next_items"] != dims["next_scores"]:
            raise BundleError(f"{path}: the graph's dims must be fixed but the batch's: {dims}")
        return cls(sequence_length=dims["item_sequence"], top_k=dims["next_items"],
                   dim=dims["session_embedding"], n_items=n_items, **serving)  # type: ignore[arg-type]

    @classmethod
    def from_config(cls, config: PbtxtModel, **serving: int | tuple[int, ...]) -> SequenceServing:
        """The dims and ``n_items`` a written configuration carries (batching from ``serving``).

        Raises:
            BundleError: a parameter or tensor is missing.
        """
        try:
            dims = {t.name: t.dims[0] for t in (*config.inputs, *config.outputs)}
            return cls(sequence_length=int(config.parameters[SEQUENCE_LENGTH]),
                       top_k=int(config.parameters[SEQUENCE_TOP_K]),
                       dim=dims["session_embedding"],
                       n_items=int(config.parameters[N_ITEMS]),
                       **serving)  # type: ignore[arg-type]
        except (KeyError, IndexError, ValueError) as exc:
            raise BundleError(f"{SEQUENCE_MODEL} configuration: {exc!r}") from exc


def sequence_config_pbtxt(
    profile: Profile, serving: SequenceServing, *, model_filename: str | None = None
) -> str:
    """The ``config.pbtxt`` text of ``seq-recommender`` for a profile (``cluster``, ``cpu``,
    ``local``), rendered by the ranker's writer."""
    return onnx_config_pbtxt(SEQUENCE_MODEL, profile, serving, model_filename=model_filename)


def write_sequence_repository(component_dir: Path, onnx_path: Path, serving: SequenceServing) -> Path:
    """Write the bundle's ``seq-recommender/`` folder: GPU ``config.pbtxt``, CPU
    ``configs/cpu.pbtxt``, both serving ``1/model.onnx``.

    Returns:
        The model folder ``<component_dir>/seq-recommender``.
    """
    return write_onnx_repository(component_dir, SEQUENCE_MODEL, onnx_path, serving)


def sequence_profiles() -> dict[str, dict[str, str]]:
    """Which configuration and file each profile of the component uses (for the manifest)."""
    return fp32_profiles(SEQUENCE_MODEL)


def sequence_cpu_graph(component_dir: Path) -> CpuGraph:
    """The CPU configuration of a sequence component and the graph it names, checked.

    Raises:
        BundleError: no model folder, a parameter missing, or the graph missing.
    """
    return cpu_graph(component_dir, SEQUENCE_MODEL, (SEQUENCE_LENGTH, SEQUENCE_TOP_K, N_ITEMS))


def write_local_sequence_repository(component_dir: Path, repository: Path) -> Path:
    """The local Python-backend ``seq-recommender`` folder from a sequence component.

    Takes the component's CPU configuration (as ``--model-config-name=cpu`` would) and the graph
    it names: dims, ``n_items``, batching and threads are the bundle's.

    Returns:
        The model folder ``<repository>/seq-recommender``.

    Raises:
        BundleError: the component has no usable CPU configuration or graph.
    """
    graph = sequence_cpu_graph(component_dir)
    config = graph.config
    threads = int(config.parameters.get(INTRA_OP_THREADS) or 1)
    serving = SequenceServing.from_config(config, max_batch_size=config.max_batch_size,
                                          threads=threads)
    return write_model_folder(
        repository, SEQUENCE_MODEL, {CONFIG_FILE: sequence_config_pbtxt("local", serving)},
        {MODEL_FILE: graph.onnx_file, PYTHON_MODEL_FILE: PYTHON_MODEL_SOURCE},
    )
