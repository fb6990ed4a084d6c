"""The judged query classes that words alone do not solve: described needs, paraphrases, negations
and misspellings (their phrase tables in shopserve.phrasing, their queries in the generator)."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shopserve.artifacts import load_npz, save_npz
from shopserve.catalog_files import META_FILE, QUERIES_FILE, CatalogFiles
from shopserve.phrasing import (
    CATEGORY_RELATIONS,
    COLOUR_PHRASES,
    GENDER_PHRASES,
    MATERIAL_PHRASES,
    NEED_PHRASES,
    NEGATORS,
    RELATIONS,
    SIZE_PHRASES,
    edit_distance,
    misspell,
    misspell_word,
    paraphrasable,
    phrase_words,
)
from shopserve.text import tokens
from training.data.generator import (
    CATEGORIES,
    CATEGORY_NAMES,
    COLOURS,
    EXCLUDABLE,
    GENDERS,
    LEXICAL_KINDS,
    LINES,
    QUERY_KIND_SHARES,
    QUERY_KINDS,
    SYNONYMS,
    UNDERSTANDING_KINDS,
    Dataset,
    GeneratorConfig,
    generate,
    split_queries,
)

SPEC = {spec.name: spec for spec in CATEGORIES}
GENDER_WORD = {"men": "men's", "women": "women's", "unisex": "unisex", "kids": "kids'"}
SYNONYM_TOKENS = {t for word, syns in SYNONYMS.items() for text in (word, *syns) for t in tokens(text)}
MATERIALS = sorted({m for spec in CATEGORIES for m in spec.materials})
SIZES = sorted({s for spec in CATEGORIES for s in spec.sizes})
# Every word of the catalog's attribute vocabulary: category nouns and names, colours, materials,
# gender words, sizes, brands and product lines. Need phrases stay clear of all of it.
CATALOG_TOKENS = {
    t for text in [
        *(s.noun for s in CATEGORIES), *CATEGORY_NAMES, *COLOURS, *MATERIALS, *GENDER_WORD.values(),
        *SIZES, *(b for s in CATEGORIES for b in s.brands), *LINES,
    ] for t in tokens(text)
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny() -> Dataset:
    return generate(GeneratorConfig.tiny())


@pytest.fixture(scope="module")
def demo() -> Dataset:
    return generate(GeneratorConfig.demo())


@pytest.fixture(params=["tiny", "demo"])
def world(request: pytest.FixtureRequest) -> Dataset:
    return request.getfixturevalue(request.param)


def rows_of(world: Dataset, kind: str) -> list[int]:
    return np.flatnonzero(world.queries.kind == kind).tolist()


# --- kinds and shares ----------------------------------------------------------------------------


def test_default_shares_keep_the_lexical_proportions_and_give_understanding_30_percent():
    shares = dict(zip(QUERY_KINDS, QUERY_KIND_SHARES, strict=True))
    assert QUERY_KINDS == LEXICAL_KINDS + UNDERSTANDING_KINDS
    assert GeneratorConfig().query_kind_shares == QUERY_KIND_SHARES
    assert sum(QUERY_KIND_SHARES) == pytest.approx(1.0)
    assert sum(shares[k] for k in UNDERSTANDING_KINDS) == pytest.approx(0.30)
    assert shares["exact"] / shares["typo"] == pytest.approx(0.5 / 0.2)
    assert shares["synonym"] / shares["typo"] == pytest.approx(0.3 / 0.2)


def test_every_kind_fills_its_quota_with_distinct_texts(world):
    queries = world.queries
    assert len(queries) == world.config.n_queries
    assert np.unique(queries.text).shape[0] == len(queries)
    for kind, share in zip(QUERY_KINDS, world.config.query_kind_shares, strict=True):
        count = int((queries.kind == kind).sum())
        assert count == round(share * len(queries)), kind
        assert count >= 5, kind  # even the tiny world has a few of each


def test_understanding_kinds_are_deterministic_for_a_seed(demo):
    again = generate(GeneratorConfig.demo())
    for column in ("text", "kind", "base_text", "exclude_colour", "exclude_material", "n_exact"):
        np.testing.assert_array_equal(getattr(again.queries, column), getattr(demo.queries, column))
    np.testing.assert_array_equal(again.qrels.grade, demo.qrels.grade)
    other = generate(replace(GeneratorConfig.tiny(), seed=1))
    assert set(other.queries.text.tolist()) != set(generate(GeneratorConfig.tiny()).queries.text.tolist())


def test_split_holds_out_every_kind_in_proportion(demo):
    train, test = split_queries(demo, 0.2, 0)
    kinds = demo.queries.kind
    for kind in QUERY_KINDS:
        n = int((kinds == kind).sum())
        assert int((kinds[demo.queries.query_id.searchsorted(test)] == kind).sum()) == round(0.2 * n)
    assert not np.intersect1d(train, test).size


# --- judgements ----------------------------------------------------------------------------------


def test_exact_items_have_the_targeted_attributes_and_none_excluded(world):
    queries, items, qrels = world.queries, world.items, world.qrels
    exact = qrels.grade == 3
    q = queries.query_id.searchsorted(qrels.query_id[exact])
    i = world.item_rows(qrels.item_id[exact])
    np.testing.assert_array_equal(items.category[i], queries.category[q])
    for attr in ("brand", "colour", "material", "gender", "size"):
        target = getattr(queries, attr)[q]
        assert ((target == "") | (target == getattr(items, attr)[i])).all(), attr
    for attr in EXCLUDABLE:
        excluded = getattr(queries, f"exclude_{attr}")[q]
        assert not ((excluded != "") & (excluded == getattr(items, attr)[i])).any(), attr


def test_every_understanding_query_has_an_exact_item_and_counts_them(world):
    queries = world.queries
    items = world.items.item_id
    for row in [r for kind in UNDERSTANDING_KINDS for r in rows_of(world, kind)]:
        grades = world.grade(np.full(items.shape, queries.query_id[row]), items)
        assert queries.n_exact[row] == int((grades == 3).sum()) >= 1, queries.text[row]


def test_only_negations_exclude_and_each_excludes_one_value(world):
    queries = world.queries
    negation = queries.kind == "negation"
    excluding = (queries.exclude_colour != "") | (queries.exclude_material != "")
    np.testing.assert_array_equal(excluding, negation)
    assert not ((queries.exclude_colour != "") & (queries.exclude_material != "")).any()
    # The exclusion never contradicts a target: the shopper does not ask for what they refuse.
    assert not ((queries.exclude_colour != "") & (queries.colour != "")).any()
    assert not ((queries.exclude_material != "") & (queries.material != "")).any()


def test_negations_exclude_what_they_negate(world):
    queries, items, qrels = world.queries, world.items, world.qrels
    rows = rows_of(world, "negation")
    with_hard_negative = 0
    for row in rows:
        attr = "colour" if queries.exclude_colour[row] else "material"
        value = getattr(queries, f"exclude_{attr}")[row]
        text = str(queries.text[row])
        assert text.endswith(" " + value.lower()), text
        assert any(f" {neg} " in text.replace("aren't", "isn't") for neg in NEGATORS[attr]), text
        # Judged pool: nothing with the negated value is relevant, and same-category items with it
        # are judged (irrelevant) more often than not: the hard negatives the class is about.
        judged = qrels.for_queries(queries.query_id[[row]])
        judged_rows = world.item_rows(judged.item_id)
        has_value = getattr(items, attr)[judged_rows] == value
        assert (judged.grade[has_value] == 0).all(), text
        same = items.category[judged_rows] == queries.category[row]
        with_hard_negative += bool((has_value & same).any())
        # The whole catalog: every item with the value is graded 0, and the judged pool agrees.
        grades = world.grade(np.full(len(items), queries.query_id[row]), items.item_id)
        assert (grades[getattr(items, attr) == value] == 0).all(), text
        np.testing.assert_array_equal(grades[judged_rows], judged.grade)
        # An item of the category without it but otherwise a match is exact.
        others = (getattr(items, attr) != value) & (items.category == queries.category[row])
        assert (grades[others] >= 2).all(), text
    assert with_hard_negative > len(rows) / 2


def test_grade_and_the_judged_pool_agree_for_every_kind(world):
    qrels = world.qrels
    np.testing.assert_array_equal(world.grade(qrels.query_id, qrels.item_id), qrels.grade)


# --- wordings ------------------------------------------------------------------------------------


def _title_tokens(world: Dataset, row: int, attrs: tuple[str, ...]) -> set[str]:
    """Tokens of the title words of a query's targeted attributes among ``attrs``."""
    queries = world.queries
    out: set[str] = set()
    for attr in attrs:
        value = str(getattr(queries, attr)[row])
        if value:
            out.update(tokens(GENDER_WORD[value] if attr == "gender" else value))
    return out


