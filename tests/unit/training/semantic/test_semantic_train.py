"""Fine-tuning the query tower and measuring the semantic path: the judgements it learns from, a
loss that falls, the same weights for the same seed, nothing changed at 0 steps, and the Recall@K
of the evaluation on known answers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerBase

from training.data.generator import Dataset, split_queries
from training.semantic.encoder import MeanPoolEncoder, embed_texts
from training.semantic.evaluate import bm25_rankings, recall_by_kind, semantic_rankings
from training.semantic.train import SemanticConfig, TrainingQueries, fine_tune, training_queries


@pytest.fixture(scope="module")
def split(tiny_world: Dataset) -> tuple[np.ndarray, np.ndarray]:
    return split_queries(tiny_world, 0.2, 0)


@pytest.fixture(scope="module")
def item_vectors(minilm: MeanPoolEncoder, tokenizer: PreTrainedTokenizerBase,
                 tiny_world: Dataset) -> np.ndarray:
    return embed_texts(minilm, tokenizer, tiny_world.item_text().tolist(), 64)


def _tune(minilm: MeanPoolEncoder, tokenizer: PreTrainedTokenizerBase, world: Dataset,
          train_ids: np.ndarray, items: np.ndarray, **config: object
          ) -> tuple[MeanPoolEncoder, list[float]]:
    model = copy.deepcopy(minilm)
    settings = SemanticConfig(progress=False, threads=1, **config)  # type: ignore[arg-type]
    return model, fine_tune(model, tokenizer, world, train_ids, items, settings).losses


def _loss(model: MeanPoolEncoder, tokenizer: PreTrainedTokenizerBase, data: TrainingQueries,
          items: np.ndarray) -> float:
    """The training objective over every training query (no dropout, no gradient)."""
    logits = 20.0 * embed_texts(model, tokenizer, data.texts, 32) @ items.T
    positive = np.zeros(logits.shape, dtype=bool)
    for row, rows in enumerate(data.positives):
        positive[row, rows] = True
    scores = torch.from_numpy(logits)
    return float((torch.logsumexp(scores, 1)
                  - torch.logsumexp(scores.masked_fill(~torch.from_numpy(positive), float("-inf")),
                                    1)).mean())


def test_training_queries_are_the_training_split_with_their_grade_3_items(
    tiny_world: Dataset, split: tuple[np.ndarray, np.ndarray]
) -> None:
    train_ids, test_ids = split
    data = training_queries(tiny_world, train_ids)
    assert set(data.query_ids.tolist()) <= set(train_ids.tolist())
    assert not set(data.query_ids.tolist()) & set(test_ids.tolist())
    items = tiny_world.items.item_id
    for qid, text, rows in zip(data.query_ids, data.texts, data.positives, strict=True):
        grades = tiny_world.grade(np.full(items.shape, qid), items)
        assert rows.tolist() == np.flatnonzero(grades == 3).tolist() and rows.size
        assert text == tiny_world.queries.text[tiny_world.queries.query_id.searchsorted(qid)]
    assert data.pairs == sum(r.size for r in data.positives)


def test_the_loss_falls_and_the_same_seed_gives_the_same_weights(
    minilm: MeanPoolEncoder, tokenizer: PreTrainedTokenizerBase, tiny_world: Dataset,
    split: tuple[np.ndarray, np.ndarray], item_vectors: np.ndarray,
) -> None:
    first, losses = _tune(minilm, tokenizer, tiny_world, split[0], item_vectors, steps=12,
                          batch_size=8, learning_rate=1e-4)
    assert len(losses) == 12
    data = training_queries(tiny_world, split[0])
    assert (_loss(first, tokenizer, data, item_vectors)
            < _loss(minilm, tokenizer, data, item_vectors) - 0.05)
    second, again = _tune(minilm, tokenizer, tiny_world, split[0], item_vectors, steps=12,
                          batch_size=8, learning_rate=1e-4)
    assert again == losses
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    # The word embeddings stay as pre-trained; the layers moved.
    words = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(first.state_dict()[words], minilm.state_dict()[words])
    assert not torch.equal(first.state_dict()["bert.encoder.layer.5.output.dense.weight"],
                           minilm.state_dict()["bert.encoder.layer.5.output.dense.weight"])
    assert all(p.requires_grad for p in first.parameters()) and not first.training


def test_frozen_lower_layers_stay_as_they_were(
    minilm: MeanPoolEncoder, tokenizer: PreTrainedTokenizerBase, tiny_world: Dataset,
    split: tuple[np.ndarray, np.ndarray], item_vectors: np.ndarray,
) -> None:
    tuned, _ = _tune(minilm, tokenizer, tiny_world, split[0], item_vectors, steps=2, batch_size=4,
                     trainable_layers=1)
    before, after = minilm.state_dict(), tuned.state_dict()
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved and all(name.startswith("bert.encoder.layer.5.") for name in moved), moved


def test_zero_steps_leave_the_encoder_untouched(
    minilm: MeanPoolEncoder, tokenizer: PreTrainedTokenizerBase, tiny_world: Dataset,
    split: tuple[np.ndarray, np.ndarray], item_vectors: np.ndarray,
) -> None:
    tuned, losses = _tune(minilm, tokenizer, tiny_world, split[0], item_vectors, steps=0)
    assert losses == []
    for (name, a), (_, b) in zip(tuned.state_dict().items(), minilm.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name


def test_mismatched_item_vectors_are_refused(
    minilm: MeanPoolEncoder, tokenizer: PreTrainedTokenizerBase, tiny_world: Dataset,
    split: tuple[np.ndarray, np.ndarray], item_vectors: np.ndarray,
) -> None:
    with pytest.raises(ValueError, match="item vectors"):
        fine_tune(minilm, tokenizer, tiny_world, split[0], item_vectors[:-1],
                  SemanticConfig(steps=1, progress=False))


def test_recall_is_one_for_the_exact_items_zero_for_none_and_capped_at_k(
    tiny_world: Dataset, split: tuple[np.ndarray, np.ndarray]
) -> None:
    test_ids = split[1]
    items = tiny_world.items.item_id
    exact = [items[tiny_world.grade(np.full(items.shape, q), items) == 3] for q in test_ids]
    perfect = recall_by_kind(tiny_world, test_ids, exact)
    none = recall_by_kind(tiny_world, test_ids, [items[:0] for _ in test_ids])
    assert perfect["recall_at_50"]["all"] == pytest.approx(1.0)
    assert perfect["recall_at_10"]["all"] == pytest.approx(1.0)  # min(#exact, 10) below
    assert none["recall_at_50"]["all"] == 0.0
    kinds = set(tiny_world.queries.kind[tiny_world.queries.query_id.searchsorted(test_ids)].tolist())
    assert set(perfect["recall_at_50"]) == {"all", *kinds}
    assert perfect["queries"]["all"] == sum(perfect["queries"][k] for k in kinds)
    # One hand-computed value: the first query's exact items but half of them, and nothing else.
    first = exact[0]
    half = recall_by_kind(tiny_world, test_ids[:1], [first[: (first.size + 1) // 2]], ks=(50,))
    assert half["recall_at_50"]["all"] == pytest.approx(((first.size + 1) // 2) / min(first.size, 50))


def test_the_rankings_are_what_their_scores_say(tiny_world: Dataset) -> None:
    items = tiny_world.items.item_id
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(items), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ranked = semantic_rankings(items, vectors, vectors[[7, 3]], 5)
    assert [r[0] for r in ranked] == [items[7], items[3]]
    assert all(len(r) == 5 for r in ranked)
    texts = tiny_world.item_text().tolist()
    title = texts[11].split(" | ")[0]
    (found,) = bm25_rankings(items, texts, [title], 5)
    assert items[11] in found.tolist()
    (nothing,) = bm25_rankings(items, texts, ["zzzqqq"], 5)
    assert nothing.size == 0
