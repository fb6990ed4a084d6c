"""Train, evaluate and export the sequence recommender (the lifecycle's sequence step calls these).

:func:`train_sequence_model` builds the per-shopper sequences from the interaction log, splits
them leave-one-out, trains with early stopping on the validation item and measures the held-out
test item; :func:`export_sequence` writes the component's files and returns its manifest
``params``, ``metrics`` and ``data``. Writing the Triton model repository around ``model.onnx``
and the manifest itself is the packaging step's job.

What ships is the model that was measured: trained on all but each shopper's last two items. The
serving graph reads the session as its input, so a shopper's newest items need not be in its
weights the way MF needs them in its user factors (``training.recall.build`` refits on the whole
log for that reason); a refit would double the build time for items that at most a handful of
sessions would add.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import save_file

from shopserve.artifacts import (
    SEQUENCE_EMBEDDINGS_FILE,
    SEQUENCE_ITEM_IDS_FILE,
    SEQUENCE_LENGTH,
    SEQUENCE_TOP_K,
    SEQUENCE_WEIGHTS_FILE,
)
from shopserve.interactions import Interactions
from training.sequence.data import ItemIndex, leave_one_out, user_sequences
from training.sequence.evaluate import NextItemMetrics, evaluate, popularity_scorer
from training.sequence.export import OPSET, export_onnx
from training.sequence.model import SASRec
from training.sequence.train import SequenceConfig, TrainResult, model_scorer, train

#: The serving graph inside the component folder handed to the packaging step.
SEQUENCE_ONNX_FILE = "model.onnx"
OBJECTIVE = "full-softmax cross-entropy (next item)"


@dataclass
class TrainedSequence:
    """A trained sequence model and what was measured on it.

    Attributes:
        model: The model (eval mode).
        index: Catalog item ids <-> model indices.
        training: Its training run (config, history, best epoch, seconds).
        test: Quality on each evaluated shopper's last item (full ranking, earlier items excluded).
        popularity: The popularity baseline on the same shoppers and items.
        data: Counts of the sequences it was trained on.
    """

    model: SASRec
    index: ItemIndex
    training: TrainResult
    test: NextItemMetrics
    popularity: NextItemMetrics
    data: dict[str, int]

    @property
    def config(self) -> SequenceConfig:
        """What it was trained with."""
        return self.training.config

    @property
    def top_k(self) -> int:
        """K of the serving graph: the configured one, at most ``n_items - L`` (so that K items
        outside any input row exist)."""
        return min(self.config.top_k, len(self.index) - self.config.max_length)


def train_sequence_model(
    log: Interactions, catalog_item_ids: np.ndarray, config: SequenceConfig | None = None,
) -> TrainedSequence:
    """Train and evaluate the sequence model on an interaction log.

    Args:
        log: Interactions (views, carts, purchases...: the order counts, weights are ignored);
            events of items outside the catalog are dropped.
        catalog_item_ids: Every catalog item id: the model's index space (items never seen get
            an index and an embedding that only the softmax's denominator trains).
        config: Architecture, optimisation, seed, progress bar (default: ``SequenceConfig()``,
            the demo budget).

    Raises:
        ValueError: No shopper has the three items a train/validation/test split needs, or the
            catalog is not larger than the sequence length.
    """
    config = config or SequenceConfig()
    index = ItemIndex.from_ids(catalog_item_ids)
    if len(index) <= config.max_length:
        raise ValueError(f"the catalog ({len(index)} items) must be larger than max_length "
                         f"({config.max_length})")
    sequences = user_sequences(log, index)
    split = leave_one_out(sequences)
    if not len(split.test):
        raise ValueError("no shopper has 3 or more items: nothing to validate or test on")
    n = len(index)
    result = train(split.train, split.valid, n, config)
    test = evaluate(model_scorer(result.model, split.test), split.test, n)
    popularity = evaluate(popularity_scorer(split.before_test, n), split.test, n)
    data = {
        "shoppers": len(sequences),
        "evaluated_shoppers": len(split.test),
        "items": n,
        "items_seen": int(np.unique(sequences.items).shape[0]),
        "pairs": int(sequences.items.shape[0]),
        "training_targets": int(np.maximum(split.train.lengths() - 1, 0).sum()),
    }
    return TrainedSequence(result.model, index, result, test, popularity, data)


def export_sequence(trained: TrainedSequence, out_dir: Path) -> dict[str, dict[str, Any]]:
    """Write ``item_ids.npy``, ``item_embeddings.npy``, ``model.onnx`` and the weights
    (``weights.safetensors``) into ``out_dir``.

    Returns:
        The manifest fields: ``params`` (``sequence_length``, ``top_k``, ``dim``, ``n_items``,
        ``layers``, ``heads``, ``seed``, ``epochs``, ...), ``metrics`` (``ndcg_at_10``,
        ``hit_rate_at_10``, ``mrr`` on the held-out items, the popularity baseline's with a
        ``popularity_`` prefix, ``valid_ndcg_at_10``, ``train_seconds``) and ``data``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, config = trained.model, trained.config
    np.save(out_dir / SEQUENCE_ITEM_IDS_FILE, trained.index.ids_by_index(), allow_pickle=False)
    embeddings = model.embeddings.detach().cpu().numpy().astype(np.float32)
    np.save(out_dir / SEQUENCE_EMBEDDINGS_FILE, embeddings, allow_pickle=False)
    export_onnx(model, out_dir / SEQUENCE_ONNX_FILE, trained.top_k)
    # The weights too, for the GPU rows (bench.gpu_sequence): safetensors, no pickle.
    save_file({name: tensor.detach().cpu().contiguous()
               for name, tensor in model.state_dict().items()}, out_dir / SEQUENCE_WEIGHTS_FILE)
    valid = trained.training.best_valid
    params: dict[str, Any] = {
        SEQUENCE_LENGTH: config.max_length,
        SEQUENCE_TOP_K: trained.top_k,
        "dim": config.dim,
        "n_items": len(trained.index),
        "layers": config.layers,
        "heads": config.heads,
        "dropout": config.dropout,
        "seed": config.seed,
        "epochs": len(trained.training.history),
        "best_epoch": trained.training.best_epoch,
        "max_epochs": config.epochs,
        "patience": config.patience,
        "min_epochs": config.min_epochs,
        "learning_rate": config.learning_rate,
        "weight_decay": config.weight_decay,
        "batch_size": config.batch_size,
        "objective": OBJECTIVE,
        "opset": OPSET,
        "model_file": SEQUENCE_ONNX_FILE,
    }
    metrics: dict[str, Any] = {
        "ndcg_at_10": trained.test.ndcg_at_10,
        "hit_rate_at_10": trained.test.hit_rate_at_10,
        "mrr": trained.test.mrr,
        "users": trained.test.users,
        "popularity_ndcg_at_10": trained.popularity.ndcg_at_10,
        "popularity_hit_rate_at_10": trained.popularity.hit_rate_at_10,
        "popularity_mrr": trained.popularity.mrr,
        "valid_ndcg_at_10": valid.ndcg_at_10 if valid is not None else float("nan"),
        "train_seconds": round(trained.training.seconds, 3),
    }
    return {"params": params, "metrics": metrics, "data": dict(trained.data)}