def test_described_texts_share_no_token_with_category_attributes_or_synonyms(world):
    """A described need shares no token with its category's noun and name, the title words of its
    targeted colour, material and gender, nor any word of the synonym table."""
    queries = world.queries
    rows = rows_of(world, "described")
    for row in rows:
        spec = SPEC[str(queries.category[row])]
        assert not queries.brand[row] and not queries.size[row]
        forbidden = (set(tokens(spec.noun)) | set(tokens(spec.name)) | SYNONYM_TOKENS
                     | _title_tokens(world, row, ("colour", "material", "gender")))  # fmt: skip
        assert not set(tokens(str(queries.text[row]))) & forbidden, queries.text[row]
    # Attributes are described, not only the category.
    assert sum(bool(queries.colour[r] or queries.material[r] or queries.gender[r]) for r in rows) > 0


def test_paraphrase_texts_share_no_token_with_the_paraphrased_attributes(world):
    """A paraphrase keeps the category (its noun or a synonym) and the brand, and shares no token
    with the title words of the colour, material, gender and size it paraphrases, nor with their
    synonyms."""
    queries = world.queries
    for row in rows_of(world, "paraphrase"):
        paraphrased = tuple(a for a in ("colour", "material", "gender", "size")
                            if getattr(queries, a)[row]
                            and paraphrasable(a, str(getattr(queries, a)[row])))  # fmt: skip
        assert paraphrased, queries.text[row]
        forbidden = _title_tokens(world, row, paraphrased)
        for attr in paraphrased:
            value = str(getattr(queries, attr)[row])
            word = (GENDER_WORD[value] if attr == "gender" else value).lower()
            forbidden |= {t for syn in SYNONYMS.get(word, ()) for t in tokens(syn)}
        text_tokens = set(tokens(str(queries.text[row])))
        assert not text_tokens & forbidden, (queries.text[row], text_tokens & forbidden)
        spec = SPEC[str(queries.category[row])]
        category_words = set(tokens(spec.noun)) | {t for s in SYNONYMS[spec.noun.lower()]
                                                   for t in tokens(s)}  # fmt: skip
        assert text_tokens & category_words, queries.text[row]


