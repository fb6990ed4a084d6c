"""Matrix-factorisation training for recall: implicit ALS (BPR as an option), tuning, evaluation.

Pure functions over :class:`~shopserve.interactions.Interactions`; no serving code. The model
that ships is ALS on a BM25-weighted confidence matrix (Hu, Koren & Volinsky's implicit ALS; BM25
weighting damps heavy users and popular items, which the library's defaults leave untouched), with
hyper-parameters chosen on a time-based validation split carved out of the training data, so the
test split is never looked at while tuning.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from implicit.nearest_neighbours import bm25_weight
from threadpoolctl import threadpool_limits

from shopserve.interactions import IdMap, Interactions, temporal_split
from shopserve.metrics import held_out_metrics

Algorithm = Literal["als", "bpr"]


def to_csr(log: Interactions, users: IdMap, items: IdMap) -> sp.csr_matrix:
    """A users x items CSR matrix of summed weights; events of unknown users or items are dropped."""
    rows = users.index(log.user_ids)
    cols = items.index(log.item_ids)
    keep = (rows >= 0) & (cols >= 0)
    matrix = sp.csr_matrix(
        (log.weights[keep].astype(np.float32), (rows[keep], cols[keep])),
        shape=(len(users), len(items)),
        dtype=np.float32,
    )
    matrix.sum_duplicates()
    return matrix


@dataclass(frozen=True)
class MFParams:
    """Hyper-parameters of one MF model.

    Attributes:
        algorithm: ``als`` (implicit ALS, conjugate gradient) or ``bpr``.
        factors: Latent dimensions.
        regularization: L2 penalty on the factors.
        alpha: ALS confidence scale (confidence = 1 + alpha * weight).
        iterations: ALS sweeps or BPR epochs.
        learning_rate: BPR step size.
        bm25: Re-weight the user-item matrix with BM25 before ALS.
        bm25_k1: BM25 saturation of repeated interactions.
        bm25_b: BM25 length normalisation of heavy users.
        seed: Random seed of the factor initialisation.
    """

    algorithm: Algorithm = "als"
    factors: int = 64
    regularization: float = 0.05
    alpha: float = 10.0
    iterations: int = 15
    learning_rate: float = 0.01
    bm25: bool = True
    bm25_k1: float = 100.0
    bm25_b: float = 0.8
    seed: int = 42

    @classmethod
    def library_default(cls, algorithm: Algorithm = "als") -> MFParams:
        """What ``implicit`` does out of the box: raw counts, its default hyper-parameters."""
        if algorithm == "als":
            return cls("als", factors=100, regularization=0.01, alpha=1.0, iterations=15,
                       bm25=False)
        return cls("bpr", factors=100, regularization=0.01, learning_rate=0.01, iterations=100,
                   bm25=False)


@dataclass(frozen=True)
class MFModel:
    """Trained factors and the id maps that give them meaning.

    Attributes:
        user_factors: float32 [n_users, d]; row ``i`` is user ``users.ids[i]``.
        item_factors: float32 [n_items, d]; row ``j`` is item ``items.ids[j]``.
        users: External user ids of the rows.
        items: External item ids of the rows.
        popularity: float32 [n_items], summed interaction weight in training (the fallback).
        params: Hyper-parameters it was trained with.
        train_seconds: Wall time of ``fit``.
    """

    user_factors: np.ndarray
    item_factors: np.ndarray
    users: IdMap
    items: IdMap
    popularity: np.ndarray
    params: MFParams
    train_seconds: float


def fit(
    train: Interactions,
    params: MFParams,
    *,
    items: IdMap | None = None,
    show_progress: bool = True,
    num_threads: int = 0,
) -> MFModel:
    """Train an MF model on ``train``.

    Args:
        train: Interactions to learn from.
        params: Hyper-parameters.
        items: Item universe (e.g. the whole catalog); defaults to the items seen in ``train``.
        show_progress: Show implicit's tqdm progress bar.
        num_threads: Threads for implicit (0 = all cores).
    """
    users = IdMap.from_ids(train.user_ids)
    items = items or IdMap.from_ids(train.item_ids)
    matrix = to_csr(train, users, items)
    popularity = np.asarray(matrix.sum(axis=0)).ravel().astype(np.float32)
    weighted = (
        bm25_weight(matrix, K1=params.bm25_k1, B=params.bm25_b).tocsr().astype(np.float32)
        if params.bm25 else matrix
    )
    # implicit parallelises over users itself; a threaded BLAS underneath only oversubscribes.
    with threadpool_limits(1, "blas"):
        model = _estimator(params, num_threads)
        start = time.perf_counter()
        model.fit(weighted, show_progress=show_progress)
    seconds = time.perf_counter() - start
    return MFModel(
        user_factors=np.ascontiguousarray(model.user_factors, dtype=np.float32),
        item_factors=np.ascontiguousarray(model.item_factors, dtype=np.float32),
        users=users, items=items, popularity=popularity, params=params, train_seconds=seconds,
    )


def _estimator(params: MFParams, num_threads: int) -> Any:
    if params.algorithm == "als":
        return AlternatingLeastSquares(
            factors=params.factors, regularization=params.regularization, alpha=params.alpha,
            iterations=params.iterations, random_state=params.seed, num_threads=num_threads,
        )
    return BayesianPersonalizedRanking(
        factors=params.factors, learning_rate=params.learning_rate,
        regularization=params.regularization, iterations=params.iterations,
        random_state=params.seed, num_threads=num_threads,
    )


# --------------------------------------------------------------------------------------------------
# Evaluation.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopKResult:
    """Offline top-k quality of one model (means over test users; binary relevance).

    Attributes:
        recall_at_20: Held-out items found in the top 20 / held-out items (capped at 20).
        ndcg_at_10: NDCG@10, log2 discount, gain 1 per held-out item.
        hit_rate_at_10: Share of users with a held-out item in the top 10.
        users: Number of test users evaluated.
    """

    recall_at_20: float
    ndcg_at_10: float
    hit_rate_at_10: float
    users: int

    def as_dict(self) -> dict[str, float]:
        """For manifests and tables."""
        return asdict(self)


def evaluate_scores(
    score_rows: Iterable[tuple[np.ndarray, np.ndarray]],
    train: sp.csr_matrix,
    test: sp.csr_matrix,
) -> TopKResult:
    """Recall@20, NDCG@10 and HitRate@10 from dense score blocks, training items excluded.

    Args:
        score_rows: ``(user_rows, scores [len(user_rows), n_items])`` blocks.
        train: users x items training matrix (its items are excluded from the ranking).
        test: users x items held-out matrix on the same index.

    The recall denominator is ``min(|held-out|, 20)`` (as in Liang et al.'s VAE-CF protocol), so a
    perfect ranking scores 1. Computed by the bulk path of :mod:`shopserve.metrics`
    (:func:`~shopserve.metrics.held_out_metrics`), binary gains, log2 discount.
    """
    result = held_out_metrics(score_rows, train, test, (10, 20))
    return TopKResult(result.at("recall", 20), result.at("ndcg", 10), result.at("hit_rate", 10),
                      result.users)


def _blocks(users: np.ndarray, block: int) -> Iterable[np.ndarray]:
    for start in range(0, users.shape[0], block):
        yield users[start : start + block]


def evaluate_model(model: MFModel, train: Interactions, test: Interactions) -> TopKResult:
    """Top-k quality of an MF model on held-out interactions (users unknown to it are skipped)."""
    train_m = to_csr(train, model.users, model.items)
    test_m = to_csr(test, model.users, model.items)
    users = np.flatnonzero(np.diff(test_m.indptr))
    return evaluate_scores(
        ((rows, model.user_factors[rows] @ model.item_factors.T) for rows in _blocks(users, 512)),
        train_m, test_m,
    )


def evaluate_popularity(train: Interactions, test: Interactions) -> TopKResult:
    """The most-popular baseline: every user gets the items with most training interactions."""
    users = IdMap.from_ids(train.user_ids)
    items = IdMap.from_ids(train.item_ids)
    train_m = to_csr(train, users, items)
    test_m = to_csr(test, users, items)
    popularity = np.asarray((train_m > 0).sum(axis=0)).ravel().astype(np.float32)
    rows_with_test = np.flatnonzero(np.diff(test_m.indptr))
    return evaluate_scores(
        ((rows, np.broadcast_to(popularity, (rows.size, popularity.size)))
         for rows in _blocks(rows_with_test, 512)),
        train_m, test_m,
    )


# --------------------------------------------------------------------------------------------------
# Tuning.
# --------------------------------------------------------------------------------------------------

#: The search space of :func:`tune`; small enough for minutes on 2 cores on MovieLens-100K.
DEFAULT_GRID: Mapping[str, Sequence[Any]] = {
    "factors": (16, 32, 64, 128),
    "regularization": (0.01, 0.1, 1.0, 5.0),
    "alpha": (0.5, 1.0, 5.0, 20.0),
    "bm25": (True, False),
    "iterations": (15,),
}


@dataclass(frozen=True)
class TuningRow:
    """One configuration tried while tuning and its validation quality."""

    params: MFParams
    result: TopKResult


def tune(
    train: Interactions,
    base: MFParams = MFParams(),
    grid: Mapping[str, Sequence[Any]] = DEFAULT_GRID,
    metric: str = "ndcg_at_10",
    holdout_fraction: float = 0.2,
    show_progress: bool = False,
) -> tuple[MFParams, list[TuningRow]]:
    """Grid-search hyper-parameters on a time-based validation split of ``train``.

    The validation split holds out each user's latest ``holdout_fraction`` of *training*
    interactions, so the caller's test split stays unseen.

    Returns:
        The best parameters by ``metric`` and every row tried, best first.
    """
    fit_part, valid = temporal_split(train, holdout_fraction)
    keys = list(grid)
    rows = []
    for values in itertools.product(*(grid[k] for k in keys)):
        params = replace(base, **dict(zip(keys, values, strict=True)))
        model = fit(fit_part, params, show_progress=show_progress)
        rows.append(TuningRow(params, evaluate_model(model, fit_part, valid)))
    rows.sort(key=lambda r: getattr(r.result, metric), reverse=True)
    return rows[0].params, rows
