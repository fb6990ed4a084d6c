"""Candidate union and score blending: pure numpy, one request row at a time.

Scores are brought to comparable [0, 1] scales before they are mixed:

* relevance: the ranker's logit through a sigmoid; when the ranker is unavailable, BM25 divided by
  the request's best BM25 score stands in for it;
* personalisation: the MF inner product, min-max scaled over the request's candidates (0 where the
  user has none: anonymous, unknown, or recall down);
* popularity: the catalog prior, already scaled to [0, 1].

``final = w_relevance * relevance + w_lexical * lexical + w_personal * personal
+ w_popularity * popularity``, where ``lexical`` is the scaled BM25 score. It keeps the evidence of
the (rewritten) query's exact terms beside the ranker's judgement of the raw query; when the
ranker is unavailable BM25 already is the relevance and ``w_lexical`` is not added again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Weights:
    """Blend weights (from settings)."""

    relevance: float = 1.0
    personal: float = 0.1
    popularity: float = 0.05
    lexical: float = 1.0


@dataclass
class Candidates:
    """Candidate catalog rows of one request with their first-stage signals.

    Attributes:
        rows: Catalog rows, unique.
        lexical: BM25 score per row (0 when not a lexical hit).
        personal: Raw MF score per row (nan when unknown).
    """

    rows: np.ndarray
    lexical: np.ndarray
    personal: np.ndarray

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def take(self, keep: np.ndarray) -> Candidates:
        """The subset selected by a boolean mask or index array."""
        return Candidates(self.rows[keep], self.lexical[keep], self.personal[keep])


def union(
    lexical_rows: np.ndarray,
    lexical_scores: np.ndarray,
    personal_rows: np.ndarray,
    personal_scores: np.ndarray,
    personal_only_rows: np.ndarray | None = None,
) -> Candidates:
    """Unite lexical hits with personalised candidates.

    Args:
        lexical_rows, lexical_scores: BM25 hits.
        personal_rows, personal_scores: Rows the MF model scored for this user (used as a feature
            for any candidate found among them).
        personal_only_rows: Rows of ``personal_rows`` to add as candidates in their own right
            (defaults to all of them).
    """
    extra = personal_rows if personal_only_rows is None else personal_only_rows
    rows = np.unique(np.concatenate([lexical_rows, extra]).astype(np.int64))
    lexical = np.zeros(rows.shape[0], dtype=np.float32)
    lexical[np.searchsorted(rows, lexical_rows)] = lexical_scores
    personal = np.full(rows.shape[0], np.nan, dtype=np.float32)
    pos = np.searchsorted(rows, personal_rows)
    found = (pos < rows.shape[0]) & (rows[np.minimum(pos, rows.shape[0] - 1)] == personal_rows)
    personal[pos[found]] = personal_scores[found]
    return Candidates(rows, lexical, personal)


def scale_max(values: np.ndarray) -> np.ndarray:
    """``values / max(values)`` for non-negative scores (all zeros stay zeros)."""
    top = float(values.max()) if values.size else 0.0
    return values / top if top > 0 else np.zeros_like(values)


def scale_min_max(values: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] over the finite values; nan becomes 0."""
    out = np.zeros(values.shape, dtype=np.float32)
    finite = np.isfinite(values)
    if finite.any():
        low, high = float(values[finite].min()), float(values[finite].max())
        out[finite] = (values[finite] - low) / (high - low) if high > low else 1.0
    return out


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    return (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)


def first_stage(c: Candidates, popularity: np.ndarray, w: Weights) -> np.ndarray:
    """Score before ranking: scaled BM25 as relevance, plus personalisation and popularity."""
    return (w.relevance * scale_max(c.lexical) + w.personal * scale_min_max(c.personal)
            + w.popularity * popularity).astype(np.float32)


def blend(
    c: Candidates, popularity: np.ndarray, w: Weights, relevance: np.ndarray | None
) -> np.ndarray:
    """Final score; ``relevance`` is the ranker's sigmoid relevance, or None to use BM25."""
    lexical = scale_max(c.lexical)
    if relevance is None:
        rel = w.relevance * lexical
    else:
        rel = w.relevance * relevance + w.lexical * lexical
    return (rel + w.personal * scale_min_max(c.personal) + w.popularity * popularity
            ).astype(np.float32)


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` best scores, best first (stable for ties)."""
    return np.argsort(-scores, kind="stable")[:n]
