"""PairEncoder: titles tokenised once, pairs concatenated, equal to the tokenizer's own pairs."""

from __future__ import annotations

import numpy as np
import pytest

from shopserve.protocol import ATTENTION_MASK, INPUT_IDS, TOKEN_TYPE_IDS
from shopserve.text import PairEncoder, encode_pairs
from training.data.generator import GeneratorConfig, generate
from training.ranker.modeling import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def titles() -> list[str]:
    return generate(GeneratorConfig.tiny()).items.title.tolist()


QUERIES = ["red sneakers", "", "ｓｈｏｅｓ for running", "a very long query " * 6, "unknownwordzzz x"]


@pytest.mark.parametrize("max_length", [8, 16, 32, 128])
@pytest.mark.parametrize("query", QUERIES)
def test_equals_tokenizer_pairs(tokenizer, titles: list[str], query: str, max_length: int) -> None:
    encoder = PairEncoder(tokenizer, titles, max_length)
    assert encoder.concatenates
    rows = np.random.default_rng(len(query) + max_length).choice(len(titles), 50, replace=False)
    got = encoder.encode(query, rows)
    want = encode_pairs(tokenizer, [query] * len(rows), [titles[r] for r in rows], max_length)
    for name in (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS):
        assert got[name].dtype == np.int64
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_empty_rows(tokenizer, titles: list[str]) -> None:
    got = PairEncoder(tokenizer, titles, 32).encode("shoes", np.array([], dtype=np.int64))
    assert got[INPUT_IDS].shape[0] == 0