def test_misspellings_are_two_or_more_edits_from_their_base_text(world):
    queries = world.queries
    for row in rows_of(world, "misspelling"):
        text, base = str(queries.text[row]), str(queries.base_text[row])
        words, base_words = text.split(" "), base.split(" ")
        assert len(words) == len(base_words), (text, base)
        distances = [edit_distance(b, w) for b, w in zip(base_words, words, strict=True)]
        assert max(distances) >= 2, (text, base)
        for b, d in zip(base_words, distances, strict=True):
            if len(b) >= 4 and b.isalpha():
                assert d >= 2, (text, base)  # every editable word, not only one


# --- phrase tables -------------------------------------------------------------------------------


def test_phrase_tables_cover_the_catalog_vocabulary():
    assert set(NEED_PHRASES) == set(CATEGORY_NAMES)
    assert all(len(needs) >= 4 for needs in NEED_PHRASES.values())
    assert set(COLOUR_PHRASES) == {c.lower() for c in COLOURS}
    assert set(MATERIAL_PHRASES) == {m.lower() for m in MATERIALS}
    assert set(RELATIONS) == set(GENDER_PHRASES) == set(GENDERS)
    for category, relations in CATEGORY_RELATIONS.items():
        assert set(relations) <= set(SPEC[category].genders)
    # Every size shoppers could say otherwise; phone models and "one size" keep their names.
    worded = {s.lower() for spec in CATEGORIES if spec.name not in ("phone-cases", "headphones")
              for s in spec.sizes}  # fmt: skip
    assert worded <= set(SIZE_PHRASES)


def test_need_and_described_phrases_stay_clear_of_the_catalog_and_the_synonyms():
    tables = {"need": NEED_PHRASES, "relation": RELATIONS, "gender": GENDER_PHRASES,
              "colour": COLOUR_PHRASES, "material": MATERIAL_PHRASES}  # fmt: skip
    tables |= {f"relation of {c}": table for c, table in CATEGORY_RELATIONS.items()}
    for name, table in tables.items():
        for key, phrases in table.items():
            for phrase in phrases:
                clash = set(tokens(phrase)) & (CATALOG_TOKENS | SYNONYM_TOKENS)
                assert not clash, (name, key, phrase, clash)


