"""Sequence preparation: time order and first occurrences, leave-one-out, left padding, windows."""

from __future__ import annotations

import numpy as np
import pytest

from shopserve.interactions import Interactions
from training.sequence.data import (
    PADDING,
    ItemIndex,
    Sequences,
    leave_one_out,
    left_pad,
    training_windows,
    user_sequences,
)

CATALOG = np.array([13, 10, 12, 11, 99])  # any order; index i is the i-th smallest id
INDEX = ItemIndex.from_ids(CATALOG)


def _log(rows: list[tuple[int, int, int]]) -> Interactions:
    users, items, times = (np.array(c, dtype=np.int64) for c in zip(*rows, strict=True))
    return Interactions(users, items, times, np.ones(len(rows), np.float32))


def _rows(seqs: Sequences) -> list[list[int]]:
    return [seqs.row(r).tolist() for r in range(len(seqs))]


def test_item_index_round_trip_with_padding_zero() -> None:
    assert INDEX.index(np.array([10, 13, 99, 7])).tolist() == [1, 4, 5, 0]
    assert INDEX.ids_by_index().tolist() == [-1, 10, 11, 12, 13, 99]
    assert INDEX.external(np.array([0, 2])).tolist() == [-1, 11]
    assert len(INDEX) == 5


def test_sequences_are_in_time_order_with_each_item_once_and_unknown_items_dropped() -> None:
    log = _log([
        (2, 12, 50), (1, 11, 20), (1, 10, 10), (1, 11, 30),  # repeat of 11 dropped
        (1, 7, 15),                                          # not in the catalog
        (1, 13, 20),                                         # tie with 11 at 20: log order
        (2, 10, 40),
    ])  # fmt: skip
    seqs = user_sequences(log, INDEX)
    assert seqs.users.tolist() == [1, 2]
    assert _rows(seqs) == [[1, 2, 4], [1, 3]]  # user 1: 10, 11, 13; user 2: 10, 12


def _sequences(rows: list[list[int]]) -> Sequences:
    lengths = [len(r) for r in rows]
    return Sequences(np.arange(100, 100 + len(rows)), np.r_[0, np.cumsum(lengths)].astype(np.int64),
                     np.array([i for r in rows for i in r], dtype=np.int64))


@pytest.mark.parametrize(
    ("rows", "train", "valid", "test", "test_history"),
    [
        ([[1, 2, 3, 4, 5]], [[1, 2, 3]], [4], [5], [[1, 2, 3, 4]]),
        ([[1, 2, 3]], [[1]], [2], [3], [[1, 2]]),
        ([[1, 2]], [[1, 2]], [], [], []),          # too short: trains only
        ([[7], [1, 2, 3, 4]], [[7], [1, 2]], [3], [4], [[1, 2, 3]]),
    ],
)
def test_leave_one_out(rows, train, valid, test, test_history) -> None:
    split = leave_one_out(_sequences(rows))
    assert _rows(split.train) == train
    assert split.valid.targets.tolist() == valid
    assert split.test.targets.tolist() == test
    assert _rows(split.test.history) == test_history
    assert _rows(split.valid.history) == [h[:-1] for h in test_history]
    assert _rows(split.before_test) == [r[:-1] if len(r) >= 3 else r for r in rows]


def test_leave_one_out_needs_three_items() -> None:
    with pytest.raises(ValueError, match="min_length"):
        leave_one_out(_sequences([[1, 2]]), min_length=2)


def test_left_pad_keeps_the_newest_items_newest_last() -> None:
    padded = left_pad(_sequences([[1, 2, 3, 4, 5], [6], []]), 3)
    assert padded.dtype == np.int64
    assert padded.tolist() == [[3, 4, 5], [PADDING, PADDING, 6], [PADDING] * 3]


def test_newest_items() -> None:
    assert _rows(_sequences([[1, 2, 3, 4], [5]]).newest(2)) == [[3, 4], [5]]


def test_training_windows_shift_targets_and_cover_every_item_after_the_first_once() -> None:
    seqs = _sequences([[1, 2, 3, 4, 5, 6], [7, 8], [9]])
    inputs, targets = training_windows(seqs, 3)
    assert inputs.tolist() == [
        [3, 4, 5], [PADDING, 1, 2],      # 6 items: windows end at 6 and 3
        [PADDING, PADDING, 7],           # [9] alone has no target
    ]  # fmt: skip
    assert targets.tolist() == [[4, 5, 6], [PADDING, 2, 3], [PADDING, PADDING, 8]]
    assert sorted(targets[targets > 0].tolist()) == [2, 3, 4, 5, 6, 8]
    # Where there is an input there is a target and vice versa (left padding in both).
    assert ((inputs > 0) == (targets > 0)).all()
