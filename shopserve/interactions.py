"""User-item interaction logs, id maps, the time-based split, and per-user item sets.

Pure numpy (no scipy: serving reads the sets, the build's sparse matrices are
``training.recall.train.to_csr``); shared by the generator, the MovieLens loader, the recall
trainer, the recall predictor and the search transformer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class IdMap:
    """A bijection between external int64 ids and contiguous row indices ``0..n-1``.

    Attributes:
        ids: External ids in index order (int64, unique, sorted).
    """

    ids: np.ndarray

    @classmethod
    def from_ids(cls, ids: np.ndarray) -> IdMap:
        """Build from any array of ids (duplicates allowed)."""
        return cls(np.unique(np.asarray(ids, dtype=np.int64)))

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def index(self, ids: np.ndarray) -> np.ndarray:
        """Row index of each id, ``-1`` where the id is unknown."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self.ids, ids)
        pos = np.clip(pos, 0, max(len(self) - 1, 0))
        found = (len(self) > 0) & (self.ids[pos] == ids) if len(self) else np.zeros(ids.shape, bool)
        return np.where(found, pos, -1).astype(np.int64)

    def external(self, index: np.ndarray) -> np.ndarray:
        """External id of each row index."""
        return self.ids[np.asarray(index, dtype=np.int64)]


@dataclass(frozen=True)
class Interactions:
    """An interaction log, one row per event, in any order.

    Attributes:
        user_ids: External user id of each event (int64).
        item_ids: External item id of each event (int64).
        timestamps: Event time in seconds since the epoch (int64).
        weights: Confidence of each event (float32): e.g. view 1, cart 3, purchase 5, or a rating.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray
    weights: np.ndarray

    def __post_init__(self) -> None:
        n = self.user_ids.shape[0]
        if not (self.item_ids.shape[0] == self.timestamps.shape[0] == self.weights.shape[0] == n):
            raise ValueError("interaction columns differ in length")

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])

    def take(self, mask_or_index: np.ndarray) -> Interactions:
        """The subset selected by a boolean mask or an index array."""
        return Interactions(
            self.user_ids[mask_or_index],
            self.item_ids[mask_or_index],
            self.timestamps[mask_or_index],
            self.weights[mask_or_index],
        )

    def summary(self) -> dict[str, int]:
        """Counts for a bundle manifest's data summary."""
        return {
            "interactions": len(self),
            "users": int(np.unique(self.user_ids).shape[0]),
            "items": int(np.unique(self.item_ids).shape[0]),
            "first_timestamp": int(self.timestamps.min()) if len(self) else 0,
            "last_timestamp": int(self.timestamps.max()) if len(self) else 0,
        }


def temporal_split(
    log: Interactions, holdout_fraction: float = 0.2, min_interactions: int = 5
) -> tuple[Interactions, Interactions]:
    """Per user, hold out the latest ``holdout_fraction`` of interactions by timestamp.

    Users with fewer than ``min_interactions`` events go to training only. Each eligible user keeps
    at least one training event and holds out at least one. Ties in time are broken by position so
    the split is deterministic.

    Returns:
        ``(train, test)``.
    """
    order = np.lexsort((np.arange(len(log)), log.timestamps, log.user_ids))
    users = log.user_ids[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    counts = np.diff(np.r_[starts, users.shape[0]])
    # Rank of each event within its user's timeline, 0 = oldest.
    rank = np.arange(users.shape[0]) - np.repeat(starts, counts)
    n_test = np.where(
        counts >= min_interactions,
        np.clip(np.ceil(counts * holdout_fraction).astype(np.int64), 1, counts - 1),
        0,
    )
    is_test_sorted = rank >= np.repeat(counts - n_test, counts)
    is_test = np.empty_like(is_test_sorted)
    is_test[order] = is_test_sorted
    return log.take(~is_test), log.take(is_test)


@dataclass(frozen=True, eq=False)  # array fields: == would be ambiguous
class RowSets:
    """Per row (a user), the sorted set of column indices (items): the index arrays of a CSR
    matrix without its values, which is all serving asks (what a shopper has seen or bought).

    Attributes:
        indptr: int64 ``[rows + 1]``; row ``r`` holds ``indices[indptr[r]:indptr[r + 1]]``.
        indices: int64 column indices, sorted within each row, no repeats.
    """

    indptr: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return int(self.indptr.shape[0]) - 1

    def row(self, r: int) -> np.ndarray:
        """The columns of row ``r``."""
        return self.indices[self.indptr[r] : self.indptr[r + 1]]

    @classmethod
    def from_pairs(cls, rows: np.ndarray, cols: np.ndarray, n_rows: int) -> RowSets:
        """The sets of ``(row, col)`` pairs (repeats merged) for rows ``0..n_rows-1``."""
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        pairs = np.unique(np.stack([rows, cols], axis=1), axis=0) if rows.size else np.zeros(
            (0, 2), dtype=np.int64)
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(pairs[:, 0], minlength=n_rows), out=indptr[1:])
        return cls(indptr, np.ascontiguousarray(pairs[:, 1]))


def to_rowsets(log: Interactions, users: IdMap, items: IdMap) -> RowSets:
    """Per user row, the item rows of its events; events of unknown users or items are dropped."""
    rows = users.index(log.user_ids)
    cols = items.index(log.item_ids)
    keep = (rows >= 0) & (cols >= 0)
    return RowSets.from_pairs(rows[keep], cols[keep], len(users))
