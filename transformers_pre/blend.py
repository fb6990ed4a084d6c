"""Candidate union and score blending: pure numpy, one request row at a time.

Scores are brought to comparable [0, 1] scales before they are mixed:

* relevance: the ranker's logit through a sigmoid; when the ranker is unavailable, the scaled
  BM25 score stands in for it;
* lexical: BM25 divided by the query's ideal score (what a title holding every query term once
  would score: the share of the query's evidence a title matches; see
  ``SEARCH_LEXICAL_SCALE``), or by the request's best BM25 score;
* personalisation: the MF inner product, min-max scaled over the request's candidates (0 where the
  user has none: anonymous, unknown, or recall down);
* popularity: the catalog prior, already scaled to [0, 1];
* session: the sequence model's score of the item after the shopper's recent items (its session
  vector's dot product with the item's embedding), min-max scaled over the candidates (0 without
  recent items, or with the sequence model down);
* semantic: the cosine similarity of the query's and the item's bi-encoder embeddings, min-max
  scaled over the candidates (0 without a semantic path, or with it down).

``final = w_relevance * relevance + w_lexical * lexical + w_semantic * semantic
+ w_personal * personal + w_popularity * popularity + w_session * session``, where ``lexical`` is
the scaled BM25 score. ``lexical`` keeps the evidence of the (rewritten) query's exact terms beside
the ranker's judgement of the raw query; when the ranker is unavailable BM25 already is the
relevance and ``w_lexical`` is not added again. A search's ``w_semantic`` shrinks as its best
lexical hit covers more of the query (:func:`gate_semantic`): meaning decides where words do not.
:func:`blend_parts` gives each weighted term apart (the ``explain`` answer); their sum is the
final score.

The same terms without the ranker are the **pre-ranking** (:func:`first_stage`): a cheap score
of the whole candidate union from lexical, semantic, personal, popularity and session evidence,
whose best ``rank_candidates`` (the cascade's K) are all the ranker scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import IntFlag

import numpy as np


class Source(IntFlag):
    """Which retrieval source found a candidate (several may have)."""

    LEXICAL = 1
    """BM25 over titles and attributes."""
    RECALL = 2
    """The MF recall predictor's candidates for the shopper."""
    SEQUENCE = 4
    """The sequence model's next items after the shopper's recent items."""
    POPULAR = 8
    """The popularity backfill."""
    SEMANTIC = 16
    """The semantic path: the nearest items to the query's bi-encoder embedding."""

    def names(self) -> list[str]:
        """Lower-case names of the sources set, in declaration order."""
        return [str(s.name).lower() for s in Source if s in self]


#: The weighted terms of a final score, in the order they are summed.
PARTS = ("relevance", "lexical", "semantic", "personal", "popularity", "session")


@dataclass(frozen=True)
class Weights:
    """Blend weights (from settings)."""

    relevance: float = 1.0
    personal: float = 0.1
    popularity: float = 0.05
    lexical: float = 1.0
    session: float = 0.2
    semantic: float = 0.5


@dataclass
class Candidates:
    """Candidate catalog rows of one request with their first-stage signals.

    Attributes:
        rows: Catalog rows, unique.
        lexical: BM25 score per row (0 when not a lexical hit).
        personal: Raw MF score per row (nan when unknown).
        sources: :class:`Source` flags per row.
        session: Raw sequence-model score per row (nan when unknown or without a session).
        semantic: Cosine similarity of the query's and the row's embeddings (nan without a
            semantic path).
        lexical_reference: What BM25 scores are divided by to bring them to [0, 1]: the
            query's own ideal score (:meth:`transformers_pre.catalog.Catalog.lexical_hits`), so
            that a title matching only a little of the query scores little; 0: the request's
            best BM25 score (the best hit scores 1, however little of the query it matches).
    """

    rows: np.ndarray
    lexical: np.ndarray
    personal: np.ndarray
    sources: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint8))
    session: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    semantic: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    lexical_reference: float = 0.0

    def __post_init__(self) -> None:
        n = self.rows.shape[0]
        if self.sources.shape[0] != n:
            self.sources = np.zeros(n, dtype=np.uint8)
        if self.session.shape[0] != n:
            self.session = np.full(n, np.nan, dtype=np.float32)
        if self.semantic.shape[0] != n:
            self.semantic = np.full(n, np.nan, dtype=np.float32)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def take(self, keep: np.ndarray) -> Candidates:
        """The subset selected by a boolean mask or index array."""
        return replace(self, **{name: getattr(self, name)[keep] for name in ROW_FIELDS})

    def with_session(self, session: np.ndarray) -> Candidates:
        """The same candidates with raw sequence-model scores per row."""
        return replace(self, session=session.astype(np.float32, copy=False))

    def with_semantic(self, semantic: np.ndarray) -> Candidates:
        """The same candidates with the query's cosine similarity to each row."""
        return replace(self, semantic=semantic.astype(np.float32, copy=False))


#: The fields of :class:`Candidates` that hold one value per row.
ROW_FIELDS = ("rows", "lexical", "personal", "sources", "session", "semantic")


