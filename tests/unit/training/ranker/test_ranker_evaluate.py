"""Reranking evaluation: oracle = 1, constant and reversed scorers lower; BM25; per-kind split."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from training.ranker.evaluate import Bm25Scorer, rerank
from training.ranker.pairs import CandidateList, Query


def _list(key: int, kind: str, text: str, grades: list[int]) -> CandidateList:
    ids = np.arange(100 * key, 100 * key + len(grades), dtype=np.int64)
    judged = {int(i): g for i, g in zip(ids, grades, strict=True)}
    return CandidateList(Query(key, text, kind, judged), ids, [f"t{i}" for i in ids],
                         np.asarray(grades, dtype=np.int64))  # fmt: skip


LISTS = [_list(1, "exact", "a", [0, 3, 1, 2, 0]), _list(2, "synonym", "b", [2, 0, 0, 3])]


def test_oracle_scores_one() -> None:
    report = rerank(LISTS, lambda c: c.grades.astype(float))
    assert report.ndcg == pytest.approx(1.0) and report.mrr == pytest.approx(1.0)
    assert report.by_kind["synonym"]["ndcg"] == pytest.approx(1.0)
    assert report.queries == 2


def test_reversed_oracle_scores_less() -> None:
    report = rerank(LISTS, lambda c: -c.grades.astype(float))
    assert report.ndcg < 0.7 and report.mrr < 0.5


def test_hand_computed_mrr_counts_exact_items_only() -> None:
    # Ranked as listed: list 1 has its exact item second; list 2 has it fourth.
    report = rerank(LISTS, lambda c: -np.arange(len(c.grades), dtype=float))
    assert report.mrr == pytest.approx((1 / 2 + 1 / 4) / 2)


def test_scorer_must_score_every_candidate() -> None:
    with pytest.raises(ValueError):
        rerank(LISTS, lambda c: np.zeros(1))


def test_bm25_prefers_the_lexical_match() -> None:
    ids = np.asarray([1, 2, 3], dtype=np.int64)
    titles = ["blue cotton sock", "red leather boot", "red wool sock"]
    scorer = Bm25Scorer(ids, titles)
    cands = CandidateList(Query(0, "Red Sock", "exact", {3: 3}), ids, titles,
                          np.asarray([1, 1, 3]))  # fmt: skip
    scores = scorer(cands)
    assert int(np.argmax(scores)) == 2
    unknown = CandidateList(Query(1, "zzz", "typo", {3: 3}), ids, titles, np.asarray([0, 0, 3]))
    assert scorer(unknown).tolist() == [0.0, 0.0, 0.0]


def test_per_query_ndcg_is_in_list_order_and_averages_to_the_mean() -> None:
    report = rerank(LISTS, lambda c: -np.arange(len(c.grades), dtype=float))
    assert len(report.per_query) == len(LISTS)
    assert np.mean(report.per_query) == pytest.approx(report.ndcg)
    assert report.per_query[0] != report.per_query[1]
    assert "per_query" not in report.as_dict()


def test_per_query_ndcg_survives_a_json_round_trip() -> None:
    report = rerank(LISTS, lambda c: c.grades.astype(float))
    again = type(report)(**json.loads(json.dumps(dataclasses.asdict(report))))
    assert again == report and isinstance(again.per_query, tuple)
