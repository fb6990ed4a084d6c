"""Next-item evaluation: full ranking over every item, the shopper's earlier items excluded.

One held-out item per shopper, binary gain. Each scorer gives a dense score for every model index
(``[rows, n_items + 1]``; column 0, the padding, is never ranked); the items of the row's history
are excluded, never the held-out item itself (it is new by construction: sequences keep first
occurrences only). No sampled negatives.

* NDCG@10: gain 1 for the held-out item, log2 discount (so ``1 / log2(rank + 1)`` within the top
  10, else 0); HR@10: the held-out item is in the top 10. Both through the bulk path of
  :mod:`shopserve.metrics` (``top_k_columns``, ``held_out_gains``, ``ndcg_at_k_batch``,
  ``hit_rate_at_k_batch``).
* MRR: ``1 / rank`` of the held-out item over the whole ranking (no cut-off); items scoring the
  same as it count half (the expected rank under a random tie break), so a constant scorer gets
  no credit from ties.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

from shopserve.metrics import (
    binary_ideal,
    held_out_gains,
    hit_rate_at_k_batch,
    mean_defined,
    ndcg_at_k_batch,
    top_k_columns,
)
from training.sequence.data import PADDING, HeldOut, Sequences

#: ``scorer(rows)`` -> float32 [len(rows), n_items + 1]: scores of the held-out rows ``rows``.
Scorer = Callable[[np.ndarray], np.ndarray]

CUTOFF = 10


@dataclass(frozen=True)
class NextItemMetrics:
    """Mean next-item quality over the evaluated shoppers.

    Attributes:
        ndcg_at_10: NDCG@10 in [0, 1] (binary gain, log2 discount).
        hit_rate_at_10: Share of shoppers whose held-out item is in the top 10.
        mrr: Mean reciprocal rank of the held-out item over the full ranking, in (0, 1].
        users: Shoppers evaluated.
    """

    ndcg_at_10: float
    hit_rate_at_10: float
    mrr: float
    users: int

    def as_dict(self) -> dict[str, float]:
        """For manifests and tables (the project's ``<metric>_at_<k>`` spelling)."""
        return asdict(self)


def exclusion_matrix(history: Sequences, n_columns: int) -> sp.csr_matrix:
    """[rows, n_columns] CSR with the history items of each row and the padding column."""
    lengths = history.lengths()
    rows = np.r_[np.repeat(np.arange(len(history)), lengths), np.arange(len(history))]
    cols = np.r_[history.items, np.full(len(history), PADDING)]
    matrix = sp.csr_matrix((np.ones(rows.shape[0], np.float32), (rows, cols)),
                           shape=(len(history), n_columns))
    matrix.sum_duplicates()
    return matrix


def _blocks(n: int, size: int) -> Iterator[np.ndarray]:
    for start in range(0, n, size):
        yield np.arange(start, min(n, start + size))


def evaluate(scorer: Scorer, held_out: HeldOut, n_items: int, *, block: int = 512) -> NextItemMetrics:
    """NDCG@10, HR@10 and MRR of ``scorer`` on ``held_out`` (see the module docstring).

    Args:
        scorer: Scores of a block of held-out rows over every model index.
        held_out: The rows, their histories (excluded) and targets.
        n_items: Items of the index (scores have ``n_items + 1`` columns).
        block: Rows scored at a time.
    """
    n_columns = n_items + 1
    exclude = exclusion_matrix(held_out.history, n_columns)
    targets = sp.csr_matrix(
        (np.ones(len(held_out), np.float32), (np.arange(len(held_out)), held_out.targets)),
        shape=(len(held_out), n_columns))
    ndcg, hits, reciprocal = [], [], []
    for rows in _blocks(len(held_out), block):
        scores = np.asarray(scorer(rows), dtype=np.float32)
        if scores.shape != (rows.shape[0], n_columns):
            raise ValueError(f"scorer gave {scores.shape}, expected {(rows.shape[0], n_columns)}")
        excluded = exclude[rows]
        columns = top_k_columns(scores, CUTOFF, excluded)
        gains, relevant = held_out_gains(columns, targets[rows])
        ndcg.append(ndcg_at_k_batch(gains, binary_ideal(relevant, CUTOFF), CUTOFF))
        hits.append(hit_rate_at_k_batch(gains, relevant, CUTOFF))
        reciprocal.append(1.0 / _ranks(scores, excluded, held_out.targets[rows]))
    return NextItemMetrics(
        ndcg_at_10=mean_defined(np.concatenate(ndcg)),
        hit_rate_at_10=mean_defined(np.concatenate(hits)),
        mrr=float(np.mean(np.concatenate(reciprocal))) if len(held_out) else float("nan"),
        users=len(held_out),
    )


def _ranks(scores: np.ndarray, excluded: sp.csr_matrix, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each row's target among its non-excluded columns, ties counted half."""
    scores = scores.copy()
    scores[excluded.nonzero()] = -np.inf
    own = scores[np.arange(scores.shape[0]), targets][:, None]
    above = (scores > own).sum(axis=1)
    tied = (scores == own).sum(axis=1) - 1  # the target itself
    return 1.0 + above + 0.5 * tied


def popularity_scorer(train: Sequences, n_items: int) -> Scorer:
    """Everyone gets the items by number of training shoppers (the fallback for the unknown)."""
    counts = np.bincount(train.items, minlength=n_items + 1).astype(np.float32)
    counts[PADDING] = 0.0
    return lambda rows: np.broadcast_to(counts, (rows.shape[0], counts.shape[0]))
