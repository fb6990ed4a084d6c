"""Retrieval quality of the semantic path alone: Recall@K of exact search over the item embeddings,
on all held-out queries and per query kind, beside a plain BM25 over the same item texts.

Recall@K here is the stack evaluation's (``pipeline.lifecycle.evaluate_stack``): the grade-3 items
of the query over the *whole* catalog (``Dataset.grade``, not only the judged pool) found in the
top K, over ``min(#grade-3, K)``, so a perfect list scores 1 even for a query with hundreds of
exact items. Queries without any grade-3 item are left out. Kinds are whatever
``training.data.generator.QUERY_KINDS`` holds in the data set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import bm25s
import numpy as np

from shopserve.metrics import mean_defined, recall_at_k
from training.data.generator import Dataset
from training.semantic.index import exact_top_k

_WORD = re.compile(r"\w+", re.UNICODE)

#: The cut-offs measured.
KS: tuple[int, ...] = (10, 50)


def exact_items(dataset: Dataset, query_ids: np.ndarray) -> list[set[int]]:
    """Per query, every catalog item of grade 3 for it."""
    items = dataset.items.item_id
    grades = dataset.grade(np.asarray(query_ids, np.int64)[:, None], items[None, :])
    return [set(items[row == 3].tolist()) for row in grades]


def recall_by_kind(
    dataset: Dataset,
    query_ids: np.ndarray,
    rankings: Sequence[np.ndarray],
    ks: Sequence[int] = KS,
) -> dict[str, dict[str, float]]:
    """``{"recall_at_<k>": {"all": r, <kind>: r, ...}, "queries": {"all": n, <kind>: n}}``."""
    query_ids = np.asarray(query_ids, np.int64)
    kinds = dataset.queries.kind[dataset.queries.query_id.searchsorted(query_ids)]
    relevant = exact_items(dataset, query_ids)
    out: dict[str, dict[str, float]] = {}
    counted = np.array([bool(r) for r in relevant])
    for k in ks:
        values = np.array([recall_at_k(ranked, dict.fromkeys(rel, 1.0), k, capped=True)
                           if rel else np.nan for ranked, rel in zip(rankings, relevant, strict=True)])
        out[f"recall_at_{k}"] = {"all": mean_defined(values), **{
            str(kind): mean_defined(values[kinds == kind]) for kind in np.unique(kinds)}}
    out["queries"] = {"all": int(counted.sum()),
                      **{str(kind): int(counted[kinds == kind].sum()) for kind in np.unique(kinds)}}
    return out


def semantic_rankings(
    item_ids: np.ndarray, item_vectors: np.ndarray, query_vectors: np.ndarray, k: int
) -> list[np.ndarray]:
    """Per query, the ``k`` item ids nearest by exact inner product, best first."""
    _, rows = exact_top_k(item_vectors, query_vectors, k)
    return [np.asarray(item_ids)[r] for r in rows]


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def bm25_rankings(
    item_ids: np.ndarray, item_texts: Sequence[str], queries: Sequence[str], k: int
) -> list[np.ndarray]:
    """Per query, the top ``k`` item ids of a plain BM25 (``bm25s``, lower-cased words) over the
    item texts: the reference the semantic path is meant to add to, not the transformer's
    lexical stage (which rewrites the query first). Items scoring 0 are not retrieved."""
    retriever = bm25s.BM25()
    retriever.index([_words(t) for t in item_texts], show_progress=False)
    vocab = retriever.vocab_dict
    ids = np.asarray(item_ids)
    out = []
    for query in queries:
        known = [w for w in _words(query) if w in vocab]
        if not known:
            out.append(ids[:0])
            continue
        scores = np.asarray(retriever.get_scores(known))
        top = np.argsort(-scores, kind="stable")[:k]
        out.append(ids[top[scores[top] > 0]])
    return out


def compare(
    dataset: Dataset, query_ids: np.ndarray, rankings: Mapping[str, Sequence[np.ndarray]],
    ks: Sequence[int] = KS,
) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`recall_by_kind` of several rankings of the same queries, by name."""
    return {name: recall_by_kind(dataset, query_ids, ranked, ks) for name, ranked in rankings.items()}
