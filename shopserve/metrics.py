"""Ranking metrics as pure functions over one ranked list, plus batch means.

Conventions (libraries differ, so they are spelled out):

* ``ranked`` is the list of item ids in the order shown, best first; only its first ``k`` count.
* ``relevance`` maps item id -> graded gain (0 = irrelevant; e.g. 3 exact, 2 substitute,
  1 complement). For binary tasks use gain 1 for every held-out item.
* NDCG@k uses the **exponential gain** ``2**rel - 1`` and the **log2 discount** ``1/log2(rank+1)``
  with ranks starting at 1 (Järvelin & Kekäläinen; the form used by LightGBM, TREC ``ndcg_cut``
  with graded qrels differs only in the gain). The ideal DCG sorts all judged gains, so NDCG is
  1 exactly when the top k is ideally ordered, 0 when nothing relevant is in the top k.
* Every metric lies in [0, 1]; a query with no relevant item yields ``nan`` and is left out of
  means (``mean_metric``), so it neither rewards nor punishes a model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

Relevance = Mapping[int, float]


def _top(ranked: Sequence[int] | np.ndarray, k: int) -> list[int]:
    if k <= 0:
        raise ValueError("k must be positive")
    return [int(x) for x in list(ranked)[:k]]


def dcg_at_k(ranked: Sequence[int] | np.ndarray, relevance: Relevance, k: int) -> float:
    """Discounted cumulative gain of the top ``k``: sum of ``(2**rel - 1) / log2(rank + 1)``."""
    return float(
        sum(
            (2.0 ** relevance.get(item, 0.0) - 1.0) / np.log2(rank + 2)
            for rank, item in enumerate(_top(ranked, k))
        )
    )


def ndcg_at_k(ranked: Sequence[int] | np.ndarray, relevance: Relevance, k: int) -> float:
    """NDCG@k in [0, 1] with graded gains (see module docstring); nan with no relevant item."""
    if k <= 0:
        raise ValueError("k must be positive")
    ideal = sorted((g for g in relevance.values() if g > 0), reverse=True)[:k]
    if not ideal:
        return float("nan")
    idcg = sum((2.0**g - 1.0) / np.log2(rank + 2) for rank, g in enumerate(ideal))
    return dcg_at_k(ranked, relevance, k) / idcg


def recall_at_k(ranked: Sequence[int] | np.ndarray, relevance: Relevance, k: int) -> float:
    """Share of relevant items (gain > 0) found in the top ``k``; nan with no relevant item."""
    relevant = {i for i, g in relevance.items() if g > 0}
    if not relevant:
        return float("nan")
    return len(relevant.intersection(_top(ranked, k))) / len(relevant)


def hit_rate_at_k(ranked: Sequence[int] | np.ndarray, relevance: Relevance, k: int) -> float:
    """1 if any relevant item is in the top ``k``, else 0; nan with no relevant item."""
    if not any(g > 0 for g in relevance.values()):
        return float("nan")
    return float(any(relevance.get(i, 0.0) > 0 for i in _top(ranked, k)))


def mrr(ranked: Sequence[int] | np.ndarray, relevance: Relevance, k: int | None = None) -> float:
    """Reciprocal rank of the first relevant item (0 if none within ``k``); nan with none judged."""
    if not any(g > 0 for g in relevance.values()):
        return float("nan")
    items = list(ranked) if k is None else _top(ranked, k)
    for rank, item in enumerate(items, start=1):
        if relevance.get(int(item), 0.0) > 0:
            return 1.0 / rank
    return 0.0


Metric = Callable[[Sequence[int] | np.ndarray, Relevance, int], float]


def mean_metric(
    metric: Metric, rankings: Iterable[Sequence[int] | np.ndarray], relevances: Iterable[Relevance],
    k: int,
) -> float:
    """Mean of ``metric`` over queries, skipping queries with no relevant item (nan)."""
    values = [metric(r, rel, k) for r, rel in zip(rankings, relevances, strict=True)]
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")
