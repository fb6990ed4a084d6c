"""Seeded fine-tuning of the query tower on the training queries' judgements, against the frozen
item embeddings of the whole catalog.

The items are embedded once, by the untuned all-MiniLM-L6-v2 (the item tower stays frozen), and
only the query encoder learns: each step takes ``batch_size`` distinct training queries, scores
each against *every* catalog item (cosine similarity times ``scale``) and minimises

    -log( sum of softmax over the item's grade-3 items )

the MultipleNegativesRankingLoss of sentence-transformers with the catalog instead of the batch as
the candidates and every grade-3 item of the query as a positive (so no item relevant to the query
is ever pushed away from it as a negative). The judgements are the data set's grading rule applied
to the training queries over the whole catalog (``Dataset.grade``; the qrels are a bounded pool of
the same judgements); the held-out queries are never seen.

Why the item tower is frozen (measured on the 2-core build machine, see the issue report): an item
text is about 35 tokens against a query's 10, so a step through both towers costs about four times
a query-only step, and a changed item tower must embed the whole catalog again after training
(about a minute at demo size). With the catalog embedded once before training, every item is a
negative at the cost of one matrix product, and the short fixed budget goes to the queries, where
the vocabulary gap is (synonyms, typos, descriptions).

The word-embedding matrix stays fixed (as the ranker's fine-tuning: its dense gradient is a large
share of a CPU step), and optionally the lower layers too (``trainable_layers``).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from training.data.generator import Dataset
from training.semantic.encoder import MeanPoolEncoder, as_tensors, tokenize
from training.semantic.index import IndexConfig

#: The loss, for the manifest.
LOSS = ("MultipleNegativesRankingLoss over the whole catalog (softmax of scaled cosine; every "
        "grade-3 item of the query a positive), query tower only, item tower frozen")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity; the CPU count where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class SemanticConfig:
    """Fine-tuning, embedding and index settings of the semantic component.

    The defaults are the demo bundle's budget (measured on the 2-core machine in the issue
    report); ``pipeline.lifecycle.config.SEMANTIC_PRESETS`` has the tiny one for tests.

    Attributes:
        steps: Optimiser steps of the query tower's fine-tuning (0: ship the untuned
            all-MiniLM-L6-v2 for queries too).
        batch_size: Training queries per step (each scored against the whole catalog).
        learning_rate: Peak AdamW learning rate (linear warm-up, then linear decay to 0).
        warmup_fraction: Share of the steps spent warming up.
        weight_decay: AdamW weight decay.
        scale: Multiplier of the cosine similarities before the softmax (sentence-transformers'
            default 20: a temperature of 0.05).
        trainable_layers: Top transformer layers of the query tower that are trained (6: all of
            MiniLM-L6); the layers below stay as pre-trained and backpropagation stops above them.
        freeze_word_embeddings: Keep the word-embedding matrix fixed.
        max_query_length: Longest query in tokens (special tokens included): the truncation of
            the tokenizer.json shipped and the most the served model accepts.
        max_item_length: Longest item text in tokens when embedding items.
        embed_batch_size: Texts per ONNX Runtime call when embedding the catalog.
        index: The HNSW index.
        export_check_queries: Held-out queries the ONNX graph is compared with torch on.
        int8: Also quantise the query tower to int8 (7-bit weights per output channel, the
            ranker's CPU-independent setting: :class:`training.ranker.optimise.Int8Options`) for
            the CPU configuration, if it passes the guard below; the GPU serves fp32 either way.
        max_int8_recall_drop: The int8 guard: the int8 query tower's Recall@50 on the held-out
            queries (all classes, exact search) may be at most this far (absolute) below the
            fp32 graph's, else the CPU serves fp32 too.
        seed: Seed of the batches and dropout.
        threads: torch, ONNX Runtime and FAISS threads (0: the CPUs this process may run on).
            One by default, as the sequence model's: on the shared 2-core build machine at a
            load average of 5-6, 8 fine-tuning steps took 3.4-4.2 s with one thread and
            14.9-19.7 s with two (OpenMP's threads wait on each other when the cores are busy),
            and ONNX Runtime embedded 500 items in 6.1-6.6 s with one and 7.5-8.3 s with two.
        progress: Show a tqdm progress bar.
    """

    steps: int = 60
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    scale: float = 20.0
    trainable_layers: int = 6
    freeze_word_embeddings: bool = True
    max_query_length: int = 32
    max_item_length: int = 64
    embed_batch_size: int = 64
    index: IndexConfig = field(default_factory=IndexConfig)
    export_check_queries: int = 16
    int8: bool = True
    max_int8_recall_drop: float = 0.01
    seed: int = 0
    threads: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.index, dict):  # from a YAML section
            object.__setattr__(self, "index", IndexConfig(**self.index))
        for name in ("steps", "trainable_layers", "threads", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"SemanticConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "max_item_length", "embed_batch_size", "export_check_queries"):
            if getattr(self, name) < 1:
                raise ValueError(f"SemanticConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_query_length < 3:
            raise ValueError("SemanticConfig.max_query_length must leave room for a token "
                             f"between [CLS] and [SEP], got {self.max_query_length}")

    @property
    def cpu_threads(self) -> int:
        """``threads``, or the CPUs this process may run on when 0."""
        return self.threads or usable_cpus()

    def params(self) -> dict[str, Any]:
        """JSON-friendly parameters for the manifest."""
        return {k: v for k, v in asdict(self).items() if k != "progress"}


@dataclass(frozen=True)
class TrainingQueries:
    """The training queries with at least one grade-3 catalog item, and those items.

    Attributes:
        query_ids: Query id per training query (int64 ``[Q]``).
        texts: Query text per training query.
        positives: Per training query, the catalog rows (of ``Dataset.items``) of its grade-3
            items (int64, ascending).
    """

    query_ids: np.ndarray
    texts: list[str]
    positives: list[np.ndarray]

    def __len__(self) -> int:
        return int(self.query_ids.shape[0])

    @property
    def pairs(self) -> int:
        """(query, grade-3 item) pairs in all."""
        return int(sum(p.shape[0] for p in self.positives))


def training_queries(dataset: Dataset, train_query_ids: np.ndarray, chunk: int = 128
                     ) -> TrainingQueries:
    """The training queries' grade-3 items over the whole catalog (queries without one dropped)."""
    query_ids = np.asarray(train_query_ids, np.int64)
    items = dataset.items.item_id
    keep, positives = [], []
    for start in range(0, query_ids.shape[0], chunk):
        ids = query_ids[start:start + chunk]
        grades = dataset.grade(ids[:, None], items[None, :])
        for qid, row in zip(ids.tolist(), grades, strict=True):
            rows = np.flatnonzero(row == 3).astype(np.int64)
            if rows.size:
                keep.append(qid)
                positives.append(rows)
    kept = np.asarray(keep, np.int64)
    texts = dataset.queries.text[dataset.queries.query_id.searchsorted(kept)].tolist()
    return TrainingQueries(kept, texts, positives)


@dataclass
class FineTuneResult:
    """What fine-tuning did.

    Attributes:
        losses: The loss of every step.
        seconds: Wall time of the steps.
        queries: Training queries with a grade-3 item.
        pairs: Their (query, grade-3 item) pairs.
    """

    losses: list[float]
    seconds: float
    queries: int
    pairs: int


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _freeze(model: MeanPoolEncoder, config: SemanticConfig) -> list[torch.nn.Parameter]:
    """Freeze what the configuration keeps fixed; the parameters left to train."""
    bert = model.bert
    layers = bert.encoder.layer
    keep = min(config.trainable_layers, len(layers))
    frozen: list[torch.nn.Module] = list(layers[:len(layers) - keep])
    if keep < len(layers):
        frozen.append(bert.embeddings)  # below a frozen layer nothing learns
    for module in frozen:
        for param in module.parameters():
            param.requires_grad_(False)
    if config.freeze_word_embeddings:
        bert.get_input_embeddings().weight.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def fine_tune(
    model: MeanPoolEncoder,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    train_query_ids: np.ndarray,
    item_vectors: np.ndarray,
    config: SemanticConfig,
) -> FineTuneResult:
    """Train the query tower ``model`` in place (see the module docstring); 0 steps leaves it as
    it is.

    Args:
        model: The query encoder.
        tokenizer: Its tokenizer.
        dataset: The data set (catalog rows, queries, grading rule).
        train_query_ids: Training queries.
        item_vectors: Frozen item embeddings, one row per catalog row of ``dataset.items``.
        config: Optimisation settings.

    Raises:
        ValueError: no training query has a grade-3 item, or the item rows do not match the
            catalog.
    """
    if item_vectors.shape[0] != len(dataset.items):
        raise ValueError(f"{item_vectors.shape[0]} item vectors for {len(dataset.items)} items")
    data = training_queries(dataset, train_query_ids)
    result = FineTuneResult([], 0.0, len(data), data.pairs)
    if config.steps == 0:
        return result
    if not len(data):
        raise ValueError("no training query has a grade-3 item to learn from")
    torch.set_num_threads(config.cpu_threads)
    _seed(config.seed)
    trainable = _freeze(model, config)
    # Fused: the per-tensor loop of the default AdamW took about a third of a CPU step.
    optimiser = torch.optim.AdamW(trainable, lr=config.learning_rate,
                                  weight_decay=config.weight_decay, fused=True)
    total = config.steps
    warmup = max(1, int(total * config.warmup_fraction))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)
    rng = np.random.default_rng(config.seed)
    batch_size = min(config.batch_size, len(data))
    items = torch.from_numpy(np.ascontiguousarray(item_vectors, dtype=np.float32))
    order, cursor = rng.permutation(len(data)), 0
    start = time.perf_counter()
    model.train()
    with tqdm(total=total, desc="fine-tune query encoder", disable=not config.progress,
              unit="step") as bar:
        for _ in range(total):
            if cursor + batch_size > len(order):
                order, cursor = rng.permutation(len(data)), 0
            rows = order[cursor:cursor + batch_size]
            cursor += batch_size
            positive = torch.zeros((len(rows), items.shape[0]), dtype=torch.bool)
            for i, r in enumerate(rows.tolist()):
                positive[i, torch.from_numpy(data.positives[r])] = True
            queries = model(*as_tensors(tokenize(tokenizer, [data.texts[r] for r in rows],
                                                 config.max_query_length)))
            logits = config.scale * queries @ items.T
            loss = (torch.logsumexp(logits, dim=1)
                    - torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimiser.step()
            scheduler.step()
            result.losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(result.losses[-20:]):.3f}")
    model.eval()
    for param in model.parameters():
        param.requires_grad_(True)
    result.seconds = time.perf_counter() - start
    return result
