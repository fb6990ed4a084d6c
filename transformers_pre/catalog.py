"""The catalog the transformer serves from: item facts, the lexical index, users' purchases.

Loaded once from the bundle's verified ``catalog`` component; everything here is read-only and
pure, so one instance is shared by every request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import bm25s
import numpy as np

from shopserve.artifacts import CATALOG_COMPONENT, Manifest, load_component
from shopserve.catalog_files import CatalogFiles
from shopserve.interactions import IdMap, RowSets, to_rowsets
from transformers_pre.rewrite import QueryRewriter, load_synonyms, query_tokens


def document_frequencies(corpus: bm25s.tokenization.Tokenized) -> dict[str, int]:
    """Items using each token of an indexed corpus."""
    # One (document, token) pair per distinct token of each document, counted per token at once.
    lengths = np.fromiter((len(ids) for ids in corpus.ids), dtype=np.int64, count=len(corpus.ids))
    flat = np.fromiter((i for ids in corpus.ids for i in ids), dtype=np.int64,
                       count=int(lengths.sum()))
    documents = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    pairs = np.unique(documents * len(corpus.vocab) + flat)
    counts = np.bincount(pairs % len(corpus.vocab), minlength=len(corpus.vocab))
    return {token: int(counts[i]) for token, i in corpus.vocab.items()}


@dataclass
class Catalog:
    """Items (row-aligned arrays), the BM25 index over their text, and purchases per user.

    Attributes:
        items: Item id <-> row.
        titles: Title per row.
        categories: Category per row.
        prices: Price per row (float32).
        popularity: Popularity prior per row, scaled to [0, 1] (float32).
        popular_order: Rows by descending popularity.
        users: User id <-> row of ``purchases``.
        purchases: Per user row, the item rows bought (for ``exclude_purchased``).
        bm25: BM25 (Lucene variant) over title + attributes.
        rewriter: Spelling correction and mined synonyms applied to query tokens before BM25.
        manifest: The component's manifest.
        has_synonyms: Whether the component carried a mined synonym table (older bundles do not).
    """

    items: IdMap
    titles: np.ndarray
    categories: np.ndarray
    prices: np.ndarray
    popularity: np.ndarray
    popular_order: np.ndarray
    users: IdMap
    purchases: RowSets
    bm25: bm25s.BM25
    rewriter: QueryRewriter
    manifest: Manifest | None = None
    has_synonyms: bool = False

    @classmethod
    def from_files(cls, files: CatalogFiles, manifest: Manifest | None = None,
                   synonyms: Mapping[str, str] | None = None) -> Catalog:
        """Index a catalog component's files; ``synonyms`` is the mined table (see ``rewrite``)."""
        items = files.items
        corpus = bm25s.tokenize(list(files.item_text()), stopwords="en", show_progress=False)
        document_frequency = document_frequencies(corpus)
        bm25 = bm25s.BM25(method="lucene")
        bm25.index(corpus, show_progress=False)
        popularity = items["popularity"].astype(np.float32)
        popularity = popularity / max(float(popularity.max()), 1e-12)
        item_map = files.item_map
        users = IdMap.from_ids(files.user_ids)
        return cls(
            items=item_map, titles=items["title"], categories=items["category"],
            prices=items["price"].astype(np.float32), popularity=popularity,
            popular_order=np.argsort(-popularity, kind="stable"), users=users,
            purchases=to_rowsets(files.events("purchase"), users, item_map), bm25=bm25,
            rewriter=QueryRewriter(document_frequency, synonyms or {}), manifest=manifest,
            has_synonyms=synonyms is not None,
        )

    @classmethod
    def load(cls, folder: Path) -> Catalog:
        """Verify and load the ``catalog`` component of a bundle, its synonym table included."""
        manifest = load_component(folder, CATALOG_COMPONENT)
        return cls.from_files(CatalogFiles.open(folder), manifest, load_synonyms(folder))

    def __len__(self) -> int:
        return len(self.items)

    def rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Row of each item id, -1 if unknown."""
        return self.items.index(item_ids)

    def purchased_rows(self, user_id: int) -> np.ndarray:
        """Rows of the items a user bought (empty for unknown or anonymous users)."""
        row = int(self.users.index(np.array([user_id]))[0])
        if row < 0:
            return np.empty(0, dtype=np.int64)
        return self.purchases.row(row)

    def filter_mask(
        self,
        category: str | None,
        min_price: float | None,
        max_price: float | None,
        exclude_rows: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """Boolean mask of allowed rows, or None when nothing is filtered."""
        if category is None and min_price is None and max_price is None and (
            exclude_rows is None or exclude_rows.size == 0
        ):
            return None
        mask = np.ones(len(self), dtype=bool)
        if category is not None:
            mask &= self.categories == category
        if min_price is not None:
            mask &= self.prices >= min_price
        if max_price is not None:
            mask &= self.prices <= max_price
        if exclude_rows is not None and exclude_rows.size:
            mask[exclude_rows] = False
        return mask

    def lexical(self, query: str, k: int, mask: np.ndarray | None, rewrite: bool = True
                ) -> tuple[np.ndarray, np.ndarray]:
        """BM25 top-``k`` rows with a positive score, best first, within ``mask``.

        ``rewrite`` corrects spelling and maps mined synonyms to catalog terms first.
        """
        tokens = query_tokens(query)
        if rewrite:
            tokens = self.rewriter.rewrite(tokens)
        if not tokens:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        scores = self.bm25.get_scores(tokens).astype(np.float32, copy=False)
        if mask is not None:
            scores = np.where(mask, scores, 0.0)
        positive = np.flatnonzero(scores > 0)
        if positive.size > k:
            positive = positive[np.argpartition(-scores[positive], k - 1)[:k]]
        order = positive[np.argsort(-scores[positive], kind="stable")]
        return order.astype(np.int64), scores[order]

    def popular(self, k: int, mask: np.ndarray | None) -> np.ndarray:
        """The ``k`` most popular rows within ``mask``."""
        order = self.popular_order if mask is None else self.popular_order[mask[self.popular_order]]
        return order[:k]
