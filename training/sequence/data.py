"""Per-shopper item sequences, the leave-one-out split, and fixed-length training windows.

**Item indices.** The model numbers items ``1..n_items`` in the order of their catalog ids; ``0``
is the padding (``item_ids.npy`` of the bundle's sequence component holds the catalog id of every
index, ``-1`` at index 0). :class:`ItemIndex` converts both ways.

**Sequences.** A shopper's events sorted by time (ties by log position, as
:func:`~shopserve.interactions.temporal_split`), repeated items kept at their *first* occurrence:
the model predicts the next item the shopper has not interacted with yet (the serving graph masks
every input item), and a view followed by a cart and a purchase of the same item is one step, not
three. MovieLens has no repeats; the generated log has many.

**Leave-one-out.** Per shopper with at least three items: the last is the test item, the one
before it the validation item, the rest train (the protocol of SASRec, RecBole and the issue);
shorter sequences train only. Validation ranks with the train items as history; test with the
train items and the validation item.

**Windows.** SASRec's shifted targets: a window of ``L + 1`` consecutive items gives the inputs
``w[:-1]`` and the targets ``w[1:]``, left-padded with 0 to ``L``. Sequences longer than ``L + 1``
are cut into windows ending every ``L`` items from the end, so every item after the first is a
target exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shopserve.interactions import IdMap, Interactions

PADDING = 0
"""The padding index of item sequences (and the row of the embedding table that stays zero)."""


@dataclass(frozen=True)
class ItemIndex:
    """Catalog item ids <-> model item indices ``1..n_items`` (``0`` is the padding).

    Attributes:
        items: The catalog's item ids (sorted, unique); index ``i`` is ``items.ids[i - 1]``.
    """

    items: IdMap

    @classmethod
    def from_ids(cls, item_ids: np.ndarray) -> ItemIndex:
        """From the catalog's item ids (any order, repeats allowed)."""
        return cls(IdMap.from_ids(item_ids))

    def __len__(self) -> int:
        """Number of items (the padding not counted)."""
        return len(self.items)

    def index(self, item_ids: np.ndarray) -> np.ndarray:
        """Model index of each catalog id, ``0`` where the id is not in the catalog."""
        return self.items.index(item_ids) + 1

    def external(self, index: np.ndarray) -> np.ndarray:
        """Catalog id of each model index, ``-1`` for the padding."""
        return self.ids_by_index()[np.asarray(index, dtype=np.int64)]

    def ids_by_index(self) -> np.ndarray:
        """int64 ``[n_items + 1]``: the catalog id of each index, ``-1`` at 0 (``item_ids.npy``)."""
        return np.concatenate([np.array([-1], dtype=np.int64), self.items.ids])


@dataclass(frozen=True, eq=False)  # array fields: == would be ambiguous
class Sequences:
    """Item sequences of many shoppers, oldest first, as CSR-style arrays.

    Attributes:
        users: External user id of each row (int64).
        indptr: int64 ``[rows + 1]``; row ``r`` is ``items[indptr[r]:indptr[r + 1]]``.
        items: Model item indices (int64, ``>= 1``).
    """

    users: np.ndarray
    indptr: np.ndarray
    items: np.ndarray

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def row(self, r: int) -> np.ndarray:
        """The items of row ``r``, oldest first."""
        return self.items[self.indptr[r] : self.indptr[r + 1]]

    def lengths(self) -> np.ndarray:
        """Number of items of each row."""
        return np.diff(self.indptr)

    def take(self, rows: np.ndarray) -> Sequences:
        """The selected rows (an index array or a boolean mask), in that order."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows, np.int64)
        lengths = self.lengths()[rows]
        indptr = np.zeros(rows.shape[0] + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        positions = np.repeat(self.indptr[rows], lengths) + (
            np.arange(indptr[-1]) - np.repeat(indptr[:-1], lengths))
        return Sequences(self.users[rows], indptr, self.items[positions])

    def _slice(self, start: np.ndarray, keep: np.ndarray) -> Sequences:
        """Per row, ``keep`` items from offset ``start``."""
        indptr = np.zeros(len(self) + 1, dtype=np.int64)
        np.cumsum(keep, out=indptr[1:])
        positions = np.repeat(self.indptr[:-1] + start, keep) + (
            np.arange(indptr[-1]) - np.repeat(indptr[:-1], keep))
        return Sequences(self.users, indptr, self.items[positions])

    def truncate(self, drop_last: np.ndarray | int) -> Sequences:
        """Every row without its last ``drop_last`` items (per row or one for all; floor 0)."""
        lengths = self.lengths()
        drop = np.broadcast_to(np.asarray(drop_last, np.int64), lengths.shape)
        return self._slice(np.zeros_like(lengths), np.maximum(lengths - drop, 0))

    def newest(self, n: int) -> Sequences:
        """Every row's newest ``n`` items (the whole row when shorter), oldest first."""
        lengths = self.lengths()
        keep = np.minimum(lengths, n)
        return self._slice(lengths - keep, keep)

    def last(self, offset: int = 1) -> np.ndarray:
        """The item ``offset`` places from the end of each row (1 = the newest); rows must be long
        enough."""
        return self.items[self.indptr[1:] - offset]

    def to_interactions(self) -> Interactions:
        """The rows as an unweighted log (external user ids, *model indices* as item ids, the
        position in the row as the timestamp): what the matrix-factorisation baselines train on."""
        lengths = self.lengths()
        return Interactions(
            user_ids=np.repeat(self.users, lengths),
            item_ids=self.items.copy(),
            timestamps=np.arange(self.items.shape[0]) - np.repeat(self.indptr[:-1], lengths),
            weights=np.ones(self.items.shape[0], dtype=np.float32),
        )


