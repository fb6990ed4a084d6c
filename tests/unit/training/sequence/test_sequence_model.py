"""The sequence model: causal, learns a toy order (after A comes B), reproducible with a seed;
the next-item metrics: perfect = 1, no hit = 0, a hand-computed rank, exclusions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.sequence.data import PADDING, HeldOut, Sequences, leave_one_out
from training.sequence.evaluate import evaluate
from training.sequence.model import SASRec
from training.sequence.train import SequenceConfig, model_scorer, train

N_TOY = 24


def _sequences(rows: list[list[int]]) -> Sequences:
    lengths = [len(r) for r in rows]
    return Sequences(np.arange(len(rows)), np.r_[0, np.cumsum(lengths)].astype(np.int64),
                     np.array([i for r in rows for i in r], dtype=np.int64))


def _toy(n_users: int = 160, seed: int = 0) -> Sequences:
    """Shoppers walk the catalog in order from a random start: after item A comes A + 1
    (wrapping at the end), so the next item is fully determined by the newest one."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_users):
        start, length = int(rng.integers(1, N_TOY + 1)), int(rng.integers(4, 9))
        rows.append([(start - 1 + j) % N_TOY + 1 for j in range(length)])
    return _sequences(rows)


TOY = SequenceConfig(max_length=6, dim=32, layers=1, heads=2, dropout=0.0, learning_rate=1e-2,
                     weight_decay=0.0, batch_size=64, epochs=40, eval_every=40, progress=False,
                     seed=0, threads=1)  # fmt: skip
"""Validated once, at the end: the toy's validation NDCG saturates at 1 long before the model has
learned every step, and early stopping would keep that first perfect epoch."""


@pytest.fixture(scope="module")
def toy_run():
    split = leave_one_out(_toy())
    return split, train(split.train, split.valid, N_TOY, TOY)


def test_after_a_comes_b(toy_run) -> None:
    _, result = toy_run
    # Every item A as the newest of a short walk ..., A - 1, A, and alone.
    newest = torch.arange(1, N_TOY + 1)
    inputs = torch.zeros((2 * N_TOY, TOY.max_length), dtype=torch.int64)
    inputs[:N_TOY, -3:] = torch.stack([(newest - 3 + j) % N_TOY + 1 for j in range(3)], dim=1)
    inputs[N_TOY:, -1] = newest
    with torch.inference_mode():
        scores = result.model.scores(inputs).numpy()
    scores[:, PADDING] = -math.inf
    predicted = scores.argmax(axis=1)
    expected = np.tile(np.arange(1, N_TOY + 1) % N_TOY + 1, 2)
    assert (predicted == expected).all(), f"{predicted} != {expected}"


def test_the_toy_order_is_learned_on_held_out_items(toy_run) -> None:
    split, result = toy_run
    metrics = evaluate(model_scorer(result.model, split.test), split.test, N_TOY)
    assert metrics.hit_rate_at_10 == 1.0 and metrics.mrr > 0.95
    assert result.best_valid is not None and result.best_valid.ndcg_at_10 > 0.95
    assert result.history[-1].loss < result.history[0].loss


def test_a_seed_reproduces_a_run() -> None:
    split = leave_one_out(_toy(40))
    config = SequenceConfig(max_length=6, dim=16, layers=1, heads=1, dropout=0.2, epochs=2,
                            progress=False, seed=3, threads=1)
    a, b = (train(split.train, split.valid, N_TOY, config) for _ in range(2))
    assert [r.loss for r in a.history] == [r.loss for r in b.history]
    for key, value in a.model.state_dict().items():
        torch.testing.assert_close(value, b.model.state_dict()[key], rtol=0, atol=0)
    c = train(split.train, split.valid, N_TOY, SequenceConfig(**{**config.__dict__, "seed": 4}))
    assert [r.loss for r in c.history] != [r.loss for r in a.history]


def test_attention_is_causal_and_ignores_padding_contents() -> None:
    torch.manual_seed(0)
    model = SASRec(50, 8, dim=16, layers=2, heads=2, dropout=0.0).eval()
    seq = torch.tensor([[0, 0, 3, 7, 9, 11, 2, 5]])
    changed = seq.clone()
    changed[0, -1] = 40  # the newest item
    with torch.inference_mode():
        a, b = model(seq), model(changed)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])  # earlier positions never see later ones
    assert not torch.allclose(a[:, -1], b[:, -1])
    assert model.embeddings[PADDING].abs().sum() == 0


def test_sequences_must_have_the_model_length() -> None:
    model = SASRec(10, 4, dim=8, layers=1, heads=1)
    with pytest.raises(ValueError, match="length 4"):
        model(torch.zeros((1, 5), dtype=torch.int64))


# --- metrics ---------------------------------------------------------------------------------


def _held(histories: list[list[int]], targets: list[int]) -> HeldOut:
    return HeldOut(_sequences(histories), np.array(targets))


def _fixed(scores: np.ndarray):
    return lambda rows: scores[rows]


@pytest.mark.parametrize(
    ("order", "history", "ndcg", "hit", "mrr"),
    [
        ([5, 1, 2, 3, 4, 6], [], 1.0, 1.0, 1.0),                    # target first: perfect
        ([1, 2, 5, 3, 4, 6], [], 1 / math.log2(4), 1.0, 1 / 3),      # third
        ([1, 2, 5, 3, 4, 6], [1, 2], 1.0, 1.0, 1.0),                 # first once 1, 2 are excluded
    ],
)
def test_metrics_hand_computed(order, history, ndcg, hit, mrr) -> None:
    n = 12
    scores = np.zeros((1, n + 1), np.float32)
    scores[0, order] = np.arange(len(order), 0, -1) + 100  # the given order on top, rest tied at 0
    metrics = evaluate(_fixed(scores), _held([history], [5]), n)
    assert metrics.ndcg_at_10 == pytest.approx(ndcg)
    assert metrics.hit_rate_at_10 == hit
    assert metrics.mrr == pytest.approx(mrr)
    assert metrics.users == 1


def test_no_hit_is_zero_and_ties_count_half() -> None:
    n = 30
    scores = np.zeros((1, n + 1), np.float32)
    scores[0, 1:12] = 1.0  # eleven items above the target, which ties with 18 others at 0
    metrics = evaluate(_fixed(scores), _held([[]], [20]), n)
    assert metrics.ndcg_at_10 == 0.0 and metrics.hit_rate_at_10 == 0.0
    assert metrics.mrr == pytest.approx(1 / (1 + 11 + 18 / 2))
