"""Fine-tuning and distillation: the loss falls, a seed reproduces a run, the teacher is untouched."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from training.ranker.modeling import hidden_targets, load_tokenizer, prune_layers
from training.ranker.pairs import Pairs
from training.ranker.train import TrainConfig, fine_tune


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def tiny(tokenizer) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                        num_labels=1)  # fmt: skip
    config._attn_implementation = "eager"
    return BertForSequenceClassification(config).eval()


def _pairs() -> Pairs:
    # Relevant when the colour words agree: learnable from tokens alone.
    colours = ["red", "blue", "green", "black"]
    queries, titles, grades, keys = [], [], [], []
    for qi, q in enumerate(colours):
        for t in colours:
            queries.append(f"{q} sock")
            titles.append(f"{t} cotton sock")
            grades.append(3 if q == t else 0)
            keys.append(qi)
    return Pairs(queries, titles, np.asarray(grades), np.asarray(keys))


FAST = TrainConfig(max_steps=24, epochs=100, batch_size=8, learning_rate=3e-3, progress=False,
                   freeze_word_embeddings=False, seed=1)  # fmt: skip


def test_loss_falls(tiny, tokenizer) -> None:
    model = copy.deepcopy(tiny)
    losses = fine_tune(model, tokenizer, _pairs(), 16, FAST)
    assert len(losses) == FAST.max_steps
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert not model.training


@pytest.mark.parametrize("length_chunk", [0, 8])  # plain random batches, batches grouped by length
def test_a_seed_reproduces_a_run(tiny, tokenizer, length_chunk: int) -> None:
    config = TrainConfig(max_steps=5, batch_size=4, progress=False, seed=3, length_chunk=length_chunk)
    a = fine_tune(copy.deepcopy(tiny), tokenizer, _pairs(), 16, config)
    b = fine_tune(copy.deepcopy(tiny), tokenizer, _pairs(), 16, config)
    assert a == b


def test_frozen_word_embeddings_do_not_move(tiny, tokenizer) -> None:
    model = copy.deepcopy(tiny)
    before = model.get_input_embeddings().weight.detach().clone()
    fine_tune(model, tokenizer, _pairs(), 16, TrainConfig(max_steps=3, batch_size=4,
                                                          progress=False))  # fmt: skip
    torch.testing.assert_close(model.get_input_embeddings().weight, before)


def test_distillation_leaves_the_teacher_untouched(tiny, tokenizer) -> None:
    teacher = copy.deepcopy(tiny)
    snapshot = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = prune_layers(teacher, [0])
    losses = fine_tune(student, tokenizer, _pairs(), 16,
                       TrainConfig(max_steps=4, batch_size=4, progress=False), teacher=teacher)
    assert len(losses) == 4 and all(np.isfinite(losses))
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(value, snapshot[key])


def test_hidden_state_distillation_runs_and_pulls_towards_the_teacher(tiny, tokenizer) -> None:
    teacher = copy.deepcopy(tiny)
    student = prune_layers(teacher, [0])
    config = TrainConfig(max_steps=12, epochs=10, batch_size=8, learning_rate=3e-3, progress=False,
                         distill_weight=1.0, hidden_weight=1.0, freeze_word_embeddings=False)
    losses = fine_tune(student, tokenizer, _pairs(), 16, config, teacher=teacher,
                       hidden_targets=hidden_targets([0], 2))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


@pytest.mark.parametrize(("keep", "total", "expected"),
                         [([0, 2, 4], 6, [2, 4, 6]), ([0, 1, 2, 3], 6, [1, 2, 4, 6]), ([0], 2, [2]),
                          ([0, 1], 6, [3, 6]), ([0, 1, 2], 3, [1, 2, 3])])
def test_hidden_targets(keep: list[int], total: int, expected: list[int]) -> None:
    assert hidden_targets(keep, total) == expected


def test_hidden_targets_need_a_smaller_student() -> None:
    with pytest.raises(ValueError, match="3 layers from a teacher of 2"):
        hidden_targets([0, 1, 2], 2)


def test_no_pairs_is_an_error(tiny, tokenizer) -> None:
    empty = Pairs([], [], np.zeros(0, np.int64), np.zeros(0, np.int64))
    with pytest.raises(ValueError):
        fine_tune(copy.deepcopy(tiny), tokenizer, empty, 16, FAST)
