"""Reranking evaluation: NDCG@10 and MRR of a scorer over held-out candidate lists.

Metrics come from ``shopserve.metrics``: NDCG@k with exponential gain ``2**grade - 1`` and log2
discount over the graded judgements; MRR is the reciprocal rank of the first *exact* item
(grade 3), because with complements counted as relevant almost every list would score 1.
Synonym queries (no word overlap with the title) are reported on their own: that is where a
cross-encoder must beat BM25.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import bm25s
import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from shopserve.metrics import mean_metric, mrr, ndcg_at_k
from shopserve.release import at_k
from shopserve.text import PairTokenizer
from training.ranker.modeling import mean_pooled
from training.ranker.pairs import MAX_GRADE, CandidateList, encode_pairs

ListScorer = Callable[[CandidateList], np.ndarray]
"""Scores of every candidate of one list, shape ``[C]`` (higher is better)."""

PairScorer = Callable[[dict[str, np.ndarray]], np.ndarray]
"""Scores of a batch of encoded pairs, shape ``[B]``."""

NDCG_K = 10


@dataclass(frozen=True)
class RerankReport:
    """Mean metrics over candidate lists, overall and per query kind.

    Attributes:
        ndcg: Mean NDCG@10 over all lists.
        mrr: Mean MRR (first exact item) over all lists.
        by_kind: Query kind -> {"ndcg", "mrr", "queries"}.
        queries: Number of lists evaluated.
        per_query: NDCG@10 of each list, in list order (NaN for a list with no relevant item):
            what a paired comparison of two models on the same lists needs (the guard's
            standard error). Not part of :meth:`as_dict`.
    """

    ndcg: float
    mrr: float
    by_kind: dict[str, dict[str, float]]
    queries: int
    per_query: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        # Rows read back from JSON (the pipeline stores them with ``asdict``) bring a list.
        object.__setattr__(self, "per_query", tuple(float(v) for v in self.per_query))

    def as_dict(self) -> dict[str, float]:
        """Flat metrics for a manifest: ``ndcg_at_10``, ``mrr``, ``ndcg_at_10_synonym``, ...

        Keys in the one spelling of :mod:`shopserve.release`.
        """
        ndcg = at_k("ndcg", NDCG_K)
        out = {ndcg: self.ndcg, "mrr": self.mrr, "queries": float(self.queries)}
        for kind, values in self.by_kind.items():
            out[f"{ndcg}_{kind}"] = values["ndcg"]
            out[f"mrr_{kind}"] = values["mrr"]
        return out


def rerank(lists: Sequence[CandidateList], scorer: ListScorer) -> RerankReport:
    """Rerank every list by ``scorer`` and average NDCG@10 and MRR, overall and by kind.

    Ties are broken by list position, which ``candidate_lists`` shuffles, so a constant scorer
    earns a random ranking's score rather than an oracle's.
    """
    rankings: list[np.ndarray] = []
    for cands in lists:
        scores = np.asarray(scorer(cands), dtype=np.float64).reshape(-1)
        if scores.shape[0] != len(cands.item_ids):
            raise ValueError(f"scorer returned {scores.shape[0]} scores for {len(cands.item_ids)}")
        rankings.append(cands.item_ids[np.argsort(-scores, kind="stable")])

    def summary(idx: Sequence[int]) -> dict[str, float]:
        ranks = [rankings[i] for i in idx]
        graded = [lists[i].relevance() for i in idx]
        exact = [{k: 1.0 for k, g in rel.items() if g >= MAX_GRADE} for rel in graded]
        return {
            "ndcg": mean_metric(ndcg_at_k, ranks, graded, NDCG_K),
            "mrr": mean_metric(lambda r, rel, k: mrr(r, rel), ranks, exact, NDCG_K),
            "queries": float(len(idx)),
        }

    overall = summary(range(len(lists)))
    kinds = sorted({c.query.kind for c in lists})
    by_kind = {
        kind: summary([i for i, c in enumerate(lists) if c.query.kind == kind]) for kind in kinds
    }
    per_query = tuple(ndcg_at_k(r, c.relevance(), NDCG_K) for r, c in zip(rankings, lists, strict=True))
    return RerankReport(overall["ndcg"], overall["mrr"], by_kind, len(lists), per_query)


def cross_encoder_scorer(
    tokenizer: PreTrainedTokenizerBase, pair_scorer: PairScorer, max_length: int
) -> ListScorer:
    """A list scorer that sends each candidate list as one batch, as the transformer does."""
    pair_tokenizer = PairTokenizer.from_hf(tokenizer)

    def score(cands: CandidateList) -> np.ndarray:
        batch = encode_pairs(
            pair_tokenizer, [cands.query.text] * len(cands.titles), cands.titles, max_length
        )
        return pair_scorer(batch)

    return score


_TOKEN = re.compile(r"\w+", re.UNICODE)


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class Bm25Scorer:
    """BM25 (``bm25s``, Lucene variant) over the whole catalog's titles, read per candidate.

    IDF comes from the full catalog, as the transformer's BM25 would compute it, not from the
    few candidates of one list.
    """

    def __init__(self, item_ids: np.ndarray, titles: Sequence[str]) -> None:
        self._row = {int(item): row for row, item in enumerate(item_ids)}
        self._retriever = bm25s.BM25()
        self._retriever.index([_tokens(t) for t in titles], show_progress=False)

    def __call__(self, cands: CandidateList) -> np.ndarray:
        """BM25 score of every candidate's title for the list's query (0 for unknown words)."""
        vocab = self._retriever.vocab_dict
        known = [t for t in _tokens(cands.query.text) if t in vocab]
        if not known:
            return np.zeros(len(cands.item_ids))
        scores = self._retriever.get_scores(known)
        return np.asarray([scores[self._row[int(i)]] for i in cands.item_ids])


def bi_encoder_scorer(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_length: int = 64
) -> ListScorer:
    """Zero-shot baseline: cosine of mean-pooled untouched MiniLM embeddings of query and title."""

    def embed(texts: list[str]) -> np.ndarray:
        enc = tokenizer(texts, padding="longest", truncation=True, max_length=max_length,
                        return_tensors="np")
        return mean_pooled(model, {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()})

    def score(cands: CandidateList) -> np.ndarray:
        vectors = embed([cands.query.text, *cands.titles])
        return vectors[1:] @ vectors[0]

    return score
