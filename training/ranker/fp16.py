"""The packaged ranker's weights in fp16 safetensors, for a GPU run in plain PyTorch.

At package time the ranker component gains a folder :data:`FP16_DIR` beside the Triton
repository, covered by the component's manifest like every other file:

* :data:`WEIGHTS_FILE`: the packaged model's weights in fp16 under the Hugging Face
  ``BertForSequenceClassification`` names (``bert.encoder.layer.0.attention.self.query.weight``,
  ..., ``classifier.bias``);
* :data:`CONFIG_FILE`: a ``transformers`` ``BertConfig`` JSON (layers, hidden size, heads,
  intermediate size, vocabulary, position table, layer-norm epsilon, one label) plus
  ``max_sequence_length`` (the serving maximum) and ``shopserve_source`` (the graph the weights
  came from and its sha256), enough to rebuild the model with ``transformers`` or without it;
* :data:`EVAL_FILE`: the build's evaluation pairs, tokenised and padded to the max sequence
  length (``input_ids``, ``attention_mask``, ``token_type_ids``), with their grades, list
  boundaries and the scores the CPU graphs gave them (``score_onnx_fp32``: the fp32 graph the
  weights are read from; ``score_onnx_cpu``: the graph the CPU profile serves, int8 when
  quantised), so a GPU script needs no tokenizer and no ONNX Runtime to check itself.

The weights are read back out of the packaged fp32 ONNX graph (:func:`weights_from_onnx`), not
taken from a torch model: they are then by construction the packaged graph's, whichever variant
won (the 6-layer teacher or a pruned, distilled student), and a bundle packaged before this
export existed can be given one from its own graph. The fused graph keeps every weight: the
embeddings and layer norms under their torch names, Q, K and V concatenated in each fused
``Attention`` node, the dense layers as transposed ``MatMul`` weights whose biases sit in the
following ``SkipLayerNormalization`` or ``BiasGelu``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.numpy import save_file
from transformers import BertConfig, PreTrainedTokenizerBase

from shopserve.protocol import ATTENTION_MASK, INPUT_IDS, TOKEN_TYPE_IDS
from shopserve.text import PairTokenizer, encode_pairs
from training.ranker.optimise import OrtScorer
from training.ranker.pairs import CandidateList

log = logging.getLogger(__name__)

#: Folder of the fp16 export inside the ranker component.
FP16_DIR = "fp16"
#: The fp16 weights (safetensors).
WEIGHTS_FILE = "model.safetensors"
#: The ``BertConfig`` JSON of those weights.
CONFIG_FILE = "config.json"
#: The evaluation pairs, pre-tokenised, with the CPU graphs' scores.
EVAL_FILE = "eval_pairs.npz"
#: Reference scores in :data:`EVAL_FILE`: the fp32 graph and the CPU profile's graph.
SCORE_FP32 = "score_onnx_fp32"
SCORE_CPU = "score_onnx_cpu"
#: Pairs scored per ONNX Runtime call when computing the reference scores.
REFERENCE_BATCH = 256

_LAYER = "bert.encoder.layer.{}."


def _initializers(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in graph.initializer}


def _attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def weights_from_onnx(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The fp32 weights and the architecture of a fused BERT cross-encoder graph.

    Args:
        path: An fp32 graph written by :func:`~training.ranker.optimise.export_onnx` and fused by
            :func:`~training.ranker.optimise.fuse_bert` (``EmbedLayerNormalization``, one
            ``Attention`` per layer, ``SkipLayerNormalization``, ``BiasGelu``, pooler and
            classifier ``Gemm``).

    Returns:
        The state dict of ``BertForSequenceClassification`` (float32 arrays, Hugging Face names)
        and the ``BertConfig`` arguments.

    Raises:
        ValueError: the graph is not such a graph (an op or weight is missing or unexpected).
    """
    model = onnx.load(str(path))
    inits = _initializers(model.graph)
    weights: dict[str, np.ndarray] = {}
    heads = 0
    epsilon = 1e-12
    layer = -1
    matmuls = skips = 0
    gemms: list[onnx.NodeProto] = []

    def init(name: str) -> np.ndarray:
        if name not in inits:
            raise ValueError(f"{path}: {name!r} is not a weight of the graph")
        return inits[name].astype(np.float32)

    for node in model.graph.node:
        op = node.op_type
        if op == "EmbedLayerNormalization":
            for name, idx in (("word_embeddings.weight", 2), ("position_embeddings.weight", 3),
                              ("token_type_embeddings.weight", 4), ("LayerNorm.weight", 5),
                              ("LayerNorm.bias", 6)):  # fmt: skip
                weights[f"bert.embeddings.{name}"] = init(node.input[idx])
            epsilon = float(_attribute(node, "epsilon", epsilon))
        elif op == "Attention":
            layer, matmuls, skips = layer + 1, 0, 0
            heads = int(_attribute(node, "num_heads"))
            qkv, bias = init(node.input[1]), init(node.input[2])
            hidden = qkv.shape[0]
            if qkv.shape != (hidden, 3 * hidden) or bias.shape != (3 * hidden,):
                raise ValueError(f"{path}: Attention {node.name} has QKV {qkv.shape}, bias {bias.shape}")
            prefix = _LAYER.format(layer) + "attention.self."
            for i, part in enumerate(("query", "key", "value")):
                weights[f"{prefix}{part}.weight"] = qkv[:, i * hidden:(i + 1) * hidden].T.copy()
                weights[f"{prefix}{part}.bias"] = bias[i * hidden:(i + 1) * hidden].copy()
        elif op == "MatMul" and layer >= 0 and node.input[1] in inits:
            names = ("attention.output.dense", "intermediate.dense", "output.dense")
            if matmuls >= len(names):
                raise ValueError(f"{path}: more than three MatMul weights in layer {layer}")
            weights[_LAYER.format(layer) + names[matmuls] + ".weight"] = init(node.input[1]).T.copy()
            matmuls += 1
        elif op == "SkipLayerNormalization":
            names = ("attention.output", "output")
            if layer < 0 or skips >= len(names) or len(node.input) < 5:
                raise ValueError(f"{path}: unexpected SkipLayerNormalization {node.name}")
            prefix = _LAYER.format(layer) + names[skips]
            weights[f"{prefix}.LayerNorm.weight"] = init(node.input[2])
            weights[f"{prefix}.LayerNorm.bias"] = init(node.input[3])
            weights[f"{prefix}.dense.bias"] = init(node.input[4])
            skips += 1
        elif op in ("BiasGelu", "FastGelu") and len(node.input) > 1:
            weights[_LAYER.format(layer) + "intermediate.dense.bias"] = init(node.input[1])
        elif op == "Gemm":
            gemms.append(node)
    if layer < 0 or len(gemms) != 2:
        raise ValueError(f"{path}: expected fused attention layers, a pooler and a classifier")
    for node, name in zip(gemms, ("bert.pooler.dense", "classifier"), strict=True):
        weight = init(node.input[1])
        weights[f"{name}.weight"] = weight if _attribute(node, "transB", 0) else weight.T.copy()
        weights[f"{name}.bias"] = init(node.input[2])

    word = weights["bert.embeddings.word_embeddings.weight"]
    config = {
        "vocab_size": int(word.shape[0]),
        "hidden_size": int(word.shape[1]),
        "num_hidden_layers": layer + 1,
        "num_attention_heads": heads,
        "intermediate_size": int(weights[_LAYER.format(0) + "intermediate.dense.weight"].shape[0]),
        "max_position_embeddings": int(weights["bert.embeddings.position_embeddings.weight"].shape[0]),
        "type_vocab_size": int(weights["bert.embeddings.token_type_embeddings.weight"].shape[0]),
        "layer_norm_eps": float(f"{epsilon:.6g}"),  # float32 attribute: 1e-12 reads 9.99e-13
        "hidden_act": "gelu",
        "num_labels": int(weights["classifier.weight"].shape[0]),
    }
    expected = _expected_names(config["num_hidden_layers"])
    if set(weights) != expected:
        raise ValueError(f"{path}: weights missing {sorted(expected - set(weights))[:5]}, "
                         f"unexpected {sorted(set(weights) - expected)[:5]}")
    return weights, config


