"""Ranking metrics, per list and in bulk: perfect = 1, no hit = 0, one hand-computed value each;
the bulk path equals the per-list functions."""

import math

import numpy as np
import pytest
import scipy.sparse as sp

from shopserve.metrics import (
    dcg_at_k,
    graded_gains,
    held_out_metrics,
    hit_rate_at_k,
    hit_rate_at_k_batch,
    mean_defined,
    mean_metric,
    mrr,
    ndcg_at_k,
    ndcg_at_k_batch,
    recall_at_k,
    recall_at_k_batch,
    top_k_columns,
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


# ------------------------------------------------------------------------------- the bulk path


def test_capped_recall_divides_by_at_most_k():
    # 3 relevant, 1 found in the top 2: plain 1/3, capped 1/min(3, 2).
    assert recall_at_k([9, 3, 8], GRADED, 2) == pytest.approx(1 / 3)
    assert recall_at_k([9, 3, 8], GRADED, 2, capped=True) == pytest.approx(1 / 2)
    assert recall_at_k([1, 2, 9], GRADED, 2, capped=True) == pytest.approx(1.0)


# Rows: perfect, no hit, the hand-computed list of test_ndcg_hand_computed, nothing relevant.
BULK_RANKINGS = [[1, 2, 3, 9], [7, 8, 9], [9, 2, 1], [1, 2]]
BULK_RELEVANCE = [GRADED, GRADED, GRADED, {5: 0.0}]


def _bulk(depth: int = 4):
    return graded_gains(BULK_RANKINGS, BULK_RELEVANCE, depth)


def test_bulk_ndcg_triad():
    ranked, ideal, _ = _bulk()
    values = ndcg_at_k_batch(ranked, ideal, 3)
    dcg = 3 / math.log2(3) + 7 / math.log2(4)
    idcg = 7 / math.log2(2) + 3 / math.log2(3) + 1 / math.log2(4)
    assert values[0] == pytest.approx(1.0)
    assert values[1] == 0.0
    assert values[2] == pytest.approx(dcg / idcg) and values[2] == pytest.approx(0.57414, abs=1e-5)
    assert math.isnan(values[3])


def test_bulk_recall_and_hit_rate_triad():
    ranked, _, relevant = _bulk()
    recall = recall_at_k_batch(ranked, relevant, 3)
    assert recall[0] == pytest.approx(1.0) and recall[1] == 0.0 and math.isnan(recall[3])
    assert recall_at_k_batch(ranked, relevant, 2)[2] == pytest.approx(1 / 3)  # 2 at rank 2 of 3
    assert recall_at_k_batch(ranked, relevant, 2, capped=True)[2] == pytest.approx(1 / 2)
    hits = hit_rate_at_k_batch(ranked, relevant, 1)
    assert hits[0] == 1.0 and hits[1] == 0.0 and hits[2] == 0.0 and math.isnan(hits[3])


def test_bulk_equals_per_list_functions():
    rng = np.random.default_rng(7)
    rankings, relevances = [], []
    for _ in range(200):
        ranked = rng.permutation(60)[: rng.integers(1, 40)]
        judged = rng.choice(60, size=rng.integers(0, 25), replace=False)
        relevances.append({int(i): float(rng.integers(0, 4)) for i in judged})
        rankings.append(ranked)
    ranked, ideal, relevant = graded_gains(rankings, relevances, 50)

    def per_list(metric, k, **kw):
        return [metric(r, rel, k, **kw) for r, rel in zip(rankings, relevances, strict=True)]

    for k in (1, 3, 10, 20, 50):
        for bulk, single in (
            (ndcg_at_k_batch(ranked, ideal, k), per_list(ndcg_at_k, k)),
            (recall_at_k_batch(ranked, relevant, k), per_list(recall_at_k, k)),
            (recall_at_k_batch(ranked, relevant, k, capped=True), per_list(recall_at_k, k, capped=True)),
            (hit_rate_at_k_batch(ranked, relevant, k), per_list(hit_rate_at_k, k)),
        ):
            np.testing.assert_allclose(bulk, single, rtol=1e-12, equal_nan=True)
        assert mean_defined(ndcg_at_k_batch(ranked, ideal, k)) == pytest.approx(
            mean_metric(ndcg_at_k, rankings, relevances, k), rel=1e-12)


def test_held_out_metrics_equal_per_list_functions():
    # 4 users x 6 items; user 3 has nothing held out and is left out of the means.
    scores = np.array([[6, 5, 4, 3, 2, 1], [1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1],
                       [1, 1, 1, 1, 1, 1]], dtype=np.float32)
    train = sp.csr_matrix(np.array([[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0],
                                    [1, 0, 0, 0, 0, 0]]))
    test = sp.csr_matrix(np.array([[0, 1, 0, 0, 1, 0], [1, 0, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1],
                                   [0, 0, 0, 0, 0, 0]]))
    result = held_out_metrics([(np.arange(2), scores[:2]), (np.arange(2, 4), scores[2:])], train, test,
                              (1, 3))
    # The rankings with training items removed, best first.
    rankings = [[1, 2, 3, 4, 5], [4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]]
    held = [{1: 1.0, 4: 1.0}, {0: 1.0}, {2: 1.0, 3: 1.0, 4: 1.0, 5: 1.0}]
    assert result.users == 3
    for k in (1, 3):
        assert result.at("ndcg", k) == pytest.approx(mean_metric(ndcg_at_k, rankings, held, k))
        assert result.at("recall", k) == pytest.approx(
            float(np.mean([recall_at_k(r, h, k, capped=True) for r, h in zip(rankings, held, strict=True)])))
        assert result.at("hit_rate", k) == pytest.approx(mean_metric(hit_rate_at_k, rankings, held, k))
    assert result.at("recall", 1) == pytest.approx(1 / 3)  # only user 0 finds one at rank 1


def test_top_k_columns_skips_excluded_items_and_orders_best_first():
    scores = np.array([[0.1, 0.9, 0.5, 0.7]], dtype=np.float32)
    assert top_k_columns(scores, 2).tolist() == [[1, 3]]
    assert top_k_columns(scores, 2, sp.csr_matrix(np.array([[0, 1, 0, 0]]))).tolist() == [[3, 2]]
    assert scores[0, 1] == pytest.approx(0.9)  # the caller's scores are untouched
