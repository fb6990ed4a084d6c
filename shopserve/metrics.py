"""Ranking metrics: pure functions over one ranked list, batch means, and the bulk path.

Conventions (libraries differ, so they are spelled out):

* ``ranked`` is the list of item ids in the order shown, best first; only its first ``k`` count.
* ``relevance`` maps item id -> graded gain (0 = irrelevant; e.g. 3 exact, 2 substitute,
  1 complement). For binary tasks use gain 1 for every held-out item.
* NDCG@k uses the **exponential gain** ``2**rel - 1`` and the **log2 discount** ``1/log2(rank+1)``
  with ranks starting at 1 (Järvelin & Kekäläinen; the form used by LightGBM, TREC ``ndcg_cut``
  with graded qrels differs only in the gain). The ideal DCG sorts all judged gains, so NDCG is
  1 exactly when the top k is ideally ordered, 0 when nothing relevant is in the top k.
* Recall@k divides the relevant items found in the top k by the relevant items, or with
  ``capped=True`` by ``min(relevant, k)`` (Liang et al.'s VAE-CF protocol), so that a perfect list
  scores 1 even when more than k items are relevant.
* Every metric lies in [0, 1]; a query with no relevant item yields ``nan`` and is left out of
  means (``mean_metric``), so it neither rewards nor punishes a model.

The **bulk path** (``*_batch`` and :func:`held_out_metrics`) computes the same metrics for many
queries at once over gain matrices: row ``u`` of ``ranked_gains`` holds the gain of the item at
each rank of query ``u`` (0 for unjudged items and padding), row ``u`` of ``ideal_gains`` every
judged gain of that query (any order, zero-padded). It agrees with the per-list functions up to
floating-point rounding (the discounts are multiplied, not divided). Offline recall evaluation,
which scores every user against every item, goes through :func:`held_out_metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import scipy.sparse as sp

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


def recall_at_k(
    ranked: Sequence[int] | np.ndarray, relevance: Relevance, k: int, *, capped: bool = False
) -> float:
    """Share of relevant items (gain > 0) found in the top ``k``; nan with no relevant item.

    With ``capped``, the denominator is ``min(relevant, k)`` (see the module docstring).
    """
    relevant = {i for i, g in relevance.items() if g > 0}
    if not relevant:
        return float("nan")
    found = len(relevant.intersection(_top(ranked, k)))
    return found / (min(len(relevant), k) if capped else len(relevant))


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


# --------------------------------------------------------------------------------------------------
# The bulk path: many queries at once over gain matrices.
# --------------------------------------------------------------------------------------------------


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def _check_k(k: int) -> None:
    if k <= 0:
        raise ValueError("k must be positive")


def ndcg_at_k_batch(ranked_gains: np.ndarray, ideal_gains: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k of every row, in [0, 1]; nan for a row with no positive ideal gain.

    Args:
        ranked_gains: [Q, L] graded gain of the item at each rank (best first); ranks past ``L``
            count as unjudged.
        ideal_gains: [Q, M] every judged gain of each query, any order, zero-padded.
        k: Cut-off.

    Exponential gain ``2**g - 1`` and log2 discount, as :func:`ndcg_at_k`.
    """
    _check_k(k)
    ranked = np.asarray(ranked_gains, dtype=np.float64)[:, :k]
    ideal = -np.sort(-np.clip(np.asarray(ideal_gains, dtype=np.float64), 0.0, None), axis=1)[:, :k]
    discounts = _discounts(k)
    dcg = ((2.0**ranked - 1.0) * discounts[: ranked.shape[1]]).sum(axis=1)
    idcg = ((2.0**ideal - 1.0) * discounts[: ideal.shape[1]]).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(idcg > 0, dcg / idcg, np.nan)


def recall_at_k_batch(
    ranked_gains: np.ndarray, relevant: np.ndarray, k: int, *, capped: bool = False
) -> np.ndarray:
    """Recall@k of every row (gain > 0 counts as found); nan for a row with no relevant item.

    Args:
        ranked_gains: [Q, L] gain of the item at each rank, as :func:`ndcg_at_k_batch`.
        relevant: [Q] number of relevant items of each query (found or not).
        k: Cut-off.
        capped: Divide by ``min(relevant, k)``, as :func:`recall_at_k`.
    """
    _check_k(k)
    found = (np.asarray(ranked_gains)[:, :k] > 0).sum(axis=1)
    relevant = np.asarray(relevant)
    denominator = np.minimum(relevant, k) if capped else relevant
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(relevant > 0, found / np.maximum(denominator, 1), np.nan)


