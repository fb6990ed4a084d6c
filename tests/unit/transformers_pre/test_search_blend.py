"""Pure pieces of the search transformer: query normalisation, candidate union, blending."""

import numpy as np
import pytest

from shopserve.text import normalise_query
from transformers_pre import blend


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Red   Sneakers ", "red sneakers"),
        ("Ｓｈｏｅｓ", "shoes"),
        ("T-SHIRT\tnavy\n", "t-shirt navy"),
        ("", ""),
        ("Straße", "strasse"),
    ],
)
def test_normalise_query(raw, expected):
    assert normalise_query(raw) == expected


def test_union_keeps_signals_of_both_sources():
    c = blend.union(np.array([5, 2]), np.array([3.0, 1.0], np.float32),
                    np.array([2, 9]), np.array([0.5, 0.7], np.float32))
    assert c.rows.tolist() == [2, 5, 9]
    assert c.lexical.tolist() == [1.0, 3.0, 0.0]
    np.testing.assert_allclose(c.personal, [0.5, np.nan, 0.7])


def test_union_can_use_mf_scores_without_adding_candidates():
    c = blend.union(np.array([1]), np.array([2.0], np.float32), np.array([1, 4]),
                    np.array([0.9, 0.8], np.float32), personal_only_rows=np.array([], np.int64))
    assert c.rows.tolist() == [1] and c.personal.tolist() == pytest.approx([0.9])


@pytest.mark.parametrize(
    ("values", "expected"),
    [([2.0, 4.0, 0.0], [0.5, 1.0, 0.0]), ([0.0, 0.0], [0.0, 0.0]), ([], [])],
)
def test_scale_max(values, expected):
    assert blend.scale_max(np.array(values, np.float32)).tolist() == expected


def test_scale_min_max_maps_nan_to_zero():
    out = blend.scale_min_max(np.array([1.0, np.nan, 3.0, 2.0], np.float32))
    assert out.tolist() == [0.0, 0.0, 1.0, 0.5]
    assert blend.scale_min_max(np.array([4.0, 4.0], np.float32)).tolist() == [1.0, 1.0]


def test_sigmoid_is_stable_and_monotone():
    out = blend.sigmoid(np.array([-1000.0, 0.0, 1000.0], np.float32))
    assert out.tolist() == pytest.approx([0.0, 0.5, 1.0])


def test_blend_weights_and_fallback_to_bm25():
    c = blend.Candidates(np.array([0, 1]), np.array([1.0, 2.0], np.float32),
                         np.array([np.nan, 5.0], np.float32))
    w = blend.Weights(relevance=1.0, personal=0.5, popularity=0.25, lexical=0.0)
    pop = np.array([1.0, 0.0], np.float32)
    with_ranker = blend.blend(c, pop, w, np.array([0.9, 0.1], np.float32))
    assert with_ranker.tolist() == pytest.approx([0.9 + 0.25, 0.1 + 0.5])
    without = blend.blend(c, pop, w, None)
    assert without.tolist() == pytest.approx([0.5 + 0.25, 1.0 + 0.5])


def test_lexical_weight_adds_bm25_beside_the_ranker_only():
    c = blend.Candidates(np.array([0, 1]), np.array([1.0, 2.0], np.float32),
                         np.full(2, np.nan, np.float32))
    w = blend.Weights(relevance=1.0, personal=0.0, popularity=0.0, lexical=0.5)
    pop = np.zeros(2, np.float32)
    ranked = blend.blend(c, pop, w, np.array([0.9, 0.1], np.float32))
    assert ranked.tolist() == pytest.approx([0.9 + 0.25, 0.1 + 0.5])
    # Ranker unavailable: BM25 is the relevance, not counted twice.
    assert blend.blend(c, pop, w, None).tolist() == pytest.approx([0.5, 1.0])


def test_top_n_is_stable():
    assert blend.top_n(np.array([1.0, 3.0, 3.0, 0.0]), 3).tolist() == [1, 2, 0]


def test_lexical_over_the_querys_ideal_score_keeps_weak_matches_weak():
    lexical = np.array([1.0, 2.0, 8.0], np.float32)
    by_best = blend.Candidates(np.array([0, 1, 2]), lexical, np.full(3, np.nan, np.float32))
    by_query = blend.Candidates(np.array([0, 1, 2]), lexical, np.full(3, np.nan, np.float32),
                                lexical_reference=10.0)
    assert blend.scale_lexical(by_best).tolist() == pytest.approx([0.125, 0.25, 1.0])
    assert blend.scale_lexical(by_query).tolist() == pytest.approx([0.1, 0.2, 0.8])
    # Capped at 1: a long title may repeat a token and beat the ideal a little.
    over = blend.Candidates(np.array([0]), np.array([12.0], np.float32),
                            np.full(1, np.nan, np.float32), lexical_reference=10.0)
    assert blend.scale_lexical(over).tolist() == [1.0]
    w = blend.Weights(relevance=1.0, personal=0.0, popularity=0.0, lexical=0.5, semantic=0.0)
    pop = np.zeros(3, np.float32)
    assert blend.first_stage(by_query, pop, w).tolist() == pytest.approx([0.1, 0.2, 0.8])
    assert blend.blend(by_query, pop, w, np.zeros(3, np.float32)).tolist() == pytest.approx(
        [0.05, 0.1, 0.4])


def test_the_lexical_reference_survives_every_candidate_operation():
    c = blend.union(np.array([3, 1]), np.array([4.0, 2.0], np.float32), np.array([7]),
                    np.array([0.5], np.float32), lexical_reference=8.0)
    assert c.lexical_reference == 8.0
    c = blend.add_rows(c, np.array([9]), blend.Source.SEMANTIC)
    c = c.with_semantic(np.zeros(len(c), np.float32)).with_session(np.zeros(len(c), np.float32))
    assert c.take(np.array([0, 1])).lexical_reference == 8.0
    assert c.rows.tolist() == [1, 3, 7, 9]
    assert blend.scale_lexical(c).tolist() == pytest.approx([0.25, 0.5, 0.0, 0.0])


def test_the_semantic_weight_falls_as_words_alone_answer_the_query():
    assert blend.lexical_coverage(np.array([4.0, 9.0], np.float32), 10.0) == pytest.approx(0.9)
    assert blend.lexical_coverage(np.array([12.0], np.float32), 10.0) == 1.0  # capped
    assert blend.lexical_coverage(np.empty(0, np.float32), 10.0) == 0.0  # no hit: all meaning
    assert blend.lexical_coverage(np.array([5.0], np.float32), 0.0) == 0.0  # no ideal score
    w = blend.Weights(semantic=1.0)
    assert blend.gate_semantic(w, 0.9, 1.0).semantic == pytest.approx(0.1)
    assert blend.gate_semantic(w, 0.9, 0.5).semantic == pytest.approx(0.55)
    assert blend.gate_semantic(w, 0.9, 0.0) is w
    assert blend.gate_semantic(w, 0.0, 1.0) is w
    gated = blend.gate_semantic(w, 1.0, 1.0)
    assert gated.semantic == 0.0 and gated.relevance == w.relevance and gated.lexical == w.lexical
    # With the weight gone, the semantic part adds nothing to either stage's scores.
    c = blend.Candidates(np.array([0, 1]), np.array([1.0, 2.0], np.float32),
                         np.full(2, np.nan, np.float32), semantic=np.array([0.9, 0.1], np.float32),
                         lexical_reference=2.0)
    assert blend.first_stage_parts(c, np.zeros(2, np.float32), gated)["semantic"].tolist() == [0, 0]
