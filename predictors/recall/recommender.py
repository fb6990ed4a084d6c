"""The recall component's bundle format and the serving-time recommender (pure, no KServe).

A recall component folder holds:

* ``factors.npz``: ``user_factors`` [U, d], ``item_factors`` [I, d] (float32), ``user_ids`` [U],
  ``item_ids`` [I] (int64, sorted), ``popularity`` [I] (float32);
* ``seen.npz``: the users x items CSR of training interactions (``indptr``, ``indices``), so
  ``exclude_seen`` can drop what a user already interacted with;
* optionally a prebuilt FAISS index (folder ``index-<kind>/``) for large catalogs;
* ``manifest.json`` (checksums, data summary, tuned parameters, offline metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from predictors.recall.index import IndexConfig, TopKIndex, build_index, load_index
from shopserve.artifacts import (
    RECALL_COMPONENT,
    Manifest,
    load_component,
    load_npz,
)
from shopserve.errors import BundleError
from shopserve.interactions import IdMap, RowSets

COMPONENT = RECALL_COMPONENT
FACTORS = "factors.npz"
SEEN = "seen.npz"
#: Score of padding entries when fewer than k items are eligible (JSON has no -inf).
PAD_SCORE = np.float32(np.finfo(np.float32).min)
PAD_ID = -1


def index_dirname(config: IndexConfig) -> str:
    """Folder of a prebuilt FAISS index in the bundle."""
    return f"index-{config.kind}"


@dataclass
class Recommender:
    """Top-k items for users (personalised) and for items (similar items).

    Attributes:
        user_factors: float32 [U, d].
        item_factors: float32 [I, d].
        users: Row <-> external user id.
        items: Row <-> external item id.
        popularity_order: Item rows, most popular first (the fallback for unknown users).
        popularity_scores: Popularity of those rows, scaled to [0, 1].
        seen: Per user row, the item rows of its training interactions.
        index: Top-k search over ``item_factors``.
        manifest: The loaded component's manifest.
    """

    user_factors: np.ndarray
    item_factors: np.ndarray
    users: IdMap
    items: IdMap
    popularity_order: np.ndarray
    popularity_scores: np.ndarray
    seen: RowSets
    index: TopKIndex
    manifest: Manifest | None = None

    @classmethod
    def load(cls, folder: Path, index: IndexConfig) -> Recommender:
        """Load and verify a recall component, with the top-k index chosen by ``index``.

        A prebuilt FAISS index in the bundle is used when present; otherwise it is built here.

        Raises:
            BundleError: missing, corrupt or inconsistent bundle.
        """
        folder = Path(folder)
        manifest = load_component(folder, COMPONENT)
        factors = load_npz(folder / FACTORS)
        seen_raw = load_npz(folder / SEEN)
        user_factors = np.ascontiguousarray(factors["user_factors"], dtype=np.float32)
        item_factors = np.ascontiguousarray(factors["item_factors"], dtype=np.float32)
        users, items = IdMap(factors["user_ids"]), IdMap(factors["item_ids"])
        if user_factors.shape[0] != len(users) or item_factors.shape[0] != len(items):
            raise BundleError(f"{folder}: factor rows do not match the id maps")
        seen = RowSets(seen_raw["indptr"].astype(np.int64), seen_raw["indices"].astype(np.int64))
        if (len(seen) != len(users) or seen.indptr[0] != 0 or seen.indptr[-1] != seen.indices.size
                or np.any(np.diff(seen.indptr) < 0)
                or (seen.indices.size and not 0 <= seen.indices.min() <= seen.indices.max()
                    < len(items))):
            raise BundleError(f"{folder}: {SEEN} does not match the id maps")
        prebuilt = folder / index_dirname(index)
        top_k_index = (
            load_index(prebuilt, index) if index.kind != "exact" and prebuilt.is_dir()
            else build_index(item_factors, index)
        )
        popularity = factors["popularity"].astype(np.float32)
        order = np.argsort(-popularity, kind="stable")
        top = float(popularity[order[0]]) if popularity.size and popularity[order[0]] > 0 else 1.0
        return cls(user_factors, item_factors, users, items, order, popularity[order] / top, seen,
                   top_k_index, manifest)

    @property
    def n_items(self) -> int:
        """Catalog size known to the model."""
        return len(self.items)

    def recommend(
        self, user_ids: np.ndarray, k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for each user: MF for known users, popularity for unknown ones.

        Returns:
            ``(item_ids int64 [B, k], scores float32 [B, k])``, best first; padded with id -1 and
            the lowest float32 when fewer than ``k`` items are eligible.
        """
        rows = self.users.index(user_ids)
        ids = np.full((rows.shape[0], k), PAD_ID, dtype=np.int64)
        scores = np.full((rows.shape[0], k), PAD_SCORE, dtype=np.float32)
        known = np.flatnonzero(rows >= 0)
        if known.size:
            exclude = [self._seen_row(r) for r in rows[known]] if exclude_seen else None
            found, found_scores = self.index.search(self.user_factors[rows[known]], k, exclude)
            ids[known], scores[known] = self._external(found, found_scores)
        for i in np.flatnonzero(rows < 0):
            ids[i], scores[i] = self._popular(k, exclude=None)
        return ids, scores

    def similar_items(self, item_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items closest to each item by factor inner product, the item itself excluded.

        Unknown items get the popularity list (without the item).
        """
        rows = self.items.index(item_ids)
        ids = np.full((rows.shape[0], k), PAD_ID, dtype=np.int64)
        scores = np.full((rows.shape[0], k), PAD_SCORE, dtype=np.float32)
        known = np.flatnonzero(rows >= 0)
        if known.size:
            exclude = [np.array([r], dtype=np.int64) for r in rows[known]]
            found, found_scores = self.index.search(self.item_factors[rows[known]], k, exclude)
            ids[known], scores[known] = self._external(found, found_scores)
        for i in np.flatnonzero(rows < 0):
            ids[i], scores[i] = self._popular(k, exclude=None)
        return ids, scores

    def _seen_row(self, row: int) -> np.ndarray:
        return self.seen.row(row)

    def _external(self, rows: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        valid = rows >= 0
        ids = np.where(valid, self.items.ids[np.where(valid, rows, 0)], PAD_ID)
        return ids.astype(np.int64), np.where(valid, scores, PAD_SCORE).astype(np.float32)

    def _popular(self, k: int, exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        order, scores = self.popularity_order, self.popularity_scores
        if exclude is not None and exclude.size:
            keep = ~np.isin(order, exclude)
            order, scores = order[keep], scores[keep]
        ids = np.full(k, PAD_ID, dtype=np.int64)
        out = np.full(k, PAD_SCORE, dtype=np.float32)
        n = min(k, order.shape[0])
        ids[:n], out[:n] = self.items.ids[order[:n]], scores[:n]
        return ids, out
