"""Query rewriting: spelling correction, the synonym table, the catalog's lexical stage (mining:
``tests/unit/training/test_synonyms.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shopserve.catalog_files import CatalogFiles
from training.data.generator import GeneratorConfig, generate
from transformers_pre.catalog import Catalog
from transformers_pre.rewrite import Negation, QueryRewriter, query_tokens, split_negation

FREQUENCIES = {"red": 40, "read": 2, "jacket": 30, "jackets": 5, "sneakers": 20, "navy": 10}


@pytest.mark.parametrize(("token", "expected"), [
    ("red", "red"),            # known: untouched
    ("jacket", "jacket"),      # known, though "jackets" is one edit away
    ("jakcet", "jacket"),      # transposition
    ("sneakrs", "sneakers"),   # deletion
    ("snaekerss", "sneakers"),  # two edits, long token
    ("rde", None),             # short tokens are not corrected
    ("zzzzzz", None),          # nothing near
    ("parka", "jackets"),      # synonym
    ("parkka", "jackets"),     # misspelt synonym
    ("midnight", "navy"),
])  # fmt: skip
def test_rewrite_token(token: str, expected: str | None) -> None:
    rewriter = QueryRewriter(FREQUENCIES, {"parka": "jackets", "midnight": "navy"})
    assert rewriter.rewrite_token(token) == expected


def test_rewrite_keeps_unmatched_tokens_and_order() -> None:
    rewriter = QueryRewriter(FREQUENCIES, {"parka": "jackets"})
    assert rewriter.rewrite(["zzzzzz", "parka", "rde"]) == ["zzzzzz", "jackets", "rde"]


def test_prefers_the_more_frequent_of_equally_close_terms() -> None:
    rewriter = QueryRewriter({"cart": 50, "card": 1})
    assert rewriter.rewrite_token("carx") == "cart"


@pytest.fixture(scope="module")
def world():
    return generate(GeneratorConfig.tiny())


def test_catalog_lexical_with_and_without_rewriting(world, tmp_path: Path) -> None:
    world.save(tmp_path)
    catalog = Catalog.from_files(CatalogFiles.open(tmp_path), synonyms={})
    title = str(world.items.title[0]).lower()
    word = max(title.split(), key=len)
    typo = word[0] + word[2] + word[1] + word[3:]  # a transposition after the first letter
    if typo == word:
        pytest.skip("no transposition possible")
    plain, _ = catalog.lexical(typo, 10, None, rewrite=False)
    corrected, _ = catalog.lexical(typo, 10, None, rewrite=True)
    exact, _ = catalog.lexical(word, 10, None, rewrite=False)
    assert plain.size == 0
    np.testing.assert_array_equal(corrected, exact)


def test_document_frequencies_count_each_document_once(world) -> None:
    from transformers_pre.catalog import build_lexical_index, document_frequencies
    from transformers_pre.rewrite import query_tokens

    texts = [*world.item_text()[:200].tolist(), "red red red", ""]
    index = build_lexical_index(texts)
    terms = {token for text in texts for token in query_tokens(text)}
    expected = {token: sum(token in set(query_tokens(t)) for t in texts) for token in terms}
    assert document_frequencies(index) == expected


def test_the_ideal_score_is_what_a_title_with_every_query_token_scores(world) -> None:
    from transformers_pre.catalog import build_lexical_index, term_maxima

    texts = ["red cotton shirt", "blue cotton shirt", "red wool scarf", "green lamp"]
    catalog_index = build_lexical_index(texts)
    best = term_maxima(catalog_index)
    for token in ("red", "cotton", "shirt", "lamp"):
        scores = catalog_index.get_scores([token])
        assert best[token] == pytest.approx(float(scores.max()))


def test_lexical_hits_score_a_weak_match_of_a_long_query_low(world, tmp_path: Path) -> None:
    world.save(tmp_path)
    catalog = Catalog.from_files(CatalogFiles.open(tmp_path), synonyms={})
    title = str(world.items.title[0]).lower()
    exact = catalog.lexical_hits(title, 10, None, rewrite=False)
    assert exact.rows[0] == 0 or world.items.title[exact.rows[0]].lower() == title
    assert 0.6 <= exact.scores[0] / exact.ideal <= 1.5
    # One title word among words no title uses: the best hit matches a small share of the query.
    word = max(title.split(), key=len)
    described = f"{word} zorblat quindle vexaroo plumbrick"
    weak = catalog.lexical_hits(described, 10, None, rewrite=False)
    assert weak.rows.size and weak.scores[0] / weak.ideal < 0.35
    assert catalog.lexical_hits("", 10, None).ideal == 0.0
    rows, scores = catalog.lexical(title, 10, None, rewrite=False)
    np.testing.assert_array_equal(rows, exact.rows)
    np.testing.assert_array_equal(scores, exact.scores)


@pytest.mark.parametrize(("query", "positive", "refused"), [
    ("kids' sneakers not teal", "kids' sneakers", "teal"),
    ("jeans but not blue", "jeans", "blue"),
    ("mug that isn't porcelain", "mug", "porcelain"),
    ("mug that isn\u2019t porcelain", "mug", "porcelain"),
    ("sneakers that aren't leather", "sneakers", "leather"),
    ("phone case any colour but olive", "phone case", "olive"),
    ("headphones without carbon fibre", "headphones", "carbon fibre"),
    ("lamp no plastic", "lamp", "plastic"),
    ("no plastic", "no plastic", ""),  # nothing wanted: kept whole
    ("sneakers not", "sneakers not", ""),  # nothing refused
    ("nokia phone case", "nokia phone case", ""),  # a cue inside a word is not a cue
    ("shoes for running in the rain", "shoes for running in the rain", ""),
])
def test_split_negation(query: str, positive: str, refused: str) -> None:
    assert split_negation(query) == Negation(positive, refused)


def test_rows_with_all_finds_the_items_holding_every_refused_word(world, tmp_path: Path) -> None:
    world.save(tmp_path)
    catalog = Catalog.from_files(CatalogFiles.open(tmp_path), synonyms={})
    colour = str(world.items.colour[0]).lower()
    material = str(world.items.material[0]).lower()
    texts = [set(query_tokens(str(t))) for t in CatalogFiles.open(tmp_path).item_text()]

    def holding(*words: str) -> list[int]:
        return [i for i, t in enumerate(texts) if all(w in t for w in words)]

    assert catalog.rows_with_all(colour, rewrite=False).tolist() == holding(colour)
    both = catalog.rows_with_all(f"{colour} {material}", rewrite=False).tolist()
    assert both == holding(colour, *query_tokens(material)) and 0 in both
    assert catalog.rows_with_all("zorblat", rewrite=False).size == 0  # no item holds it
    assert catalog.rows_with_all("", rewrite=False).size == 0