def _expected_names(layers: int) -> set[str]:
    names = {f"bert.embeddings.{n}" for n in ("word_embeddings.weight", "position_embeddings.weight",
                                              "token_type_embeddings.weight", "LayerNorm.weight",
                                              "LayerNorm.bias")}  # fmt: skip
    for i in range(layers):
        p = _LAYER.format(i)
        for dense in ("attention.self.query", "attention.self.key", "attention.self.value",
                      "attention.output.dense", "intermediate.dense", "output.dense"):
            names |= {f"{p}{dense}.weight", f"{p}{dense}.bias"}
        names |= {f"{p}{ln}.LayerNorm.{w}"
                  for ln in ("attention.output", "output") for w in ("weight", "bias")}
    return names | {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight",
                    "classifier.bias"}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_fp16(fp32_graph: Path, out_dir: Path, *, max_length: int, source: str | None = None) -> Path:
    """Write :data:`WEIGHTS_FILE` and :data:`CONFIG_FILE` of ``fp32_graph`` into ``out_dir``.

    Args:
        fp32_graph: The packaged model's fused fp32 graph (the GPU profile's ``model-fp32.onnx``).
        out_dir: The export folder (``<ranker>/fp16``); created.
        max_length: The serving max sequence length (special tokens included).
        source: How the config names the graph (default its file name).

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights, arch = weights_from_onnx(fp32_graph)
    config = BertConfig(**arch, architectures=["BertForSequenceClassification"]).to_dict()
    config["torch_dtype"] = "float16"
    config["max_sequence_length"] = int(max_length)
    config["shopserve_source"] = {"graph": source or Path(fp32_graph).name,
                                  "sha256": _sha256(Path(fp32_graph))}  # fmt: skip
    half = {name: np.ascontiguousarray(w.astype(np.float16)) for name, w in weights.items()}
    save_file(half, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir


def encode_eval_pairs(
    lists: Sequence[CandidateList], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> dict[str, np.ndarray]:
    """The evaluation lists' (query, title) pairs, tokenised as the ranker serves them and padded
    to ``max_length``, with ``grades``, ``item_ids`` and ``offsets`` (list ``i`` is rows
    ``offsets[i]:offsets[i + 1]``)."""
    if not lists:
        raise ValueError("no evaluation lists to encode")
    queries = [c.query.text for c in lists for _ in c.titles]
    titles = [t for c in lists for t in c.titles]
    batch = encode_pairs(PairTokenizer.from_hf(tokenizer), queries, titles, max_length)
    pad = max_length - batch[INPUT_IDS].shape[1]
    pad_id = int(tokenizer.pad_token_id or 0)
    out = {
        INPUT_IDS: np.pad(batch[INPUT_IDS], ((0, 0), (0, pad)), constant_values=pad_id).astype(np.int32),
        ATTENTION_MASK: np.pad(batch[ATTENTION_MASK], ((0, 0), (0, pad))).astype(np.uint8),
        TOKEN_TYPE_IDS: np.pad(batch[TOKEN_TYPE_IDS], ((0, 0), (0, pad))).astype(np.uint8),
        "grades": np.concatenate([np.asarray(c.grades) for c in lists]).astype(np.int8),
        "item_ids": np.concatenate([np.asarray(c.item_ids) for c in lists]).astype(np.int64),
        "offsets": np.cumsum([0] + [len(c.titles) for c in lists]).astype(np.int64),
    }
    return out


def reference_scores(graph: Path, pairs: Mapping[str, np.ndarray], threads: int = 2) -> np.ndarray:
    """Scores of the encoded pairs by an ONNX graph on ONNX Runtime's CPU provider, ``[N]`` fp32."""
    scorer = OrtScorer(Path(graph), threads)
    n = pairs[INPUT_IDS].shape[0]
    out = []
    for start in range(0, n, REFERENCE_BATCH):
        rows = slice(start, start + REFERENCE_BATCH)
        out.append(scorer({name: pairs[name][rows].astype(np.int64)
                           for name in (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)}))  # fmt: skip
    return np.concatenate(out).astype(np.float32)


