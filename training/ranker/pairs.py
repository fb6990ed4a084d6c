"""Candidate lists, training pairs, tokenisation with dynamic padding, and the max sequence length.

Pure functions over plain arrays: no I/O, no model. A *candidate list* is what the ranker sees at
serving time for one query (the judged items plus hard and random negatives); training pairs are
the flattened candidate lists of the training queries, evaluation reranks the held-out queries'
lists, so both see the same distribution.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from shopserve.protocol import INPUT_IDS

# One encoder for training and serving: the transformer tokenises exactly as the ranker trained.
from shopserve.text import encode_pairs as encode_pairs

MAX_GRADE = 3
"""Highest relevance grade (3 exact, 2 substitute, 1 complement, 0 irrelevant)."""


@dataclass(frozen=True)
class PairCatalog:
    """The item side the ranker needs: ids, titles, categories and attribute tuples.

    Attributes:
        item_ids: int64 item ids, shape ``[N]``.
        titles: Product titles, one per item.
        categories: Category name of each item.
        attributes: Per item, the attribute values (brand, colour, ...) that a hard negative must
            differ in; compared as tuples.
    """

    item_ids: np.ndarray
    titles: Sequence[str]
    categories: Sequence[str]
    attributes: Sequence[tuple[str, ...]]

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        if not len(self.titles) == len(self.categories) == len(self.attributes) == n:
            raise ValueError("catalog columns differ in length")

    def index(self) -> dict[int, int]:
        """Item id -> row."""
        return {int(item): row for row, item in enumerate(self.item_ids)}


@dataclass(frozen=True)
class Query:
    """One search query with its graded judgements.

    Attributes:
        key: Query index in the data set (used for the split and for grouping).
        text: The query text as a user typed it.
        kind: ``exact``, ``synonym`` or ``typo``.
        judged: Item id -> grade (0..3) of the judged items.
    """

    key: int
    text: str
    kind: str
    judged: Mapping[int, int]


@dataclass(frozen=True)
class CandidateList:
    """The items one query's reranking sees, with their grades (0 for the negatives).

    Attributes:
        query: The query.
        item_ids: int64 item ids, shape ``[C]``.
        titles: Titles of those items.
        grades: int64 grades, shape ``[C]``.
    """

    query: Query
    item_ids: np.ndarray
    titles: list[str]
    grades: np.ndarray

    def relevance(self) -> dict[int, float]:
        """Item id -> graded gain, the form ``shopserve.metrics`` takes."""
        return {int(i): float(g) for i, g in zip(self.item_ids, self.grades, strict=True)}


@dataclass(frozen=True)
class Pairs:
    """Flat (query, title, grade) training pairs, grouped by ``query_keys``."""

    queries: list[str]
    titles: list[str]
    grades: np.ndarray
    query_keys: np.ndarray

    def __len__(self) -> int:
        return len(self.queries)

    def labels(self) -> np.ndarray:
        """Grades scaled to [0, 1]: the pointwise regression targets."""
        return (self.grades / MAX_GRADE).astype(np.float32)


Grader = Callable[[int, np.ndarray], np.ndarray]
"""``grader(query_key, item_ids) -> grades``: the relevance rule, for items nobody judged."""


def candidate_lists(
    queries: Sequence[Query],
    catalog: PairCatalog,
    *,
    hard_negatives: int = 8,
    random_negatives: int = 6,
    max_per_grade: int = 8,
    grader: Grader | None = None,
    seed: int = 0,
) -> list[CandidateList]:
    """Build each query's candidate list: judged items + hard negatives + random negatives.

    A hard negative shares the category of one of the query's best judged items but differs from
    it in its attributes (same product type, wrong brand/colour/...): the mistake a lexical ranker
    makes. A random negative comes from anywhere in the catalog. Neither was judged for the query;
    ``grader`` grades them by the data set's rule (a hard negative is usually a substitute, grade
    2, not an exact match), else they count as irrelevant. Queries with no item of grade > 0 are
    dropped (NDCG is undefined for them).

    Args:
        queries: Queries with judgements.
        catalog: Items.
        hard_negatives: Hard negatives per query (fewer when the category is small).
        random_negatives: Random negatives per query.
        max_per_grade: Judged items kept per grade (sampled), so lists stay near the 50 pairs a
            request carries and no grade floods the list.
        grader: The relevance rule for the unjudged negatives.
        seed: Seed of the sampling; the same inputs and seed give the same lists.
    """
    rng = np.random.default_rng(seed)
    row_of = catalog.index()
    categories = np.asarray(catalog.categories)
    by_category: dict[str, np.ndarray] = {
        c: np.flatnonzero(categories == c) for c in np.unique(categories)
    }
    out: list[CandidateList] = []
    for query in queries:
        # Sorted by id: deterministic regardless of the mapping's order.
        judged = sorted(
            (int(item), int(grade)) for item, grade in query.judged.items() if int(item) in row_of
        )
        if not any(g > 0 for _, g in judged):
            continue
        kept: list[tuple[int, int]] = []
        for grade in range(MAX_GRADE, -1, -1):
            of_grade = [ig for ig in judged if ig[1] == grade]
            kept.extend(of_grade[i] for i in _sample(rng, range(len(of_grade)), max_per_grade))
        seen = {int(i) for i in query.judged}
        anchor = row_of[kept[0][0]]
        anchor_attrs = catalog.attributes[anchor]
        hard_pool = [
            int(r) for r in by_category[catalog.categories[anchor]]
            if int(catalog.item_ids[r]) not in seen and catalog.attributes[r] != anchor_attrs
        ]
        hard = _sample(rng, hard_pool, hard_negatives)
        taken = seen | {int(catalog.item_ids[r]) for r in hard}
        rand = _sample_excluding(rng, catalog.item_ids, taken, random_negatives)
        new_rows = hard + rand
        new_ids = np.asarray([catalog.item_ids[r] for r in new_rows], dtype=np.int64)
        if grader is not None and len(new_ids):
            new_grades = [int(g) for g in grader(query.key, new_ids)]
        else:
            new_grades = [0] * len(new_rows)
        rows = [row_of[i] for i, _ in kept] + new_rows
        grades = [g for _, g in kept] + new_grades
        order = rng.permutation(len(rows))  # no position hint for a model or a tie-break
        out.append(
            CandidateList(
                query=query,
                item_ids=np.asarray([catalog.item_ids[rows[i]] for i in order], dtype=np.int64),
                titles=[str(catalog.titles[rows[i]]) for i in order],
                grades=np.asarray([grades[i] for i in order], dtype=np.int64),
            )
        )
    return out


def _sample(rng: np.random.Generator, pool: Sequence[int], n: int) -> list[int]:
    if n <= 0 or not len(pool):
        return []
    picked = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
    return [int(pool[i]) for i in picked]


def _sample_excluding(
    rng: np.random.Generator, item_ids: np.ndarray, exclude: set[int], n: int
) -> list[int]:
    if n <= 0:
        return []
    allowed = np.flatnonzero(~np.isin(item_ids, np.fromiter(exclude, np.int64, len(exclude))))
    return _sample(rng, allowed.tolist(), n)


def flatten(lists: Sequence[CandidateList]) -> Pairs:
    """The (query, title, grade) pairs of candidate lists, in list order."""
    queries: list[str] = []
    titles: list[str] = []
    grades: list[int] = []
    keys: list[int] = []
    for cands in lists:
        queries.extend([cands.query.text] * len(cands.titles))
        titles.extend(cands.titles)
        grades.extend(int(g) for g in cands.grades)
        keys.extend([cands.query.key] * len(cands.titles))
    return Pairs(
        queries=queries,
        titles=titles,
        grades=np.asarray(grades, dtype=np.int64),
        query_keys=np.asarray(keys, dtype=np.int64),
    )


# --------------------------------------------------------------------------------------------------
# Tokenisation.
# --------------------------------------------------------------------------------------------------


def pair_lengths(
    tokenizer: PreTrainedTokenizerBase, queries: Sequence[str], titles: Sequence[str]
) -> np.ndarray:
    """Untruncated token count of each pair, special tokens included."""
    encoded = tokenizer(list(queries), list(titles), truncation=False, padding=False)
    return np.asarray([len(ids) for ids in encoded[INPUT_IDS]], dtype=np.int64)


def choose_max_length(
    lengths: np.ndarray, percentile: float = 99.5, multiple: int = 8, cap: int = 512
) -> int:
    """The max sequence length: a high percentile of pair lengths, rounded up to ``multiple``.

    Rounding to a multiple of 8 keeps matrix shapes friendly to SIMD and tensor cores; the cap is
    the model's position-embedding limit.
    """
    if not len(lengths):
        raise ValueError("no pair lengths to choose a max length from")
    value = float(np.percentile(np.asarray(lengths), percentile))
    rounded = int(np.ceil(value / multiple) * multiple)
    return int(min(max(rounded, multiple), cap))


def batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` over ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def length_grouped_batches(
    lengths: np.ndarray, size: int, rng: np.random.Generator, chunk: int
) -> list[np.ndarray]:
    """One epoch of shuffled batches of row indices, each of pairs of similar length.

    The rows are shuffled, cut into chunks of ``chunk`` batches, each chunk sorted by length and
    cut into batches; the batches are then shuffled. A batch is padded to its longest pair, so
    this cuts the padding a step computes (on the demo pairs, random batches of 32 carry 1.47x
    the real tokens, grouped in chunks of 8 batches 1.08x) while every batch still draws from a
    random sample of the whole set (Hugging Face's ``group_by_length`` does the same).

    Args:
        lengths: Token count of each row.
        size: Rows per batch.
        rng: Source of the shuffles.
        chunk: Batches per sorted chunk; 1 gives plain random batches.
    """
    if size <= 0 or chunk <= 0:
        raise ValueError("batch size and chunk must be positive")
    order = rng.permutation(len(lengths))
    out: list[np.ndarray] = []
    span = size * chunk
    for start in range(0, len(order), span):
        rows = order[start:start + span]
        rows = rows[np.argsort(np.asarray(lengths)[rows], kind="stable")]
        out.extend(rows[sl] for sl in batches(len(rows), size))
    return [out[i] for i in rng.permutation(len(out))]
