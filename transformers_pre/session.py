"""The sequence model's side in the transformer: the bundle's ``sequence`` component read once.

The ``seq-recommender`` model on Triton speaks model item indices (1..n_items, 0 the padding); the
transformer speaks catalog rows. :class:`SessionModel` maps one to the other, builds the model's
fixed-length input from a shopper's recent items, and scores any candidate after a session with
the model's own item embeddings (the session vector's dot product with each item's embedding,
which is how the model scores its next items), so a search can be personalised by the session
without asking the model for every candidate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shopserve.artifacts import (
    SEQUENCE_COMPONENT,
    SEQUENCE_EMBEDDINGS_FILE,
    SEQUENCE_ITEM_IDS_FILE,
    SEQUENCE_LENGTH,
    SEQUENCE_TOP_K,
    Manifest,
    load_component,
)
from shopserve.errors import BundleError
from shopserve.interactions import IdMap

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionModel:
    """Catalog rows <-> model indices, the item embeddings, and the model's input length.

    Attributes:
        index_of_row: Model index of each catalog row (0 where the model does not know the item).
        row_of_index: Catalog row of each model index (-1 for the padding and for items the
            catalog no longer has).
        embeddings: The model's item embeddings, float32 [n_items + 1, dim] (row 0: padding).
        length: The model's fixed input length (the newest ``length`` recent items are sent).
        top_k: How many next items the model returns.
        manifest: The component's manifest.
    """

    index_of_row: np.ndarray
    row_of_index: np.ndarray
    embeddings: np.ndarray
    length: int
    top_k: int
    manifest: Manifest | None = None

    @classmethod
    def load(cls, folder: Path, items: IdMap) -> SessionModel:
        """Verify and read a bundle's ``sequence`` component against the catalog's ``items``.

        Raises:
            BundleError: the component is missing, corrupt, or inconsistent.
        """
        manifest = load_component(folder, SEQUENCE_COMPONENT)
        try:
            item_ids = np.load(folder / SEQUENCE_ITEM_IDS_FILE, allow_pickle=False)
            embeddings = np.load(folder / SEQUENCE_EMBEDDINGS_FILE, allow_pickle=False)
            length = int(manifest.params[SEQUENCE_LENGTH])
            top_k = int(manifest.params[SEQUENCE_TOP_K])
        except (OSError, KeyError, ValueError) as exc:
            raise BundleError(f"sequence component {folder}: {exc}") from exc
        if embeddings.ndim != 2 or embeddings.shape[0] != item_ids.shape[0]:
            raise BundleError(f"sequence component {folder}: {embeddings.shape[0]} embeddings for "
                              f"{item_ids.shape[0]} item ids")
        return cls.build(item_ids.astype(np.int64), embeddings.astype(np.float32), items, length,
                         top_k, manifest)

    @classmethod
    def build(cls, item_ids: np.ndarray, embeddings: np.ndarray, items: IdMap, length: int,
              top_k: int, manifest: Manifest | None = None) -> SessionModel:
        """From the model's item id per index (index 0: padding, -1) and its embeddings."""
        row_of_index = items.index(item_ids)
        row_of_index[0] = -1
        index_of_row = np.zeros(len(items), dtype=np.int64)
        known = np.flatnonzero(row_of_index >= 0)
        index_of_row[row_of_index[known]] = known
        missing = int((row_of_index[1:] < 0).sum())
        if missing:
            log.warning("sequence model: %d of its %d items are not in the catalog (never "
                        "recommended)", missing, item_ids.shape[0] - 1)
        return cls(index_of_row, row_of_index, embeddings, length, top_k, manifest)

    def sequence(self, recent_rows: tuple[int, ...] | np.ndarray) -> np.ndarray:
        """The model's input for one shopper: the newest ``length`` known items, left-padded
        with 0, shape [1, length]."""
        indices = self.index_of_row[np.asarray(recent_rows, dtype=np.int64)]
        indices = indices[indices > 0][-self.length:]
        out = np.zeros((1, self.length), dtype=np.int64)
        if indices.size:
            out[0, -indices.size:] = indices
        return out

    def knows_any(self, recent_rows: tuple[int, ...]) -> bool:
        """Whether the model knows at least one of ``recent_rows``."""
        return bool(recent_rows) and bool(
            (self.index_of_row[np.asarray(recent_rows, dtype=np.int64)] > 0).any())

    def rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Catalog rows of model ``indices`` and the positions kept (items the catalog has)."""
        rows = self.row_of_index[np.clip(indices, 0, self.row_of_index.shape[0] - 1)]
        keep = (indices > 0) & (indices < self.row_of_index.shape[0]) & (rows >= 0)
        return rows[keep], np.flatnonzero(keep)

    def scores(self, session: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The model's score of each catalog row after ``session`` (nan for rows it does not
        know)."""
        indices = self.index_of_row[rows]
        # einsum, not BLAS: see SemanticIndex.similarity (BLAS threads spin on the ranker's cores).
        out = np.einsum("ij,j->i", self.embeddings[indices],
                        session.astype(np.float32)).astype(np.float32, copy=False)
        out[indices == 0] = np.nan
        return out
