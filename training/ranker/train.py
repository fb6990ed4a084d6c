"""Seeded fine-tuning of the cross-encoder, and distillation of a pruned student from its teacher.

Pointwise loss on graded labels: binary cross-entropy of the logit against ``grade / 3``, the
sentence-transformers cross-encoder recipe. It learns calibrated scores (useful to the blend in the
transformer, which adds personalisation to relevance) and, with hard negatives in every query's
list, orders exact > substitute > complement > irrelevant well. Distillation adds the mean squared
error to the teacher's logits, which carries the teacher's ordering *within* a grade too.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from shopserve.protocol import ATTENTION_MASK, INPUT_IDS, TOKEN_TYPE_IDS
from shopserve.text import PairTokenizer
from training.ranker.pairs import Pairs, batches, encode_pairs, length_grouped_batches, pair_lengths


@dataclass(frozen=True)
class TrainConfig:
    """How to fine-tune.

    Attributes:
        epochs: Passes over the training pairs.
        batch_size: Pairs per optimiser step.
        learning_rate: Peak AdamW learning rate (linear warm-up, then linear decay).
        warmup_fraction: Share of the steps spent warming up.
        weight_decay: AdamW weight decay.
        max_steps: Stop after this many steps (0: no cap); bounds the wall time on 2 cores.
        freeze_word_embeddings: Keep the 30k x 384 word-embedding matrix fixed: its dense
            gradient and AdamW update are a large share of a CPU step, and a few hundred steps
            of fine-tuning gain nothing from moving it.
        length_chunk: Group each batch from pairs of similar length, sorting chunks of this many
            batches by length (:func:`~training.ranker.pairs.length_grouped_batches`); 0 draws
            plain random batches. A step pads to its longest pair, so grouping cuts the tokens a
            step computes by about a quarter on the demo pairs, the time that buys the student
            more distillation steps.
        distill_weight: Weight of the teacher MSE term when a teacher is given (the label BCE term
            gets the rest).
        hidden_weight: Weight of each layer's hidden-state MSE in intermediate distillation.
        seed: Seed of the shuffling, dropout and head initialisation.
        threads: torch intra-op threads (0: leave torch's default).
        progress: Show a tqdm progress bar.
    """

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 7e-5
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_steps: int = 0
    freeze_word_embeddings: bool = True
    length_chunk: int = 8
    distill_weight: float = 0.5
    hidden_weight: float = 1.0
    seed: int = 0
    threads: int = 2
    progress: bool = True


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch, so a training run is reproducible on one machine."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(batch[k]) for k in (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)}


def fine_tune(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Pairs,
    max_length: int,
    config: TrainConfig,
    *,
    teacher: PreTrainedModel | None = None,
    hidden_targets: Sequence[int] | None = None,
    description: str = "fine-tune",
) -> list[float]:
    """Train ``model`` in place on ``pairs``; with ``teacher`` logits, distil as well.

    Args:
        model: Cross-encoder with a one-logit head.
        tokenizer: Its tokenizer.
        pairs: Training pairs (of training queries only).
        max_length: Truncation length; batches are padded to their own longest pair.
        config: Optimisation settings.
        teacher: A trained cross-encoder to distil from: its logits on each batch (no grad)
            are the student's regression targets, computed per step so only the pairs the
            student sees are scored.
        hidden_targets: With a teacher, for each student layer the index into the teacher's
            ``hidden_states`` (0 = embeddings) its output should match; the masked MSE between
            them is added with weight ``config.hidden_weight`` (TinyBERT-style intermediate
            distillation: every student layer gets a target, not only the final logit).
        description: Progress-bar label.

    Returns:
        The loss of every step (for the report and for tests that check it falls).
    """
    if not len(pairs):
        raise ValueError("no training pairs")
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    labels = torch.from_numpy(pairs.labels())
    pair_tokenizer = PairTokenizer.from_hf(tokenizer)
    if teacher is not None:
        teacher.eval()
    steps_per_epoch = math.ceil(len(pairs) / config.batch_size)
    total = steps_per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    if config.freeze_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(
        trainable, lr=config.learning_rate, weight_decay=config.weight_decay
    )
    warmup = max(1, int(total * config.warmup_fraction))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)
    bce = torch.nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(config.seed)
    lengths = (pair_lengths(tokenizer, pairs.queries, pairs.titles)
               if config.length_chunk else None)  # fmt: skip

    def epoch() -> list[np.ndarray]:
        if lengths is not None:
            return length_grouped_batches(lengths, config.batch_size, rng, config.length_chunk)
        order = rng.permutation(len(pairs))
        return [order[sl] for sl in batches(len(order), config.batch_size)]

    losses: list[float] = []
    model.train()
    with tqdm(total=total, desc=description, disable=not config.progress, unit="step") as bar:
        step = 0
        while step < total:
            for idx in epoch():
                if step >= total:
                    break
                enc = encode_pairs(
                    pair_tokenizer,
                    [pairs.queries[i] for i in idx],
                    [pairs.titles[i] for i in idx],
                    max_length,
                )
                inputs = _tensors(enc)
                hidden = teacher is not None and bool(hidden_targets)
                out = model(**inputs, output_hidden_states=hidden)
                logits = out.logits.reshape(-1)
                loss = bce(logits, labels[torch.from_numpy(idx)])
                if teacher is not None:
                    with torch.no_grad():
                        t_out = teacher(**inputs, output_hidden_states=hidden)
                    w = config.distill_weight
                    loss = (1 - w) * loss + w * torch.nn.functional.mse_loss(
                        logits, t_out.logits.reshape(-1)
                    )
                    if hidden:
                        mask = inputs[ATTENTION_MASK].unsqueeze(-1).to(logits.dtype)
                        for j, target in enumerate(hidden_targets or ()):
                            diff = (out.hidden_states[j + 1] - t_out.hidden_states[target]) ** 2
                            loss = loss + config.hidden_weight * (diff * mask).sum() / (
                                mask.sum() * diff.shape[-1]
                            )
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimiser.step()
                scheduler.step()
                losses.append(float(loss.detach()))
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    model.eval()
    return losses