def user_sequences(log: Interactions, index: ItemIndex) -> Sequences:
    """Each user's items in time order, every item at its first occurrence only.

    Events of items outside ``index`` are dropped; users are the rows, in ascending id order.
    """
    items = index.index(log.item_ids)
    keep = items > 0
    users, items = log.user_ids[keep], items[keep]
    times, position = log.timestamps[keep], np.flatnonzero(keep)
    order = np.lexsort((position, times, users))
    users, items = users[order], items[order]
    # First occurrence of each (user, item) pair in time order.
    pair = np.stack([users, items], axis=1)
    _, first = np.unique(pair, axis=0, return_index=True)
    first = np.sort(first)
    users, items = users[first], items[first]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if users.size else np.zeros(
        0, np.int64)
    indptr = np.r_[starts, users.shape[0]].astype(np.int64)
    return Sequences(users[starts], indptr, items.astype(np.int64))


@dataclass(frozen=True, eq=False)
class HeldOut:
    """One held-out item per shopper and the items before it.

    Attributes:
        history: The items before the held-out one, oldest first (the model's input; every one
            of them is excluded from the ranking).
        targets: The held-out item index of each row.
    """

    history: Sequences
    targets: np.ndarray

    def __len__(self) -> int:
        return int(self.targets.shape[0])


@dataclass(frozen=True, eq=False)
class LeaveOneOut:
    """The leave-one-out split of :func:`leave_one_out`.

    Attributes:
        train: Every user's training items (all of them for users too short to evaluate).
        valid: Per evaluated user, the validation item after their training items.
        test: Per evaluated user, the test item after their training and validation items.
        before_test: Every user's items except the test item (training plus validation): what
            a model refitted for the test sees.
    """

    train: Sequences
    valid: HeldOut
    test: HeldOut
    before_test: Sequences


def leave_one_out(sequences: Sequences, min_length: int = 3) -> LeaveOneOut:
    """Hold out each user's last item for test and the one before for validation.

    Users with fewer than ``min_length`` (at least 3) items train only.
    """
    if min_length < 3:
        raise ValueError("min_length must be >= 3: a train, a validation and a test item")
    lengths = sequences.lengths()
    evaluated = lengths >= min_length
    train = sequences.truncate(np.where(evaluated, 2, 0))
    rows = sequences.take(evaluated)
    valid = HeldOut(rows.truncate(2), rows.last(2))
    test = HeldOut(rows.truncate(1), rows.last(1))
    return LeaveOneOut(train, valid, test, sequences.truncate(np.where(evaluated, 1, 0)))


def left_pad(rows: Sequences, length: int) -> np.ndarray:
    """int64 ``[rows, length]``: each row's newest ``length`` items, newest last, left-padded with
    :data:`PADDING` (the ``item_sequence`` input of the serving graph)."""
    lengths = np.minimum(rows.lengths(), length)
    out = np.full((len(rows), length), PADDING, dtype=np.int64)
    if not len(rows):
        return out
    r = np.repeat(np.arange(len(rows)), lengths)
    offset = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[r, length - np.repeat(lengths, lengths) + offset] = rows.items[
        np.repeat(rows.indptr[1:] - lengths, lengths) + offset]
    return out


def training_windows(train: Sequences, length: int) -> tuple[np.ndarray, np.ndarray]:
    """SASRec's shifted-target windows of the training sequences.

    Args:
        train: Training sequences (rows shorter than 2 give no window).
        length: The model's fixed input length ``L``.

    Returns:
        ``(inputs, targets)``, int64 ``[windows, L]`` each: ``targets[w, t]`` is the item after
        ``inputs[w, :t + 1]``, :data:`PADDING` where there is none; both left-padded.
    """
    if length < 1:
        raise ValueError("length must be >= 1")
    starts, ends = [], []
    for r, n in enumerate(train.lengths()):
        base = int(train.indptr[r])
        # Windows end at n, n - L, n - 2L, ... (exclusive); each spans up to L + 1 items.
        for end in range(int(n), 1, -length):
            starts.append(base + max(0, end - length - 1))
            ends.append(base + end)
    inputs = np.full((len(starts), length), PADDING, dtype=np.int64)
    targets = np.full((len(starts), length), PADDING, dtype=np.int64)
    for w, (s, e) in enumerate(zip(starts, ends, strict=True)):
        window = train.items[s:e]
        n = window.shape[0] - 1
        inputs[w, length - n :] = window[:-1]
        targets[w, length - n :] = window[1:]
    return inputs, targets