def write_eval_pairs(out_dir: Path, pairs: dict[str, np.ndarray], *, fp32_graph: Path,
                     cpu_graph: Path, threads: int = 2) -> Path:
    """Write :data:`EVAL_FILE` into ``out_dir``: ``pairs`` (from :func:`encode_eval_pairs`) and
    the scores of the fp32 graph and of the CPU profile's graph."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scores = {SCORE_FP32: reference_scores(fp32_graph, pairs, threads)}
    same = Path(cpu_graph).resolve() == Path(fp32_graph).resolve()
    scores[SCORE_CPU] = scores[SCORE_FP32] if same else reference_scores(cpu_graph, pairs, threads)
    path = out_dir / EVAL_FILE
    np.savez_compressed(path, **pairs, **scores)
    return path


def package_fp16(out_dir: Path, *, fp32_graph: Path, cpu_graph: Path, max_length: int,
                 eval_lists: Sequence[CandidateList], tokenizer: PreTrainedTokenizerBase,
                 threads: int = 2, source: str | None = None) -> Path:
    """The whole :data:`FP16_DIR` folder: weights, config and evaluation pairs."""
    export_fp16(fp32_graph, out_dir, max_length=max_length, source=source)
    write_eval_pairs(out_dir, encode_eval_pairs(eval_lists, tokenizer, max_length),
                     fp32_graph=fp32_graph, cpu_graph=cpu_graph, threads=threads)
    log.info("fp16 export of %s in %s", fp32_graph, out_dir)
    return Path(out_dir)
