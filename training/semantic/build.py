"""Train, measure and export the semantic component (the lifecycle's ``train-semantic`` step calls
these).

:func:`train_semantic` embeds the catalog with the untuned all-MiniLM-L6-v2 (the frozen item tower)
and fine-tunes the query tower on the training queries' judgements against it
(``training.semantic.train``); :func:`export_semantic` exports the query tower as the
``query-encoder`` graph, checks it against torch, builds the HNSW index, measures the index against
exact search and the semantic path's Recall@K on the held-out queries (beside the untuned encoder's
and a plain BM25's), and writes the export folder::

    model.onnx            the query-encoder graph (fp32)
    model-int8.onnx       the same, int8 (only when it passed the recall guard: the CPU serves it)
    item_embeddings.npz   item_id int64 [N], vectors float32 [N, D] (unit rows)
    index.faiss           IndexHNSWFlat, inner product; label i is item_id[i]
    tokenizer.json        the MiniLM tokenizer, truncating at max_query_length

Writing the Triton model repository around ``model.onnx`` and the manifest is the packaging step's
job (``pipeline.lifecycle.semantic``), as for the sequence model.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from shopserve.artifacts import (
    SEMANTIC_DIM,
    SEMANTIC_EMBEDDINGS_FILE,
    SEMANTIC_INDEX_FILE,
    SEMANTIC_ITEM_IDS,
    SEMANTIC_MAX_QUERY_LENGTH,
    SEMANTIC_TOKENIZER_FILE,
    SEMANTIC_VECTORS,
    save_npz,
)
from training.data.generator import Dataset
from training.ranker.optimise import Int8Options, quantize_int8
from training.semantic.encoder import (
    BASE_WEIGHTS,
    MeanPoolEncoder,
    encoder_tokenizer,
    load_encoder,
    token_lengths,
    tokenize,
    tokenizer_json,
)
from training.semantic.evaluate import KS, bm25_rankings, compare, semantic_rankings
from training.semantic.export import OPSET, check_export, embed_onnx, export_onnx, session
from training.semantic.index import build_index, index_recall, write_index
from training.semantic.train import LOSS, FineTuneResult, SemanticConfig, fine_tune

#: The query-encoder graph inside the export folder handed to the packaging step.
SEMANTIC_ONNX_FILE = "model.onnx"
#: The int8 query-encoder graph in the export folder (absent when the guard rejected it).
SEMANTIC_INT8_FILE = "model-int8.onnx"
#: Largest difference of an ONNX embedding from torch's that the export accepts.
EXPORT_TOLERANCE = 1e-4
#: K of the index's recall against exact search (the transformer asks for about this many).
INDEX_RECALL_K = 50


@dataclass
class TrainedSemantic:
    """A fine-tuned query encoder, the frozen item embeddings, and what they were built from.

    Attributes:
        model: The query encoder (eval mode).
        tokenizer: Its tokenizer.
        config: What it was built with.
        training: The fine-tuning run.
        item_vectors: The catalog's embeddings by the untuned encoder, one row per row of
            ``Dataset.items`` (float32 ``[N, D]``, unit rows).
        base_test_vectors: The held-out queries' embeddings by the untuned encoder (the
            baseline the fine-tuning is measured against).
        train_query_ids: Queries whose judgements it was trained on.
        test_query_ids: Held-out queries it is measured on.
        split: How the queries were split (``eval_fraction``, ``seed``), for the manifest.
        seconds: Wall time of the stages so far (``embed_items``, ``fine_tune``).
    """

    model: MeanPoolEncoder
    tokenizer: PreTrainedTokenizerBase
    config: SemanticConfig
    training: FineTuneResult
    item_vectors: np.ndarray
    base_test_vectors: np.ndarray
    train_query_ids: np.ndarray
    test_query_ids: np.ndarray
    split: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def train_semantic(
    dataset: Dataset,
    train_query_ids: np.ndarray,
    test_query_ids: np.ndarray,
    config: SemanticConfig | None = None,
    split: dict[str, Any] | None = None,
) -> TrainedSemantic:
    """Embed the catalog with all-MiniLM-L6-v2, then fine-tune its query tower on the judgements
    of ``train_query_ids`` against those embeddings.

    Args:
        dataset: The generated world (catalog, queries, grading rule).
        train_query_ids: Training queries (the ranker's training split: one held-out set per
            release).
        test_query_ids: Held-out queries, never trained on.
        config: Settings (default: the demo budget).
        split: How the split was made, recorded in the manifest.
    """
    config = config or SemanticConfig()
    torch.set_num_threads(config.cpu_threads)
    model = load_encoder()
    tokenizer = encoder_tokenizer()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="shopserve-semantic-base-") as tmp:
        base = session(export_onnx(model, Path(tmp) / "base.onnx"), config.cpu_threads)
        items = embed_onnx(base, tokenizer, dataset.item_text().tolist(), config.max_item_length,
                           config.embed_batch_size)
        base_test = embed_onnx(base, tokenizer, _texts(dataset, test_query_ids),
                               config.max_query_length, config.embed_batch_size)
    seconds = {"embed_items": time.perf_counter() - start}
    training = fine_tune(model, tokenizer, dataset, train_query_ids, items, config)
    seconds["fine_tune"] = training.seconds
    return TrainedSemantic(model, tokenizer, config, training, items, base_test,
                           np.asarray(train_query_ids, np.int64),
                           np.asarray(test_query_ids, np.int64), dict(split or {}), seconds)


def write_tokenizer(path: Path, max_query_length: int) -> Path:
    """The MiniLM ``tokenizer.json`` with truncation at ``max_query_length`` and no padding (one
    query per request: its own length)."""
    tokenizer = Tokenizer.from_file(str(tokenizer_json()))
    tokenizer.enable_truncation(max_length=max_query_length)
    tokenizer.no_padding()
    tokenizer.save(str(path))
    return Path(path)


def int8_guard(quality: dict[str, dict[str, dict[str, float]]], max_drop: float, k: int = 50
               ) -> dict[str, Any]:
    """Whether the int8 query tower may serve on the CPU: its Recall@``k`` on the held-out
    queries (all classes) at most ``max_drop`` below the fp32 graph's.

    Args:
        quality: :func:`~training.semantic.evaluate.compare` with rankings ``semantic`` (fp32)
            and ``semantic_int8``.
    """
    key = f"recall_at_{k}"
    fp32 = float(quality["semantic"][key]["all"])
    int8 = float(quality["semantic_int8"][key]["all"])
    return {"passes": bool(fp32 - int8 <= max_drop), "max_recall_drop": max_drop,
            f"fp32_{key}": fp32, f"int8_{key}": int8, **Int8Options().as_dict()}


def _texts(dataset: Dataset, query_ids: np.ndarray) -> list[str]:
    return dataset.queries.text[dataset.queries.query_id.searchsorted(query_ids)].tolist()


def export_semantic(
    trained: TrainedSemantic, dataset: Dataset, out_dir: Path
) -> dict[str, dict[str, Any]]:
    """Write the export folder (see the module docstring) and measure it.

    Returns:
        The manifest fields: ``params`` (``dim``, ``max_query_length``, ``normalised``,
        ``metric``, ``index``, ``encoder``, ``n_items``, ...), ``metrics`` (Recall@10 and @50 of
        the semantic path on the held-out queries, all and per kind, beside the untuned
        encoder's and a plain BM25's; the index's recall against exact search; the
        ONNX-vs-torch difference; seconds of each stage) and ``data``.

    Raises:
        ValueError: the exported graph differs from torch by more than :data:`EXPORT_TOLERANCE`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config, tokenizer = trained.config, trained.tokenizer
    threads = config.cpu_threads
    seconds = dict(trained.seconds)

    start = time.perf_counter()
    graph = export_onnx(trained.model, out_dir / SEMANTIC_ONNX_FILE)
    probe = _texts(dataset, trained.test_query_ids[:config.export_check_queries]) or ["probe"]
    check = check_export(trained.model, graph, tokenize(tokenizer, probe, config.max_query_length))
    if check.max_abs_diff > EXPORT_TOLERANCE:
        raise ValueError(f"the exported graph differs from torch by {check.max_abs_diff:.2e} "
                         f"(> {EXPORT_TOLERANCE:.0e})")
    write_tokenizer(out_dir / SEMANTIC_TOKENIZER_FILE, config.max_query_length)
    item_ids = dataset.items.item_id.astype(np.int64)
    vectors = np.ascontiguousarray(trained.item_vectors, dtype=np.float32)
    save_npz(out_dir / SEMANTIC_EMBEDDINGS_FILE,
             **{SEMANTIC_ITEM_IDS: item_ids, SEMANTIC_VECTORS: vectors})
    seconds["export"] = time.perf_counter() - start

    start = time.perf_counter()
    index = build_index(vectors, config.index, threads)
    write_index(index, out_dir / SEMANTIC_INDEX_FILE)
    seconds["index"] = time.perf_counter() - start

    # Measuring (not needed to serve): the queries through the exported graph, as served.
    start = time.perf_counter()
    sess = session(graph, threads)
    train_texts = _texts(dataset, trained.train_query_ids)
    train_vectors = embed_onnx(sess, tokenizer, train_texts, config.max_query_length,
                               config.embed_batch_size)
    test_texts = _texts(dataset, trained.test_query_ids)
    test_vectors = embed_onnx(sess, tokenizer, test_texts, config.max_query_length,
                              config.embed_batch_size)
    recall_k = min(INDEX_RECALL_K, len(item_ids))
    approx = index_recall(index, vectors, train_vectors, recall_k)
    k = min(max(KS), len(item_ids))
    rankings = {
        "semantic": semantic_rankings(item_ids, vectors, test_vectors, k),
        "base": semantic_rankings(item_ids, vectors, trained.base_test_vectors, k),
        "bm25": bm25_rankings(item_ids, dataset.item_text().tolist(), test_texts, k),
    }
    int8 = None
    if config.int8:
        int8_graph = quantize_int8(graph, out_dir / SEMANTIC_INT8_FILE, Int8Options())
        rankings["semantic_int8"] = semantic_rankings(
            item_ids, vectors, embed_onnx(session(int8_graph, threads), tokenizer, test_texts,
                                          config.max_query_length, config.embed_batch_size), k)
    quality = compare(dataset, trained.test_query_ids, rankings, [x for x in KS if x <= k] or [k])
    if config.int8:
        int8 = int8_guard(quality, config.max_int8_recall_drop, recall_k)
        if not int8["passes"]:
            (out_dir / SEMANTIC_INT8_FILE).unlink()
    seconds["evaluate"] = time.perf_counter() - start

    losses = trained.training.losses
    lengths = token_lengths(tokenizer, train_texts or ["x"])
    params: dict[str, Any] = {
        SEMANTIC_DIM: int(vectors.shape[1]),
        SEMANTIC_MAX_QUERY_LENGTH: config.max_query_length,
        "max_item_length": config.max_item_length,
        "vocab_size": trained.model.vocab_size,
        "normalised": True,
        "metric": "inner_product",
        "n_items": int(item_ids.shape[0]),
        "item_text": "title | category brand colour material gender size "
                     "(shopserve.catalog_files.item_text)",
        "index": {**config.index.params(), f"recall_at_{recall_k}": approx,
                  "recall_queries": int(train_vectors.shape[0]),
                  "recall_measured_on": "training queries: approximate vs exact top-k"},
        "encoder": {"base": BASE_WEIGHTS, "pooling": "mean", "normalised": True,
                    "query_tower": "fine-tuned" if losses else "untuned",
                    "item_tower": "untuned (frozen)",
                    "steps": len(losses), "loss": LOSS if losses else None,
                    "batch_size": config.batch_size, "learning_rate": config.learning_rate,
                    "scale": config.scale, "trainable_layers": config.trainable_layers,
                    "freeze_word_embeddings": config.freeze_word_embeddings,
                    "seed": config.seed, "precision": "fp32", "opset": OPSET,
                    "cpu_precision": "int8" if int8 and int8["passes"] else "fp32",
                    "int8": int8},
        "split": {**trained.split, "train_queries": int(trained.train_query_ids.shape[0]),
                  "test_queries": int(trained.test_query_ids.shape[0])},
        "build": config.params(),
    }
    metrics: dict[str, Any] = {
        **{f"{name}_{key}": value["all"] for name, result in quality.items()
           for key, value in result.items() if key.startswith("recall_at_")},
        "by_kind": quality,
        f"index_recall_at_{recall_k}": approx,
        "onnx_max_abs_diff": check.max_abs_diff,
        "onnx_min_cosine": check.min_cosine,
        "first_loss": float(np.mean(losses[:5])) if losses else None,
        "final_loss": float(np.mean(losses[-10:])) if losses else None,
        "seconds": {**seconds, "total": sum(seconds.values())},
    }
    data = {
        "items": int(item_ids.shape[0]),
        "training_queries": trained.training.queries,
        "training_pairs": trained.training.pairs,
        "query_tokens_p99": float(np.percentile(lengths, 99)),
        "query_tokens_max": int(lengths.max()),
    }
    return {"params": params, "metrics": metrics, "data": data}
