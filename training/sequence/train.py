"""Seeded training of the sequence model: AdamW, full-softmax next-item loss, early stopping on
the validation NDCG@10 (full ranking), a tqdm progress bar per epoch."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from training.sequence.data import HeldOut, Sequences, left_pad, training_windows
from training.sequence.evaluate import NextItemMetrics, Scorer, evaluate
from training.sequence.model import SASRec


@dataclass(frozen=True)
class SequenceConfig:
    """Architecture and optimisation of one sequence model.

    The defaults are the demo bundle's: 15 epochs at most, about 30-40 s on the demo log (5k
    items, 2k shoppers) on one core (``bench/results/recommend.md`` has the values tuned per data
    set). One thread by default: the full softmax is memory-bound, so a second thread gains
    little (an epoch of the demo log on the 2-core machine at a load average of 2: 2.2-2.4 s with
    2 threads, 2.8-3.2 s with 1), while on a busy machine OpenMP's threads wait on each other
    (at a load average of 8: 32.6 s with 2 threads, 4.0 s with 1).

    Attributes:
        max_length: The fixed input length ``L`` (the newest ``L`` items of a session).
        dim: Hidden and item embedding size.
        layers: Transformer blocks.
        heads: Attention heads per block.
        dropout: Dropout rate.
        learning_rate: AdamW learning rate (constant).
        weight_decay: AdamW decoupled weight decay (per step, ``learning_rate * weight_decay``
            of every weight). Strong by default: thousands of item embeddings learned from a few
            interactions each overfit within a few epochs without it (on the demo log 1.0 beat
            0.01 and 0.1 and 3.0 stopped all learning).
        batch_size: Windows per optimiser step.
        epochs: Most passes over the training windows.
        patience: Stop after this many evaluations without a better validation NDCG@10.
        min_epochs: Never stop before this many epochs: the first few are a plateau where the
            model says little more than popularity before it learns to read the sequence, and
            validation NDCG wanders there.
        eval_every: Evaluate on the validation split every this many epochs.
        top_k: ``K`` of the serving graph's top-K output.
        seed: Seed of the initialisation, the shuffling and dropout.
        threads: torch intra-op threads while training (0: leave torch's setting).
        progress: Show a tqdm progress bar.
        max_seconds: Stop after the epoch that passes this wall time (None: no limit); a guard
            for the demo build, off by default because it makes a run depend on the machine.
    """

    max_length: int = 20
    dim: int = 32
    layers: int = 2
    heads: int = 2
    dropout: float = 0.5
    learning_rate: float = 5e-3
    weight_decay: float = 1.0
    batch_size: int = 64
    epochs: int = 15
    patience: int = 5
    min_epochs: int = 8
    eval_every: int = 1
    top_k: int = 100
    seed: int = 0
    threads: int = 1
    progress: bool = True
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_length", "dim", "layers", "heads", "batch_size", "epochs", "patience",
                     "eval_every", "top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"SequenceConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("min_epochs", "threads", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"SequenceConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("SequenceConfig.dropout must be within [0, 1)")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SequenceConfig:
        """From a configuration mapping (e.g. YAML); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown sequence settings {sorted(unknown)}")
        return cls(**dict(values))

    def architecture(self) -> dict[str, int | float]:
        """The model's shape, for manifests and tables."""
        return {"max_length": self.max_length, "dim": self.dim, "layers": self.layers,
                "heads": self.heads, "dropout": self.dropout}


@dataclass(frozen=True)
class EpochRow:
    """One epoch of training.

    Attributes:
        epoch: 1-based epoch.
        loss: Mean training loss of the epoch.
        valid: Validation metrics after it (None when not evaluated this epoch).
        seconds: Wall time since training started.
    """

    epoch: int
    loss: float
    valid: NextItemMetrics | None
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """For reports."""
        return {"epoch": self.epoch, "loss": self.loss, "seconds": self.seconds,
                **({} if self.valid is None else {"valid": self.valid.as_dict()})}


@dataclass
class TrainResult:
    """A trained model, in eval mode, with the weights of its best validation epoch.

    Attributes:
        model: The model.
        config: What it was trained with.
        history: Every epoch.
        best_epoch: The epoch whose weights were kept.
        best_valid: Its validation metrics.
        seconds: Wall time of training (validation included).
    """

    model: SASRec
    config: SequenceConfig
    history: list[EpochRow] = field(default_factory=list)
    best_epoch: int = 0
    best_valid: NextItemMetrics | None = None
    seconds: float = 0.0


def model_scorer(model: SASRec, held_out: HeldOut, *, block: int = 512) -> Scorer:
    """Scores of the model for rows of ``held_out``: its newest ``L`` history items as input."""
    inputs = left_pad(held_out.history, model.max_length)

    def score(rows: np.ndarray) -> np.ndarray:
        model.eval()
        with torch.inference_mode():
            out = [model.scores(torch.from_numpy(inputs[rows[s : s + block]]))
                   for s in range(0, rows.shape[0], block)]
        return torch.cat(out).numpy()

    return score


def train(
    train_sequences: Sequences, valid: HeldOut, n_items: int, config: SequenceConfig,
    *, description: str = "sequence",
) -> TrainResult:
    """Train a :class:`~training.sequence.model.SASRec` with early stopping.

    Args:
        train_sequences: Training sequences (model indices).
        valid: Validation rows: their training items as input, the next item as target.
        n_items: Items of the index.
        config: Architecture and optimisation.
        description: Progress-bar label.

    Returns:
        The model with the weights of the epoch with the best validation NDCG@10.
    """
    inputs, targets = training_windows(train_sequences, config.max_length)
    if not inputs.shape[0]:
        raise ValueError("no training windows: every training sequence is shorter than 2 items")
    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _train(inputs, targets, valid, n_items, config, description)
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    inputs: np.ndarray, targets: np.ndarray, valid: HeldOut, n_items: int, config: SequenceConfig,
    description: str,
) -> TrainResult:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = SASRec(n_items, config.max_length, config.dim, config.layers, config.heads,
                   config.dropout)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    result = TrainResult(model, config)
    best_state: dict[str, torch.Tensor] | None = None
    since_best = 0
    inputs_t, targets_t = torch.from_numpy(inputs), torch.from_numpy(targets)
    start = time.perf_counter()
    with tqdm(total=config.epochs, desc=description, disable=not config.progress,
              unit="epoch") as bar:
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = torch.from_numpy(rng.permutation(inputs.shape[0]))
            losses = []
            for s in range(0, order.shape[0], config.batch_size):
                idx = order[s : s + config.batch_size]
                loss = model.loss(inputs_t[idx], targets_t[idx])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                losses.append(float(loss.detach()))
            metrics = None
            if epoch % config.eval_every == 0 or epoch == config.epochs:
                metrics = evaluate(model_scorer(model, valid), valid, n_items)
                if result.best_valid is None or metrics.ndcg_at_10 > result.best_valid.ndcg_at_10:
                    result.best_valid, result.best_epoch, since_best = metrics, epoch, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    since_best += 1
            seconds = time.perf_counter() - start
            result.history.append(EpochRow(epoch, float(np.mean(losses)), metrics, seconds))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses):.3f}",
                            ndcg10=f"{result.best_valid.ndcg_at_10:.4f}" if result.best_valid
                            else "-")
            if (since_best >= config.patience and epoch >= config.min_epochs) or (
                    config.max_seconds is not None and seconds >= config.max_seconds):
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


def config_dict(config: SequenceConfig) -> dict[str, Any]:
    """Every field of ``config`` (for manifests)."""
    return asdict(config)
