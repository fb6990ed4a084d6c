"""Candidate lists, training pairs, tokenisation with dynamic padding and the max length."""

from __future__ import annotations

import numpy as np
import pytest

from shopserve.protocol import ATTENTION_MASK, INPUT_IDS, RANKER, TOKEN_TYPE_IDS
from shopserve.text import PairTokenizer
from training.ranker.modeling import load_tokenizer
from training.ranker.pairs import (
    PairCatalog,
    Query,
    candidate_lists,
    choose_max_length,
    encode_pairs,
    flatten,
    length_grouped_batches,
    pair_lengths,
)

# Two categories; shoes vary in brand and colour. Item 1 is the exact match of query 0.
CATALOG = PairCatalog(
    item_ids=np.arange(1, 13, dtype=np.int64),
    titles=[
        "Nike Red Running Shoe", "Nike Blue Running Shoe", "Adidas Red Running Shoe",
        "Adidas Blue Running Shoe", "Puma Red Running Shoe", "Puma Black Running Shoe",
        "Nike Red Running Shoe Kids", "Cotton Red Sock", "Wool Grey Sock", "Blue Sock",
        "Black Sock", "Striped Sock",
    ],
    categories=["shoes"] * 7 + ["socks"] * 5,
    attributes=[("nike", "red"), ("nike", "blue"), ("adidas", "red"), ("adidas", "blue"),
                ("puma", "red"), ("puma", "black"), ("nike", "red"), ("cotton", "red"),
                ("wool", "grey"), ("x", "blue"), ("x", "black"), ("x", "striped")],
)  # fmt: skip
QUERIES = [
    Query(0, "red nike runners", "synonym", {1: 3, 7: 3, 2: 2, 8: 1, 12: 0}),
    Query(1, "blue sock", "exact", {10: 3, 9: 2}),
    Query(2, "nothing relevant", "exact", {11: 0}),
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def pair_tokenizer(tokenizer) -> PairTokenizer:
    return PairTokenizer.from_hf(tokenizer)


def test_lists_keep_judged_items_and_drop_queries_without_a_relevant_item() -> None:
    lists = candidate_lists(QUERIES, CATALOG, hard_negatives=2, random_negatives=2, seed=0)
    assert [c.query.key for c in lists] == [0, 1]  # query 2 has no grade > 0
    first = lists[0]
    for item, grade in QUERIES[0].judged.items():
        assert grade == first.grades[list(first.item_ids).index(item)]


def test_hard_negatives_share_the_category_but_not_the_attributes() -> None:
    lists = candidate_lists(QUERIES[:1], CATALOG, hard_negatives=10, random_negatives=0, seed=0)
    judged = set(QUERIES[0].judged)
    negatives = [int(i) for i in lists[0].item_ids if int(i) not in judged]
    row = CATALOG.index()
    assert negatives, "expected hard negatives"
    for item in negatives:
        assert CATALOG.categories[row[item]] == "shoes"
        assert CATALOG.attributes[row[item]] != ("nike", "red")


def test_random_negatives_are_never_judged_items_and_unique() -> None:
    lists = candidate_lists(QUERIES[:1], CATALOG, hard_negatives=0, random_negatives=50, seed=3)
    ids = lists[0].item_ids.tolist()
    assert len(ids) == len(set(ids))
    assert len(ids) == len(CATALOG.item_ids)  # every unjudged item, each once


def test_grader_grades_the_unjudged_negatives() -> None:
    lists = candidate_lists(
        QUERIES[:1], CATALOG, hard_negatives=3, random_negatives=0, seed=0,
        grader=lambda key, items: np.full(len(items), 2),
    )
    judged = set(QUERIES[0].judged)
    for item, grade in zip(lists[0].item_ids, lists[0].grades, strict=True):
        if int(item) not in judged:
            assert grade == 2


def test_max_per_grade_caps_each_grade() -> None:
    lists = candidate_lists(QUERIES[:1], CATALOG, hard_negatives=0, random_negatives=0,
                            max_per_grade=1, seed=0)  # fmt: skip
    assert sorted(lists[0].grades.tolist()) == [0, 1, 2, 3]


def test_lists_are_deterministic_for_a_seed() -> None:
    a = candidate_lists(QUERIES, CATALOG, seed=7)
    b = candidate_lists(QUERIES, CATALOG, seed=7)
    assert all(np.array_equal(x.item_ids, y.item_ids) for x, y in zip(a, b, strict=True))


def test_flatten_pairs_keeps_query_grouping_and_scales_labels() -> None:
    lists = candidate_lists(QUERIES, CATALOG, hard_negatives=1, random_negatives=1, seed=0)
    pairs = flatten(lists)
    assert len(pairs) == sum(len(c.titles) for c in lists)
    assert set(pairs.query_keys.tolist()) == {0, 1}
    assert pairs.labels().min() >= 0 and pairs.labels().max() == 1.0
    assert pairs.labels().dtype == np.float32


def test_encode_pairs_pads_to_the_longest_pair_of_the_batch(pair_tokenizer) -> None:
    short = encode_pairs(pair_tokenizer, ["sock"], ["red sock"], max_length=64)
    mixed = encode_pairs(pair_tokenizer, ["sock", "red nike running shoes"],
                         ["red sock", "nike air zoom pegasus red running shoe"], max_length=64)
    assert set(short) == {t.name for t in RANKER.inputs}
    assert short[INPUT_IDS].shape[1] < mixed[INPUT_IDS].shape[1] < 64
    for name in (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS):
        assert mixed[name].dtype == np.int64 and mixed[name].shape == mixed[INPUT_IDS].shape
    assert mixed[ATTENTION_MASK][0].sum() < mixed[ATTENTION_MASK][1].sum()  # row 0 padded
    assert set(np.unique(mixed[TOKEN_TYPE_IDS])) == {0, 1}  # title segment marked


def test_encode_pairs_truncates_to_max_length(pair_tokenizer) -> None:
    out = encode_pairs(pair_tokenizer, ["shoe"], ["word " * 200], max_length=16)
    assert out[INPUT_IDS].shape == (1, 16)


def test_encode_pairs_refuses_mismatched_lengths(pair_tokenizer) -> None:
    with pytest.raises(ValueError):
        encode_pairs(pair_tokenizer, ["a", "b"], ["a"], max_length=8)


def test_pair_lengths_count_special_tokens(tokenizer) -> None:
    # [CLS] sock [SEP] red sock [SEP]
    assert pair_lengths(tokenizer, ["sock"], ["red sock"]).tolist() == [6]


@pytest.mark.parametrize(
    ("lengths", "percentile", "expected"),
    [
        ([10, 12, 20], 100, 24),  # rounded up to a multiple of 8
        ([8] * 199 + [500], 99, 8),  # one outlier does not set the length
        ([1, 2], 100, 8),  # at least one multiple
        ([900], 100, 512),  # capped at the position-embedding limit
    ],
)
def test_choose_max_length(lengths: list[int], percentile: float, expected: int) -> None:
    assert choose_max_length(np.asarray(lengths), percentile) == expected


def test_choose_max_length_refuses_no_data() -> None:
    with pytest.raises(ValueError):
        choose_max_length(np.asarray([]))


def test_length_grouped_batches_cover_every_row_once_and_cut_padding() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(8, 44, 1000)
    grouped = length_grouped_batches(lengths, 32, np.random.default_rng(1), chunk=8)
    rows = np.concatenate(grouped)
    assert sorted(rows.tolist()) == list(range(1000))
    assert all(len(b) <= 32 for b in grouped)

    def padded(batches: list[np.ndarray]) -> int:
        return sum(int(lengths[b].max()) * len(b) for b in batches)

    plain = length_grouped_batches(lengths, 32, np.random.default_rng(1), chunk=1)
    assert padded(grouped) < 0.85 * padded(plain)


def test_length_grouped_batches_are_reproducible_and_shuffled() -> None:
    lengths = np.arange(256) % 40
    a = length_grouped_batches(lengths, 16, np.random.default_rng(5), chunk=4)
    b = length_grouped_batches(lengths, 16, np.random.default_rng(5), chunk=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    # Batch order is shuffled: the batch lengths do not simply rise chunk by chunk.
    maxima = [int(lengths[x].max()) for x in a]
    assert maxima != sorted(maxima)
    with pytest.raises(ValueError):
        length_grouped_batches(lengths, 0, np.random.default_rng(0), chunk=4)
