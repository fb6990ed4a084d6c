"""Synonym mining from judged training queries (the table query rewriting applies)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data.generator import (
    LEXICAL_KINDS,
    SYNONYM_OF,
    UNDERSTANDING_KINDS,
    GeneratorConfig,
    generate,
    split_queries,
)
from training.synonyms import (
    MiningConfig,
    lexical_query_ids,
    mine_into,
    mine_synonyms,
    save_synonyms,
    synonyms_from_dataset,
)
from transformers_pre.rewrite import load_synonyms


def test_mining_maps_a_token_to_what_its_matches_share() -> None:
    red_jackets = [frozenset({"red", "jackets", "acme"}), frozenset({"red", "jackets", "zeta"})]
    navy_jackets = [frozenset({"navy", "jackets", "acme"})]
    red_mugs = [frozenset({"red", "mugs"})]
    navy_mugs = [frozenset({"navy", "mugs", "zeta"})]
    queries = [
        (["crimson", "jackets"], red_jackets),
        (["crimson", "mugs"], red_mugs),
        (["parka", "navy"], navy_jackets),
        (["parka", "red"], red_jackets),
        (["navy", "mugs"], navy_mugs),
        (["navy", "cup"], navy_mugs),
        (["once", "jackets"], red_jackets),  # seen once: below min_queries
        (["red", "jackets"], []),  # no exact match: teaches nothing
    ]
    vocabulary = {"red", "navy", "jackets", "mugs", "acme", "zeta"}
    synonyms = mine_synonyms(queries, vocabulary, MiningConfig(min_queries=2, min_lift=0.4))
    # "crimson": red shared by 2/2 of its queries' matches against 4/7 overall (lift 0.43);
    # "parka": jackets 2/2 against 4/7 (0.43), navy 1/2 against 3/7 (0.07); "cup": once only.
    assert synonyms == {"crimson": "red", "parka": "jackets"}


def test_mining_leaves_typos_to_spelling_correction() -> None:
    queries = [(["jackts"], [frozenset({"jackets"})])] * 3
    assert mine_synonyms(queries, {"jackets", "mugs"}) == {}


def test_save_load_round_trip(tmp_path: Path) -> None:
    assert load_synonyms(tmp_path) is None
    save_synonyms(tmp_path, {"parka": "jackets"})
    assert load_synonyms(tmp_path) == {"parka": "jackets"}


@pytest.fixture(scope="module")
def world():
    return generate(GeneratorConfig.tiny())


def test_mined_from_generated_world_agree_with_its_synonym_table(world) -> None:
    train, _ = split_queries(world, 0.2, 0)
    synonyms = synonyms_from_dataset(world, train)
    assert synonyms
    # The generator's own table is the truth a mined one is checked against.
    # (title words and BM25 tokens differ in inflection: "jacket" -> "jackets").
    known = {token: term for token, term in synonyms.items() if token in SYNONYM_OF}
    agree = [token for token, term in known.items() if term[:3] == SYNONYM_OF[token][:3]]
    assert known and len(agree) / len(known) >= 0.6, synonyms


def test_mining_ignores_the_understanding_kinds(world, tmp_path: Path) -> None:
    queries = world.queries
    understanding = queries.query_id[np.isin(queries.kind, UNDERSTANDING_KINDS)]
    assert understanding.size
    # Their judged phrases ("husband", "puffy") teach nothing, even with the loosest thresholds ...
    loose = MiningConfig(min_queries=1, min_lift=0.0)
    assert synonyms_from_dataset(world, understanding, loose) == {}
    # ... and mixing them into the training queries changes nothing.
    train, _ = split_queries(world, 0.2, 0)
    lexical = lexical_query_ids(world, train)
    assert set(queries.kind[lexical].tolist()) == set(LEXICAL_KINDS)
    assert lexical.size < train.size
    assert synonyms_from_dataset(world, train, loose) == synonyms_from_dataset(world, lexical, loose)
    params = mine_into(tmp_path, world, train)
    assert params["synonyms_mined_from_queries"] == lexical.size
