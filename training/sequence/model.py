"""SASRec (Kang & McAuley, 2018): causal self-attention over a shopper's latest items.

The architecture: item embeddings (index 0 the padding, kept zero) scaled by ``sqrt(dim)`` plus
learned positional embeddings, dropout, ``layers`` pre-norm Transformer blocks (multi-head causal
self-attention and a GELU feed-forward, each in a residual branch), a final LayerNorm. The hidden
state at position ``t`` summarises the items up to ``t``; the score of item ``i`` as the next one
is its dot product with ``E[i]``, the *same* embedding table as the input (shared input and output
embeddings, as in SASRec), which is what lets the serving side score any item from
``item_embeddings.npy`` and the session vector.

The objective is the **full softmax cross-entropy** over every item at every position, not
SASRec's binary cross-entropy with one sampled negative: Petrov & Macdonald ("gSASRec", RecSys
2023) show that BCE with few negatives makes SASRec over-confident on popular items and that CE
over the catalog (or many negatives) gives most of the gap to BERT4Rec back; the catalogs here (a
few thousand items) make the full softmax cheap, so nothing is sampled.

The blocks are written out (rather than ``torch.nn.TransformerEncoderLayer``) so the attention
mask is explicit: a position sees itself and the earlier positions that are not padding. Letting
every position see itself keeps the softmax defined on all-padding prefixes without a masking
special case, and the graph exports to plain ONNX ops.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training.sequence.data import PADDING


class _Block(nn.Module):
    """One pre-norm Transformer block: causal multi-head self-attention, then a feed-forward."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.attention_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.feed_forward_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        self.dropout = nn.Dropout(dropout)
        self.attention_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        """``x`` [B, L, D]; ``blocked`` bool [B, 1, L, L], True where a query may not see a key."""
        b, length, dim = x.shape
        head_dim = dim // self.heads
        q, k, v = (
            t.reshape(b, length, self.heads, head_dim).transpose(1, 2)
            for t in self.qkv(self.attention_norm(x)).chunk(3, dim=-1)
        )
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(head_dim)
        weights = self.attention_dropout(torch.softmax(scores.masked_fill(blocked, -math.inf), -1))
        attended = (weights @ v).transpose(1, 2).reshape(b, length, dim)
        x = x + self.dropout(self.out(attended))
        return x + self.dropout(self.feed_forward(self.feed_forward_norm(x)))


class SASRec(nn.Module):
    """The sequence model: item sequences ``[B, L]`` -> hidden states ``[B, L, D]``.

    Args:
        n_items: Items, indexed ``1..n_items`` (``0`` is the padding).
        max_length: The fixed input length ``L`` (one positional embedding per position).
        dim: Hidden size ``D`` (also the item embedding size).
        layers: Transformer blocks.
        heads: Attention heads per block (must divide ``dim``).
        dropout: Dropout on the embeddings, attention weights and residual branches.
    """

    def __init__(
        self, n_items: int, max_length: int, dim: int = 64, layers: int = 2, heads: int = 2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if n_items < 1 or max_length < 1:
            raise ValueError("n_items and max_length must be >= 1")
        self.n_items = n_items
        self.max_length = max_length
        self.dim = dim
        self.item_embedding = nn.Embedding(n_items + 1, dim, padding_idx=PADDING)
        self.position_embedding = nn.Parameter(torch.empty(max_length, dim))
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        # Small normal initialisation (BERT's 0.02, RecBole's SASRec): with shared output
        # embeddings, N(0, 1) rows would start the softmax far from uniform.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[PADDING].zero_()

    @property
    def embeddings(self) -> torch.Tensor:
        """The item embedding table ``E`` [n_items + 1, D]; row 0 (the padding) is zero."""
        return self.item_embedding.weight

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, L, D] of left-padded item sequences ``sequence`` int64 [B, L]."""
        if sequence.shape[1] != self.max_length:
            raise ValueError(f"sequences must have length {self.max_length}, got "
                             f"{sequence.shape[1]}")
        present = sequence != PADDING
        x = self.item_embedding(sequence) * math.sqrt(self.dim) + self.position_embedding
        x = self.dropout(x) * present.unsqueeze(-1).to(x.dtype)
        length = self.max_length
        position = torch.arange(length, device=sequence.device)
        future = position.unsqueeze(0) > position.unsqueeze(1)  # [L(query), L(key)]
        itself = position.unsqueeze(0) == position.unsqueeze(1)
        blocked = (future | ~present.unsqueeze(1)) & ~itself  # [B, L, L]
        blocked = blocked.unsqueeze(1)
        for block in self.blocks:
            x = block(x, blocked)
        return self.norm(x)

    def session(self, sequence: torch.Tensor) -> torch.Tensor:
        """The session vector [B, D]: the hidden state at the last (newest) position."""
        return self(sequence)[:, -1, :]

    def scores(self, sequence: torch.Tensor) -> torch.Tensor:
        """Next-item scores [B, n_items + 1] (column 0 is the padding, never a candidate)."""
        return self.session(sequence) @ self.embeddings.T

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean full-softmax cross-entropy of every target (positions with a target only).

        Args:
            inputs: int64 [B, L] left-padded windows.
            targets: int64 [B, L], the next item at each position, :data:`PADDING` where none.
        """
        hidden = self(inputs)
        where = targets != PADDING
        # Logits over items 1..n only: the padding is never a class.
        logits = hidden[where] @ self.embeddings[1:].T
        return nn.functional.cross_entropy(logits, targets[where] - 1)
