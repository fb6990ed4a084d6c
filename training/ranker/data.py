"""Adapter from the shared data set (``training.data.generator.Dataset``) to the ranker's inputs."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from training.data.generator import Dataset
from training.ranker.pairs import Grader, PairCatalog, Query

ATTRIBUTES = ("brand", "colour", "material", "size", "gender")
"""Item attributes a hard negative must differ in (any one of them)."""


def catalog_of(dataset: Dataset) -> PairCatalog:
    """The ranker's view of the catalog: ids, titles, categories, attribute tuples."""
    items = dataset.items
    columns = [getattr(items, name).tolist() for name in ATTRIBUTES]
    return PairCatalog(
        item_ids=np.asarray(items.item_id, dtype=np.int64),
        titles=[str(t) for t in items.title.tolist()],
        categories=[str(c) for c in items.category.tolist()],
        attributes=[tuple(str(v) for v in values) for values in zip(*columns, strict=True)],
    )


def queries_of(dataset: Dataset, query_ids: Sequence[int] | np.ndarray | None = None) -> list[Query]:
    """The queries (all, or those of ``query_ids``) with their judged items and grades."""
    judged: dict[int, dict[int, int]] = defaultdict(dict)
    qrels = dataset.qrels
    for q, item, grade in zip(
        qrels.query_id.tolist(), qrels.item_id.tolist(), qrels.grade.tolist(), strict=True
    ):
        judged[int(q)][int(item)] = int(grade)
    queries = dataset.queries
    wanted = None if query_ids is None else {int(q) for q in np.asarray(query_ids).tolist()}
    out = []
    for q, text, kind in zip(
        queries.query_id.tolist(), queries.text.tolist(), queries.kind.tolist(), strict=True
    ):
        if wanted is None or int(q) in wanted:
            out.append(Query(key=int(q), text=str(text), kind=str(kind), judged=judged[int(q)]))
    return out


def grader_of(dataset: Dataset) -> Grader:
    """The data set's relevance rule for any (query, items)."""

    def grade(query_key: int, item_ids: np.ndarray) -> np.ndarray:
        return np.asarray(dataset.grade(np.int64(query_key), item_ids), dtype=np.int64)

    return grade