def hit_rate_at_k_batch(ranked_gains: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """1 where a relevant item is in a row's top ``k``, else 0; nan for a row with none judged."""
    _check_k(k)
    hit = (np.asarray(ranked_gains)[:, :k] > 0).any(axis=1).astype(np.float64)
    return np.where(np.asarray(relevant) > 0, hit, np.nan)


def mean_defined(values: np.ndarray | Sequence[float]) -> float:
    """Mean over the queries whose metric is defined (not nan); nan when none is."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(np.mean(finite)) if finite.size else float("nan")


def graded_gains(
    rankings: Sequence[Sequence[int] | np.ndarray], relevances: Sequence[Relevance], depth: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gain matrices of per-list rankings and judgements, for the ``*_batch`` functions.

    Args:
        rankings: Item ids per query, best first.
        relevances: Item id -> gain per query.
        depth: Ranks kept (the largest cut-off needed).

    Returns:
        ``(ranked_gains [Q, depth], ideal_gains [Q, M], relevant [Q])``.
    """
    _check_k(depth)
    width = max([1, *(len(r) for r in relevances)])
    ranked = np.zeros((len(rankings), depth))
    ideal = np.zeros((len(rankings), width))
    relevant = np.zeros(len(rankings), dtype=np.int64)
    for q, (items, rel) in enumerate(zip(rankings, relevances, strict=True)):
        top = _top(items, depth)
        ranked[q, : len(top)] = [rel.get(i, 0.0) for i in top]
        gains = [g for g in rel.values() if g > 0]
        ideal[q, : len(gains)] = gains
        relevant[q] = len(gains)
    return ranked, ideal, relevant


def top_k_columns(scores: np.ndarray, k: int, exclude: sp.spmatrix | None = None) -> np.ndarray:
    """Column indices of each row's ``k`` highest scores, best first.

    Args:
        scores: [Q, N] scores (copied, never modified).
        k: Columns kept; must be smaller than ``N``.
        exclude: [Q, N] sparse matrix whose stored cells are never chosen (e.g. training items).
    """
    scores = np.array(scores, dtype=np.float32, copy=True)
    if exclude is not None:
        scores[exclude.nonzero()] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, axis=1)


def held_out_gains(columns: np.ndarray, held_out: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Binary gains of ranked columns against held-out interactions.

    Args:
        columns: [Q, K] ranked column indices (from :func:`top_k_columns`).
        held_out: [Q, N] CSR matrix whose stored cells are each row's held-out items.

    Returns:
        ``(ranked_gains [Q, K], relevant [Q])``: 1 where the ranked item is held out, and the
        number of held-out items of each row.
    """
    gains = np.zeros(columns.shape)
    for q in range(columns.shape[0]):
        held = held_out.indices[held_out.indptr[q]: held_out.indptr[q + 1]]
        gains[q] = np.isin(columns[q], held)
    return gains, np.diff(held_out.indptr)


def binary_ideal(relevant: np.ndarray, k: int) -> np.ndarray:
    """[Q, k] ideal gains of binary judgements: ``min(relevant, k)`` ones per row."""
    return (np.arange(k) < np.asarray(relevant)[:, None]).astype(np.float64)


@dataclass(frozen=True)
class HeldOutMetrics:
    """Mean top-k quality over the users with held-out items (binary gains).

    Attributes:
        ks: The cut-offs, ascending.
        recall: Recall@k per cut-off, denominator ``min(|held out|, k)``.
        ndcg: NDCG@k per cut-off (gain 1 per held-out item, log2 discount).
        hit_rate: HitRate@k per cut-off.
        users: Users with at least one held-out item (the others are left out).
    """

    ks: tuple[int, ...]
    recall: tuple[float, ...]
    ndcg: tuple[float, ...]
    hit_rate: tuple[float, ...]
    users: int

    def at(self, metric: str, k: int) -> float:
        """One value: ``at("ndcg", 10)``."""
        return float(getattr(self, metric)[self.ks.index(k)])


def held_out_metrics(
    score_blocks: Iterable[tuple[np.ndarray, np.ndarray]],
    exclude: sp.csr_matrix,
    held_out: sp.csr_matrix,
    ks: Sequence[int],
) -> HeldOutMetrics:
    """Recall, NDCG and HitRate at every cut-off from dense score blocks, excluded items skipped.

    Args:
        score_blocks: ``(user_rows, scores [len(user_rows), n_items])`` blocks.
        exclude: users x items matrix of items never ranked (the training interactions).
        held_out: users x items matrix of the held-out interactions (the judgements).
        ks: Cut-offs.
    """
    ks = tuple(sorted(ks))
    kmax = ks[-1]
    recall: list[list[np.ndarray]] = [[] for _ in ks]
    ndcg: list[list[np.ndarray]] = [[] for _ in ks]
    hits: list[list[np.ndarray]] = [[] for _ in ks]
    for rows, scores in score_blocks:
        columns = top_k_columns(scores, min(kmax, scores.shape[1] - 1), exclude[rows])
        gains, relevant = held_out_gains(columns, held_out[rows])
        ideal = binary_ideal(relevant, kmax)
        for j, k in enumerate(ks):
            recall[j].append(recall_at_k_batch(gains, relevant, k, capped=True))
            ndcg[j].append(ndcg_at_k_batch(gains, ideal, k))
            hits[j].append(hit_rate_at_k_batch(gains, relevant, k))

    def means(blocks: list[list[np.ndarray]]) -> tuple[float, ...]:
        return tuple(mean_defined(np.concatenate(b)) if b else float("nan") for b in blocks)

    users = int(sum(np.count_nonzero(~np.isnan(b)) for b in recall[0]))
    return HeldOutMetrics(ks, means(recall), means(ndcg), means(hits), users)
