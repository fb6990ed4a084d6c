"""The catalog the transformer serves from: item facts, the lexical index, users' purchases.

Loaded once from the bundle's verified ``catalog`` component; everything here is read-only and
pure, so one instance is shared by every request.

The lexical (BM25) index is the slow part of a start to build, so the package step builds it once
(:func:`write_lexical_index`) and the component carries it, checksummed by its manifest like every
other file; :meth:`Catalog.load` reads it back (:func:`load_lexical_index`). A component without it
(a bundle older than it), or with one built by another recipe or from other items, is indexed at
load instead: the index is the same either way, only the start is slower.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import bm25s
import numpy as np

from shopserve.artifacts import CATALOG_COMPONENT, Manifest, load_component, sha256_file
from shopserve.catalog_files import ITEMS_FILE, LEXICAL_INDEX_DIR, LEXICAL_INDEX_META, CatalogFiles
from shopserve.interactions import IdMap, RowSets, to_rowsets
from transformers_pre.rewrite import QueryRewriter, load_synonyms, query_tokens

log = logging.getLogger(__name__)

#: Version of the lexical index's recipe (:func:`build_lexical_index`: the item text, tokenisation,
#: stop words, BM25 variant). Bump it when the recipe changes: a bundle's index built the old way is
#: then rebuilt at load instead of used.
LEXICAL_INDEX_VERSION = 1


def build_lexical_index(texts: Sequence[str]) -> bm25s.BM25:
    """BM25 (Lucene variant) over item texts (:func:`shopserve.catalog_files.item_text`), with the
    tokenisation queries get (:func:`transformers_pre.rewrite.query_tokens`)."""
    corpus = bm25s.tokenize(list(texts), stopwords="en", show_progress=False)
    bm25 = bm25s.BM25(method="lucene")
    bm25.index(corpus, show_progress=False)
    return bm25


def document_frequencies(bm25: bm25s.BM25) -> dict[str, int]:
    """Items using each token of an index.

    Read off the index rather than counted from its corpus, so a loaded index needs no corpus:
    the index stores one score per (item, token) pair the item uses, and a Lucene BM25 score is
    never 0, so a token's column holds exactly one entry per item using it.
    """
    counts = np.diff(bm25.scores["indptr"])
    # bm25s appends an empty token "" to the vocabulary, past the last column: no item uses it.
    return {token: int(counts[i]) for token, i in bm25.vocab_dict.items() if i < len(counts)}


def term_maxima(bm25: bm25s.BM25) -> dict[str, float]:
    """Each token's best BM25 score over the items (its column's largest entry): what the token
    alone can add to an item's score, the unit of :meth:`Catalog.lexical_hits`'s ideal score."""
    indptr = np.asarray(bm25.scores["indptr"])
    data = np.asarray(bm25.scores["data"], dtype=np.float32)
    counts = np.diff(indptr)
    best = np.zeros(counts.shape[0], dtype=np.float32)
    used = counts > 0
    if data.size:
        best[used] = np.maximum.reduceat(data, indptr[:-1][used])
    return {token: float(best[i]) for token, i in bm25.vocab_dict.items() if i < len(best)}


@dataclass(frozen=True)
class LexicalHits:
    """BM25's answer to one query.

    Attributes:
        rows: Catalog rows with a positive score, best first.
        scores: Their BM25 scores.
        ideal: The query's ideal score: the sum over its (rewritten) tokens of each token's best
            score in the catalog (:func:`term_maxima`), a token the catalog does not use counting
            as a typical one (the median token's best score). A title holding every token of the
            query once would score about this, so ``scores / ideal`` is the share of the query's
            lexical evidence a title matches: close to 1 for an exact query's products, small for
            a title that matches one filler word of a described need. 0 for a query without
            tokens.
    """

    rows: np.ndarray
    scores: np.ndarray
    ideal: float


def write_lexical_index(folder: Path) -> None:
    """Build a catalog component folder's lexical index and save it there (the package step).

    Call it once the component's ``items.npz`` is in place and before its manifest is written, so
    that the manifest checksums the index too. Replaces an index already there.
    """
    folder = Path(folder)
    target = folder / LEXICAL_INDEX_DIR
    if target.exists():
        shutil.rmtree(target)
    build_lexical_index(CatalogFiles.open(folder).item_text()).save(target, show_progress=False)
    meta = {"format_version": LEXICAL_INDEX_VERSION,
            "items_sha256": sha256_file(folder / ITEMS_FILE)}
    (target / LEXICAL_INDEX_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_lexical_index(folder: Path, manifest: Manifest) -> bm25s.BM25 | None:
    """A verified component's prebuilt lexical index, or None when it has no usable one.

    Usable: the manifest lists every file of it (so :func:`~shopserve.artifacts.load_component` has
    checked them all), and it was built by this :data:`LEXICAL_INDEX_VERSION` from the component's
    ``items.npz``. Otherwise the caller builds the index (:func:`build_lexical_index`).

    Args:
        folder: The component folder.
        manifest: Its manifest, the folder already verified against it.
    """
    folder = Path(folder)
    index_dir = folder / LEXICAL_INDEX_DIR
    listed = {rel for rel in manifest.files if rel.startswith(f"{LEXICAL_INDEX_DIR}/")}
    present = {p.relative_to(folder).as_posix() for p in index_dir.rglob("*") if p.is_file()}
    if not listed and not present:
        log.info("%s: no prebuilt lexical index (a bundle older than it): indexing the items", folder)
        return None
    meta_file = f"{LEXICAL_INDEX_DIR}/{LEXICAL_INDEX_META}"
    meta = json.loads((index_dir / LEXICAL_INDEX_META).read_text()) if meta_file in listed else {}
    if not present <= listed:
        reason = f"files the manifest does not list: {sorted(present - listed)}"
    elif meta.get("format_version") != LEXICAL_INDEX_VERSION:
        reason = f"recipe {meta.get('format_version')}, expected {LEXICAL_INDEX_VERSION}"
    elif meta.get("items_sha256") != manifest.files.get(ITEMS_FILE):
        reason = f"built from another {ITEMS_FILE}"
    else:
        return bm25s.BM25.load(index_dir, mmap=False, show_progress=False)
    log.warning("%s: prebuilt lexical index not used (%s): indexing the items", folder, reason)
    return None


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
        prebuilt_index: Whether ``bm25`` came prebuilt with the component (else it was built at
            load).
        term_best: Each catalog token's best BM25 score (:func:`term_maxima`).
        unknown_term_score: What a query token the catalog does not use counts for in a query's
            ideal score (the median of ``term_best``).
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
    prebuilt_index: bool = False
    term_best: dict[str, float] = field(default_factory=dict)
    unknown_term_score: float = 0.0

    def __post_init__(self) -> None:
        if not self.term_best:
            self.term_best = term_maxima(self.bm25)
        if not self.unknown_term_score and self.term_best:
            self.unknown_term_score = float(np.median(list(self.term_best.values())))

    @classmethod
    def from_files(cls, files: CatalogFiles, manifest: Manifest | None = None,
                   synonyms: Mapping[str, str] | None = None) -> Catalog:
        """Read a catalog component's files; ``synonyms`` is the mined table (see ``rewrite``).

        The lexical index is the component's prebuilt one when ``manifest`` is given (the folder
        verified against it) and lists a usable one (:func:`load_lexical_index`), else it is built
        from the items here.
        """
        items = files.items
        bm25 = load_lexical_index(files.folder, manifest) if manifest is not None else None
        prebuilt = bm25 is not None
        if bm25 is None:
            bm25 = build_lexical_index(files.item_text())
        popularity = items["popularity"].astype(np.float32)
        popularity = popularity / max(float(popularity.max()), 1e-12)
        item_map = files.item_map
        users = IdMap.from_ids(files.user_ids)
        return cls(
            items=item_map, titles=items["title"], categories=items["category"],
            prices=items["price"].astype(np.float32), popularity=popularity,
            popular_order=np.argsort(-popularity, kind="stable"), users=users,
            purchases=to_rowsets(files.events("purchase"), users, item_map), bm25=bm25,
            rewriter=QueryRewriter(document_frequencies(bm25), synonyms or {}), manifest=manifest,
            has_synonyms=synonyms is not None, prebuilt_index=prebuilt,
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
        """BM25 top-``k`` rows with a positive score, best first, within ``mask``, and their
        scores (:meth:`lexical_hits` without the ideal score)."""
        hits = self.lexical_hits(query, k, mask, rewrite)
        return hits.rows, hits.scores

    def lexical_hits(self, query: str, k: int, mask: np.ndarray | None, rewrite: bool = True
                     ) -> LexicalHits:
        """BM25 top-``k`` rows with a positive score, best first, within ``mask``, with the
        query's ideal score (:class:`LexicalHits`).

        ``rewrite`` corrects spelling and maps mined synonyms to catalog terms first.
        """
        tokens = query_tokens(query)
        if rewrite:
            tokens = self.rewriter.rewrite(tokens)
        if not tokens:
            return LexicalHits(np.empty(0, np.int64), np.empty(0, np.float32), 0.0)
        ideal = sum(self.term_best.get(t, self.unknown_term_score) for t in tokens)
        scores = self.bm25.get_scores(tokens).astype(np.float32, copy=False)
        if mask is not None:
            scores = np.where(mask, scores, 0.0)
        positive = np.flatnonzero(scores > 0)
        if positive.size > k:
            positive = positive[np.argpartition(-scores[positive], k - 1)[:k]]
        order = positive[np.argsort(-scores[positive], kind="stable")]
        return LexicalHits(order.astype(np.int64), scores[order], float(ideal))

    def rows_with_all(self, text: str, rewrite: bool = True) -> np.ndarray:
        """Rows whose lexical text (title and attributes) holds every (rewritten) token of
        ``text``, sorted; none when ``text`` has no token or one the catalog does not use (a
        refused value no item holds excludes nothing)."""
        tokens = query_tokens(text)
        if rewrite:
            tokens = self.rewriter.rewrite(tokens)
        indptr = self.bm25.scores["indptr"]
        indices = self.bm25.scores["indices"]
        rows: np.ndarray | None = None
        for token in dict.fromkeys(tokens):
            column = self.bm25.vocab_dict.get(token)
            if column is None or column + 1 >= len(indptr):
                return np.empty(0, np.int64)
            holding = np.asarray(indices[indptr[column]:indptr[column + 1]], dtype=np.int64)
            rows = holding if rows is None else np.intersect1d(rows, holding, assume_unique=True)
        return np.empty(0, np.int64) if rows is None else np.unique(rows)

    def popular(self, k: int, mask: np.ndarray | None) -> np.ndarray:
        """The ``k`` most popular rows within ``mask``."""
        order = self.popular_order if mask is None else self.popular_order[mask[self.popular_order]]
        return order[:k]
