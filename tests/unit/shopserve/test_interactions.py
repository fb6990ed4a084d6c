"""Id maps, the time-based split, the per-user item sets (serving) and the training matrix (build)."""

import numpy as np
import pytest

from shopserve.interactions import IdMap, Interactions, RowSets, temporal_split, to_rowsets
from training.recall.train import to_csr


def _log(users, items, times):
    n = len(users)
    return Interactions(np.array(users, np.int64), np.array(items, np.int64),
                        np.array(times, np.int64), np.ones(n, np.float32))


def test_id_map_round_trip_and_unknown():
    ids = IdMap.from_ids(np.array([30, 10, 20, 10]))
    assert ids.ids.tolist() == [10, 20, 30]
    assert ids.index(np.array([20, 99, 10, -1])).tolist() == [1, -1, 0, -1]
    assert ids.external(np.array([2, 0])).tolist() == [30, 10]
    assert IdMap.from_ids(np.array([], np.int64)).index(np.array([1])).tolist() == [-1]


@pytest.mark.parametrize(
    ("count", "expected_test"),
    [(4, 0), (5, 1), (10, 2), (11, 3)],
)
def test_split_holds_out_latest_fraction(count, expected_test):
    rng = np.random.default_rng(0)
    times = rng.permutation(count)
    log = _log([7] * count, list(range(count)), times)
    train, test = temporal_split(log, 0.2, min_interactions=5)
    assert len(test) == expected_test and len(train) + len(test) == count
    if expected_test:
        assert test.timestamps.min() > train.timestamps.max()


def test_split_is_per_user():
    log = _log([1] * 5 + [2] * 5, list(range(10)), [5, 4, 3, 2, 1, 10, 20, 30, 40, 50])
    _, test = temporal_split(log, 0.2)
    assert sorted(zip(test.user_ids.tolist(), test.item_ids.tolist(), strict=True)) == [(1, 0), (2, 9)]


def test_csr_sums_duplicates_and_drops_unknown():
    log = _log([1, 1, 2, 3], [5, 5, 6, 7], [0, 1, 2, 3])
    users, items = IdMap.from_ids(np.array([1, 2])), IdMap.from_ids(np.array([5, 6]))
    matrix = to_csr(log, users, items)
    assert matrix.shape == (2, 2) and matrix.toarray().tolist() == [[2, 0], [0, 1]]


def test_rowsets_hold_the_sorted_distinct_items_of_each_user():
    log = _log([1, 1, 2, 3, 1], [6, 5, 6, 7, 5], [0, 1, 2, 3, 4])
    users, items = IdMap.from_ids(np.array([1, 2, 4])), IdMap.from_ids(np.array([5, 6]))
    sets = to_rowsets(log, users, items)
    assert len(sets) == 3
    assert [sets.row(r).tolist() for r in range(3)] == [[0, 1], [1], []]
    # The same columns as the build's CSR (values aside).
    csr = to_csr(log, users, items)
    np.testing.assert_array_equal(sets.indptr, csr.indptr)
    np.testing.assert_array_equal(sets.indices, csr.indices)


def test_rowsets_of_nothing():
    sets = RowSets.from_pairs(np.zeros(0, np.int64), np.zeros(0, np.int64), 2)
    assert len(sets) == 2 and sets.row(0).size == 0 and sets.row(1).size == 0