def union(
    lexical_rows: np.ndarray,
    lexical_scores: np.ndarray,
    personal_rows: np.ndarray,
    personal_scores: np.ndarray,
    personal_only_rows: np.ndarray | None = None,
    lexical_reference: float = 0.0,
) -> Candidates:
    """Unite lexical hits with personalised candidates.

    Args:
        lexical_rows, lexical_scores: BM25 hits.
        lexical_reference: See :attr:`Candidates.lexical_reference`.
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
    sources = np.zeros(rows.shape[0], dtype=np.uint8)
    sources[np.searchsorted(rows, lexical_rows)] |= Source.LEXICAL
    sources[np.searchsorted(rows, extra.astype(np.int64))] |= Source.RECALL
    return Candidates(rows, lexical, personal, sources, lexical_reference=lexical_reference)


def add_rows(c: Candidates, rows: np.ndarray, source: Source) -> Candidates:
    """``c`` with ``rows`` added (no lexical or MF score of their own) and marked as found by
    ``source``."""
    merged = np.union1d(c.rows, rows.astype(np.int64))
    at = np.searchsorted(merged, c.rows)
    lexical = np.zeros(merged.shape[0], dtype=np.float32)
    personal = np.full(merged.shape[0], np.nan, dtype=np.float32)
    session = np.full(merged.shape[0], np.nan, dtype=np.float32)
    semantic = np.full(merged.shape[0], np.nan, dtype=np.float32)
    sources = np.zeros(merged.shape[0], dtype=np.uint8)
    lexical[at], personal[at], session[at], sources[at] = c.lexical, c.personal, c.session, c.sources
    semantic[at] = c.semantic
    sources[np.searchsorted(merged, rows)] |= source
    return Candidates(merged, lexical, personal, sources, session, semantic, c.lexical_reference)


def scale_max(values: np.ndarray) -> np.ndarray:
    """``values / max(values)`` for non-negative scores (all zeros stay zeros)."""
    top = float(values.max()) if values.size else 0.0
    return values / top if top > 0 else np.zeros_like(values)


def scale_lexical(c: Candidates) -> np.ndarray:
    """BM25 scores on [0, 1]: over :attr:`Candidates.lexical_reference` (capped at 1) when it is
    set, else over the request's best (:func:`scale_max`)."""
    if c.lexical_reference > 0:
        return np.minimum(c.lexical / np.float32(c.lexical_reference), 1.0).astype(np.float32)
    return scale_max(c.lexical)


def lexical_coverage(scores: np.ndarray, reference: float) -> float:
    """How much of the query its best lexical hit matches: the best BM25 score over the query's
    ideal score (:attr:`Candidates.lexical_reference`), capped at 1; 0 without hits or without an
    ideal score."""
    if reference <= 0 or scores.size == 0:
        return 0.0
    return float(min(float(scores.max()) / reference, 1.0))


def gate_semantic(w: Weights, coverage: float, gate: float) -> Weights:
    """The request's weights with the semantic weight lowered by how well words alone answer it:
    ``w_semantic * (1 - gate * coverage)``. A query some title matches in full (an exact, a
    rewritten synonym or typo query: coverage near 1) keeps its lexical order, while a described
    need, whose words match little of any title, gets the whole semantic weight. ``gate`` 0 keeps
    the weight constant."""
    if gate <= 0 or coverage <= 0:
        return w
    return replace(w, semantic=w.semantic * (1.0 - min(gate, 1.0) * coverage))


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
    """Score before ranking (the cascade's pre-ranking): scaled BM25 as relevance, plus the
    semantic similarity, personalisation, popularity and session."""
    return total(first_stage_parts(c, popularity, w))


def first_stage_parts(c: Candidates, popularity: np.ndarray, w: Weights
                      ) -> dict[str, np.ndarray]:
    """The weighted terms of :func:`first_stage` (see :data:`PARTS`)."""
    zero = np.zeros(len(c), dtype=np.float32)
    return {"relevance": (w.relevance * scale_lexical(c)).astype(np.float32), "lexical": zero,
            **_shared_parts(c, popularity, w)}


def blend(
    c: Candidates, popularity: np.ndarray, w: Weights, relevance: np.ndarray | None
) -> np.ndarray:
    """Final score; ``relevance`` is the ranker's sigmoid relevance, or None to use BM25."""
    return total(blend_parts(c, popularity, w, relevance))


def blend_parts(c: Candidates, popularity: np.ndarray, w: Weights, relevance: np.ndarray | None
                ) -> dict[str, np.ndarray]:
    """The weighted terms of :func:`blend` (see :data:`PARTS`)."""
    lexical = scale_lexical(c)
    if relevance is None:
        rel = (w.relevance * lexical).astype(np.float32)
        lex = np.zeros(len(c), dtype=np.float32)
    else:
        rel = (w.relevance * relevance).astype(np.float32)
        lex = (w.lexical * lexical).astype(np.float32)
    return {"relevance": rel, "lexical": lex, **_shared_parts(c, popularity, w)}


def recommend_parts(c: Candidates, popularity: np.ndarray, w: Weights) -> dict[str, np.ndarray]:
    """The weighted terms of a recommendation (no query: no relevance, no lexical)."""
    zero = np.zeros(len(c), dtype=np.float32)
    return {"relevance": zero, "lexical": zero, **_shared_parts(c, popularity, w)}


def _shared_parts(c: Candidates, popularity: np.ndarray, w: Weights) -> dict[str, np.ndarray]:
    return {"semantic": (w.semantic * scale_min_max(c.semantic)).astype(np.float32),
            "personal": (w.personal * scale_min_max(c.personal)).astype(np.float32),
            "popularity": (w.popularity * popularity).astype(np.float32),
            "session": (w.session * scale_min_max(c.session)).astype(np.float32)}


def total(parts: dict[str, np.ndarray]) -> np.ndarray:
    """The final score: the parts summed in :data:`PARTS` order (float32)."""
    out = parts[PARTS[0]].astype(np.float32, copy=True)
    for name in PARTS[1:]:
        out += parts[name]
    return out


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` best scores, best first (stable for ties)."""
    return np.argsort(-scores, kind="stable")[:n]
