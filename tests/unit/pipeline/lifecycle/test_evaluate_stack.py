"""The stack evaluation's judging, per-class tables and the cascade's choice of K."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.lifecycle.evaluate_stack import (
    K_SWEEP,
    LEXICAL_KINDS,
    VARIANTS,
    Answers,
    choose_k,
    format_classes,
    format_sweep,
    format_table,
    judge,
    sweep_variants,
)
from training.data.generator import Dataset, GeneratorConfig, generate


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return generate(GeneratorConfig.tiny())


def _ideal(dataset: Dataset, qid: int) -> np.ndarray:
    items = dataset.items.item_id
    grades = dataset.grade(np.full(items.shape, qid), items)
    order = np.argsort(-grades, kind="stable")
    return items[order][grades[order] > 0][:50]


def test_perfect_rankings_score_one_in_every_class(dataset: Dataset) -> None:
    ids = dataset.queries.query_id
    answers = Answers([_ideal(dataset, int(q)) for q in ids], 0, 0, [1.0] * ids.size, 50.0)
    judged = judge(dataset, ids, np.full(ids.size, -1), answers)
    assert judged.ndcg_at_10 == pytest.approx(1.0)
    assert set(judged.by_kind) == set(np.unique(dataset.queries.kind).tolist())
    for ndcg, recall in judged.by_kind.values():
        assert ndcg == pytest.approx(1.0)
        assert recall == pytest.approx(1.0)
    assert judged.lexical == pytest.approx((1.0, 1.0))
    assert judged.ranker_pairs == 50.0


def test_empty_rankings_score_zero_and_are_told_apart_by_class(dataset: Dataset) -> None:
    ids = dataset.queries.query_id
    kinds = dataset.queries.kind
    # Perfect for the first lexical class, empty for every other one.
    rankings = [_ideal(dataset, int(q)) if k == LEXICAL_KINDS[0] else np.empty(0, np.int64)
                for q, k in zip(ids, kinds, strict=True)]
    judged = judge(dataset, ids, np.full(ids.size, -1), Answers(rankings, 0, 0, [1.0]))
    assert judged.by_kind[LEXICAL_KINDS[0]][0] == pytest.approx(1.0)
    others = [v[0] for k, v in judged.by_kind.items() if k != LEXICAL_KINDS[0]]
    assert others and all(v == 0.0 for v in others)
    counts = {str(k): int(n) for k, n in zip(*np.unique(kinds, return_counts=True), strict=True)}
    table = format_classes([("x", judged)], counts)
    assert f"{LEXICAL_KINDS[0]} (n={counts[LEXICAL_KINDS[0]]})" in table
    assert "1.0000 / 1.0000" in table
    table = format_table([("x", judged)], ids.size, 0)
    assert "NDCG@10 understanding" in table and "Recall@50 understanding" in table


def test_the_default_k_is_the_smallest_within_the_tolerance_of_the_largest() -> None:
    assert choose_k({10: 0.950, 20: 0.978, 30: 0.981, 50: 0.982}) == 20
    assert choose_k({10: 0.9771, 20: 0.978, 50: 0.982}) == 10  # 0.9771 >= 0.982 - 0.005
    assert choose_k({10: 0.90, 50: 0.98}) == 50
    # A smaller K that beats the largest is within the tolerance too.
    assert choose_k({10: 0.99, 50: 0.98}) == 10


def test_the_sweep_rows_set_the_cascade_k_and_the_table_marks_the_choice(dataset: Dataset
                                                                         ) -> None:
    rows = sweep_variants()
    assert [v.rank_candidates for v in rows] == list(K_SWEEP)
    assert [v.search_env["SEARCH_RANK_CANDIDATES"] for v in rows] == [str(k) for k in K_SWEEP]
    assert {v.name for v in rows}.isdisjoint(v.name for v in VARIANTS)
    ids = dataset.queries.query_id[:5]
    judged = judge(dataset, ids, np.full(ids.size, -1),
                   Answers([_ideal(dataset, int(q)) for q in ids], 0, 0, [2.0], 20.0))
    table = format_sweep([(10, judged), (20, judged)], 10)
    assert "default K = 10" in table
    assert "|  10 |" in table and table.splitlines()[3].endswith("*")
