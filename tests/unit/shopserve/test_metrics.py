"""Ranking metrics: perfect = 1, no hit = 0, and one hand-computed value each."""

import math

import pytest

from shopserve.metrics import (
    dcg_at_k,
    hit_rate_at_k,
    mean_metric,
    mrr,
    ndcg_at_k,
    recall_at_k,
)

GRADED = {1: 3.0, 2: 2.0, 3: 1.0}


@pytest.mark.parametrize(
    ("metric", "k"),
    [(ndcg_at_k, 3), (recall_at_k, 3), (hit_rate_at_k, 3), (mrr, 3)],
)
def test_perfect_ranking_scores_one(metric, k):
    assert metric([1, 2, 3, 9], GRADED, k) == pytest.approx(1.0)


@pytest.mark.parametrize("metric", [ndcg_at_k, recall_at_k, hit_rate_at_k, mrr])
def test_no_hit_scores_zero(metric):
    assert metric([7, 8, 9], GRADED, 3) == 0.0


@pytest.mark.parametrize("metric", [ndcg_at_k, recall_at_k, hit_rate_at_k, mrr])
def test_no_relevant_item_is_nan(metric):
    assert math.isnan(metric([1, 2], {5: 0.0}, 2))


def test_ndcg_hand_computed():
    # ranked 9 (0), 2 (gain 2**2-1=3), 1 (gain 2**3-1=7) at ranks 1..3
    dcg = 3 / math.log2(3) + 7 / math.log2(4)
    idcg = 7 / math.log2(2) + 3 / math.log2(3) + 1 / math.log2(4)
    assert dcg_at_k([9, 2, 1], GRADED, 3) == pytest.approx(dcg)
    assert ndcg_at_k([9, 2, 1], GRADED, 3) == pytest.approx(dcg / idcg)
    assert ndcg_at_k([9, 2, 1], GRADED, 3) == pytest.approx(0.57414, abs=1e-5)


@pytest.mark.parametrize(
    ("metric", "ranked", "k", "expected"),
    [
        (recall_at_k, [9, 3, 8, 1], 4, 2 / 3),
        (recall_at_k, [9, 3, 8, 1], 2, 1 / 3),
        (mrr, [9, 8, 3], 3, 1 / 3),
        (mrr, [9, 8, 3], 2, 0.0),
        (hit_rate_at_k, [9, 8, 3], 3, 1.0),
    ],
)
def test_hand_computed_values(metric, ranked, k, expected):
    assert metric(ranked, GRADED, k) == pytest.approx(expected)


def test_mean_skips_queries_without_relevant_items():
    assert mean_metric(recall_at_k, [[1], [2], [3]], [{1: 1}, {9: 1}, {}], 1) == pytest.approx(0.5)


def test_k_must_be_positive():
    with pytest.raises(ValueError):
        ndcg_at_k([1], GRADED, 0)