def test_size_phrases_share_no_token_with_their_size():
    for size, phrases in SIZE_PHRASES.items():
        for phrase in phrases:
            assert not set(tokens(phrase)) & (set(tokens(size)) | SYNONYM_TOKENS), (size, phrase)


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [("kitten", "sitting", 3), ("teal", "tael", 1), ("navy", "navy", 0), ("", "abc", 3),
     ("jacket", "jakcet", 1), ("backpack", "bakpak", 2), ("ca", "abc", 3)],
)
def test_edit_distance(a: str, b: str, distance: int):
    assert edit_distance(a, b) == distance == edit_distance(b, a)


def test_misspell_edits_every_word_at_least_twice_and_keeps_the_words():
    rng = random.Random(0)
    for text in ["bergen navy backpack", "red mug", "kids' teal t-shirt size xl", "mug", "sofa"]:
        for _ in range(50):
            out = misspell(text, rng.randrange)
            assert len(out.split(" ")) == len(text.split(" "))
            distances = [edit_distance(a, b) for a, b in zip(text.split(" "), out.split(" "),
                                                             strict=True)]
            assert max(distances) >= 2, (text, out)
    for word in ["teal", "leather", "headphones", "glass"] * 20:
        out = misspell_word(word, 3, rng.randrange)
        assert out.isalpha() and edit_distance(word, out) >= 2, (word, out)


def test_phrase_words_cover_what_the_tables_write():
    words = phrase_words()
    assert {"husband", "breathable", "soot", "without", "aren't", "someone"} <= words
    assert "{who}" not in words


# --- storage -------------------------------------------------------------------------------------


def test_exclusions_round_trip_through_the_catalog_format(tiny, tmp_path: Path):
    tiny.save(tmp_path)
    files = CatalogFiles.open(tmp_path)
    for attr in EXCLUDABLE:
        np.testing.assert_array_equal(files.queries[f"exclude_{attr}"],
                                      getattr(tiny.queries, f"exclude_{attr}"))
    np.testing.assert_array_equal(files.queries["kind"], tiny.queries.kind)
    loaded = Dataset.load(tmp_path)
    np.testing.assert_array_equal(loaded.grade(tiny.qrels.query_id, tiny.qrels.item_id),
                                  tiny.qrels.grade)


def test_a_dataset_saved_before_the_understanding_kinds_still_loads(tiny, tmp_path: Path):
    tiny.save(tmp_path)
    lexical = tiny.queries.take(np.isin(tiny.queries.kind, LEXICAL_KINDS))
    columns = {k: v for k, v in load_npz(tmp_path / QUERIES_FILE).items()
               if not k.startswith("exclude_")}  # fmt: skip
    save_npz(tmp_path / QUERIES_FILE, **{k: v[np.isin(columns["kind"], LEXICAL_KINDS)]
                                        for k, v in columns.items()})
    meta = json.loads((tmp_path / META_FILE).read_text())
    meta["config"]["query_kind_shares"] = [0.5, 0.3, 0.2]
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    loaded = Dataset.load(tmp_path)
    assert loaded.config.query_kind_shares == (0.5, 0.3, 0.2, 0.0, 0.0, 0.0, 0.0)
    assert (loaded.queries.exclude_colour == "").all()
    assert (loaded.queries.exclude_material == "").all()
    np.testing.assert_array_equal(loaded.queries.text, lexical.text)


@pytest.mark.parametrize("shares", [(0.5, 0.3, 0.2), (1.0,) * 8, (1.0, -1.0, 0, 0, 0, 0, 0)])
def test_config_wants_one_non_negative_share_per_kind(shares):
    with pytest.raises(ValueError, match="query_kind_shares"):
        GeneratorConfig(query_kind_shares=shares)


def test_a_config_without_understanding_kinds_writes_none():
    only_lexical = (0.5, 0.3, 0.2, 0.0, 0.0, 0.0, 0.0)
    world = generate(replace(GeneratorConfig.tiny(), query_kind_shares=only_lexical))
    assert set(world.queries.kind.tolist()) == set(LEXICAL_KINDS)
