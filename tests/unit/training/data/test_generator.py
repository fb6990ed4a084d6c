"""The synthetic world: determinism, schema, catalog, behaviour signal, queries, qrels, I/O."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from shopserve.interactions import IdMap, temporal_split
from shopserve.text import tokens
from training.data.generator import (
    ANONYMOUS,
    CATEGORIES,
    CATEGORY_NAMES,
    COLOURS,
    COMPLEMENT_PAIRS,
    EVENT_TYPES,
    EVENT_WEIGHTS,
    QUERY_KINDS,
    SYNONYM_OF,
    SYNONYMS,
    Dataset,
    GeneratorConfig,
    generate,
    split_queries,
)
from training.recall.train import to_csr

SPEC = {spec.name: spec for spec in CATEGORIES}


@pytest.fixture(scope="module")
def tiny() -> Dataset:
    return generate(GeneratorConfig.tiny())


@pytest.fixture(scope="module")
def priced() -> Dataset:
    """Enough items per category (~500) for stable price medians."""
    return generate(GeneratorConfig(n_items=6_000, n_users=50, n_queries=10, views_per_user=2.0))


def table_columns(dataset: Dataset) -> dict[str, np.ndarray]:
    """Every column of every table, flattened, for whole-dataset comparisons."""
    out: dict[str, np.ndarray] = {}
    for table in ("items", "users", "queries", "qrels"):
        obj = getattr(dataset, table)
        out |= {f"{table}.{f.name}": getattr(obj, f.name) for f in fields(obj)}
    log = dataset.events.log
    out |= {f"events.{f.name}": getattr(log, f.name) for f in fields(log)}
    out["events.event_type"] = dataset.events.event_type
    return out


def assert_same(a: Dataset, b: Dataset) -> None:
    assert a.config == b.config
    left, right = table_columns(a), table_columns(b)
    assert left.keys() == right.keys()
    for name in left:
        assert left[name].dtype == right[name].dtype, name
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)


# --- determinism ---------------------------------------------------------------------------------


def test_same_seed_gives_identical_dataset(tiny):
    assert_same(tiny, generate(GeneratorConfig.tiny()))


def test_other_seed_gives_other_dataset(tiny):
    other = generate(GeneratorConfig.tiny(seed=1))
    assert not np.array_equal(tiny.items.title, other.items.title)
    assert not np.array_equal(tiny.events.log.item_ids[:100], other.events.log.item_ids[:100])


def test_query_count_does_not_change_catalog_or_log(tiny):
    # One random stream per stage: asking for more queries must not reshuffle the world.
    more = generate(replace(GeneratorConfig.tiny(), n_queries=150))
    np.testing.assert_array_equal(tiny.items.title, more.items.title)
    np.testing.assert_array_equal(tiny.events.log.item_ids, more.events.log.item_ids)


# --- schema --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "kind", "itemsize"),
    [
        ("items.item_id", "i", 8),
        ("items.title", "U", None),
        ("items.category", "U", None),
        ("items.brand", "U", None),
        ("items.colour", "U", None),
        ("items.material", "U", None),
        ("items.size", "U", None),
        ("items.gender", "U", None),
        ("items.price", "f", 4),
        ("items.popularity", "f", 4),
        ("users.user_id", "i", 8),
        ("users.gender", "U", None),
        ("users.has_kids", "b", 1),
        ("users.price_affinity", "f", 4),
        ("events.user_ids", "i", 8),
        ("events.item_ids", "i", 8),
        ("events.timestamps", "i", 8),
        ("events.weights", "f", 4),
        ("events.event_type", "i", 1),
        ("queries.query_id", "i", 8),
        ("queries.text", "U", None),
        ("queries.kind", "U", None),
        ("queries.exclude_colour", "U", None),
        ("queries.exclude_material", "U", None),
        ("queries.user_id", "i", 8),
        ("queries.frequency", "f", 4),
        ("queries.is_head", "b", 1),
        ("queries.n_exact", "i", 8),
        ("qrels.query_id", "i", 8),
        ("qrels.item_id", "i", 8),
        ("qrels.grade", "i", 1),
    ],
)
def test_column_dtypes(tiny, column, kind, itemsize):
    array = table_columns(tiny)[column]
    assert array.ndim == 1
    assert array.dtype.kind == kind
    if itemsize is not None:
        assert array.dtype.itemsize == itemsize


def test_table_sizes(tiny):
    config = tiny.config
    assert len(tiny.items) == config.n_items
    assert len(tiny.users) == config.n_users
    assert len(tiny.queries) == config.n_queries
    assert len(tiny.events) > config.n_users


@pytest.mark.parametrize("table", ["items", "users"])
def test_ids_sorted_unique_and_not_row_numbers(tiny, table):
    ids = getattr(tiny, table).item_id if table == "items" else tiny.users.user_id
    assert (np.diff(ids) > 0).all()
    # Ids are not 0..n-1, so code that confuses an id with a row fails loudly.
    assert not np.array_equal(ids, np.arange(ids.shape[0]))
    assert (ids >= 0).all()


def test_event_and_qrel_ids_exist(tiny):
    log = tiny.events.log
    assert np.isin(log.item_ids, tiny.items.item_id).all()
    assert np.isin(log.user_ids, tiny.users.user_id).all()
    assert np.isin(tiny.qrels.item_id, tiny.items.item_id).all()
    assert np.isin(tiny.qrels.query_id, tiny.queries.query_id).all()


# --- catalog -------------------------------------------------------------------------------------


@pytest.mark.parametrize("category", CATEGORY_NAMES)
def test_every_category_has_items_with_its_vocabulary(tiny, category):
    spec = SPEC[category]
    rows = tiny.items.category == category
    assert rows.sum() >= 5
    assert set(tiny.items.brand[rows]) <= set(spec.brands)
    assert set(tiny.items.material[rows]) <= set(spec.materials)
    assert set(tiny.items.size[rows]) <= set(spec.sizes)
    assert set(tiny.items.gender[rows]) <= set(spec.genders)
    assert set(tiny.items.colour[rows]) <= set(COLOURS)


def test_titles_name_brand_colour_and_noun(tiny):
    items = tiny.items
    for title, brand, colour, category in zip(
        items.title.tolist(), items.brand.tolist(), items.colour.tolist(),
        items.category.tolist(), strict=True,
    ):
        assert brand in title and colour in title and SPEC[category].noun in title, title


@pytest.mark.parametrize("marker", [", Size ", " - ", " by "])
def test_titles_use_every_template(tiny, marker):
    titles = tiny.items.title[tiny.items.category == "jackets"].tolist()
    assert any(marker in title for title in titles)


def test_prices_positive_and_popularity_a_distribution(tiny):
    assert (tiny.items.price > 0).all()
    assert (tiny.items.popularity > 0).all()
    assert tiny.items.popularity.sum() == pytest.approx(1.0, abs=1e-4)


def test_category_price_medians_follow_configuration(priced):
    items = priced.items
    configured = np.array([spec.price_median for spec in CATEGORIES])
    observed = np.array([np.median(items.price[items.category == s.name]) for s in CATEGORIES])
    np.testing.assert_array_equal(np.argsort(observed), np.argsort(configured))
    np.testing.assert_allclose(observed, configured, rtol=0.15)


# --- behaviour -----------------------------------------------------------------------------------


def test_funnel_views_exceed_carts_exceed_purchases(tiny):
    counts = tiny.events.counts()
    assert list(counts) == list(EVENT_TYPES)
    assert counts["view"] > counts["cart"] > counts["purchase"] > 0


def test_every_purchase_was_carted_and_every_cart_viewed(tiny):
    def pairs(name: str) -> set[tuple[int, int]]:
        log = tiny.events.of_type(name)
        return set(zip(log.user_ids.tolist(), log.item_ids.tolist(), strict=True))

    assert pairs("purchase") <= pairs("cart") <= pairs("view")


def test_weights_follow_event_type(tiny):
    expected = np.array(EVENT_WEIGHTS, dtype=np.float32)[tiny.events.event_type]
    np.testing.assert_array_equal(tiny.events.log.weights, expected)


def test_timestamps_within_the_configured_days_and_sorted(tiny):
    config, ts = tiny.config, tiny.events.log.timestamps
    assert ts.min() >= config.start_timestamp
    assert ts.max() < config.start_timestamp + config.n_days * 86_400
    assert (np.diff(ts) >= 0).all()


def test_popularity_is_zipf_like(tiny):
    # The top 10% of items draw a large share of the views, far more than the 10% of uniform.
    views = tiny.events.of_type("view")
    counts = np.sort(np.bincount(IdMap(tiny.items.item_id).index(views.item_ids)))[::-1]
    top = counts[: len(tiny.items) // 10].sum() / counts.sum()
    assert top > 0.4


def test_views_follow_the_popularity_prior(tiny):
    views = tiny.events.of_type("view")
    counts = np.bincount(IdMap(tiny.items.item_id).index(views.item_ids), minlength=500)
    corr = np.corrcoef(np.log1p(counts), np.log(tiny.items.popularity))[0, 1]
    assert corr > 0.5


def _recall_at_20(scores: np.ndarray, train: sp.csr_matrix, test: sp.csr_matrix) -> float:
    scores = scores.copy()
    scores[train.nonzero()] = -np.inf
    top = np.argpartition(-scores, 20, axis=1)[:, :20]
    hit = np.zeros(scores.shape, bool)
    np.put_along_axis(hit, top, True, axis=1)
    relevant = (test.toarray() > 0) & ~(train.toarray() > 0)
    n_rel = relevant.sum(axis=1)
    users = n_rel > 0
    return float(((hit & relevant).sum(axis=1)[users] / np.minimum(n_rel[users], 20)).mean())


def _mf_over_popularity(config: GeneratorConfig) -> float:
    """Recall@20 of PureSVD divided by that of popularity, on a temporal split."""
    data = generate(config)
    train, test = temporal_split(data.events.log, 0.2, 5)
    users, items = IdMap(data.users.user_id), IdMap(data.items.item_id)
    x, y = to_csr(train, users, items), to_csr(test, users, items)
    x.data = np.log1p(x.data)
    _, _, vt = svds(x.astype(np.float64), k=24, v0=np.ones(min(x.shape)))
    personal = np.asarray(x @ vt.T @ vt)
    popular = np.tile(np.asarray(x.sum(axis=0)), (x.shape[0], 1))
    return _recall_at_20(personal, x, y) / _recall_at_20(popular, x, y)


def test_personalisation_beats_popularity():
    config = GeneratorConfig(n_items=1_000, n_users=1_000, n_queries=10)
    assert _mf_over_popularity(config) > 1.4
    # Control: without tastes the same model does not beat popularity, so the margin above is
    # the users' taste and not an artefact of the evaluation.
    flat = replace(config, taste_strength=0.0, taste_concentration=1e3)
    assert _mf_over_popularity(flat) < 1.0


def test_temporal_split_of_the_log_never_tests_on_the_past(tiny):
    train, test = temporal_split(tiny.events.log, 0.2, 5)
    assert len(train) + len(test) == len(tiny.events)
    assert 0.15 < len(test) / len(tiny.events) < 0.3
    users = np.unique(test.user_ids)
    tested = np.isin(train.user_ids, users)
    last_train = np.full(users.shape[0], np.iinfo(np.int64).min)
    np.maximum.at(last_train, np.searchsorted(users, train.user_ids[tested]),
                  train.timestamps[tested])
    first_test = np.full(users.shape[0], np.iinfo(np.int64).max)
    np.minimum.at(first_test, np.searchsorted(users, test.user_ids), test.timestamps)
    assert (first_test >= last_train).all()


# --- queries -------------------------------------------------------------------------------------


def test_query_texts_unique_and_kinds_in_configured_shares(tiny):
    queries = tiny.queries
    assert np.unique(queries.text).shape[0] == len(queries)
    shares = dict(zip(QUERY_KINDS, tiny.config.query_kind_shares, strict=True))
    for kind, share in shares.items():
        assert (queries.kind == kind).sum() == round(share * len(queries))


@pytest.mark.parametrize("spec", CATEGORIES, ids=CATEGORY_NAMES)
def test_category_synonyms_share_no_token_with_the_category(spec):
    synonyms = SYNONYMS[spec.noun.lower()]
    assert synonyms
    category_tokens = set(tokens(spec.name)) | set(tokens(spec.noun))
    for synonym in synonyms:
        assert not set(tokens(synonym)) & category_tokens, synonym


def test_synonym_inverse_table():
    for word, synonyms in SYNONYMS.items():
        for synonym in synonyms:
            assert SYNONYM_OF[synonym] == word
            assert synonym != word


def test_synonym_queries_share_no_token_with_their_exact_items_category_word(tiny):
    queries, items = tiny.queries, tiny.items
    synonym = np.flatnonzero(queries.kind == "synonym")
    assert synonym.size
    for row in synonym.tolist():
        judged = tiny.qrels.for_queries(queries.query_id[[row]])
        exact_rows = tiny.item_rows(judged.item_id[judged.grade == 3])
        for category in set(items.category[exact_rows].tolist()):
            spec = SPEC[category]
            category_tokens = set(tokens(spec.name)) | set(tokens(spec.noun))
            assert not set(tokens(queries.text[row])) & category_tokens, queries.text[row]


def test_exact_query_words_all_occur_in_their_exact_items(tiny):
    queries = tiny.queries
    for row in np.flatnonzero(queries.kind == "exact").tolist():
        assert queries.text[row] == queries.base_text[row]
        judged = tiny.qrels.for_queries(queries.query_id[[row]])
        for text in tiny.item_text(judged.item_id[judged.grade == 3]).tolist():
            assert set(tokens(queries.text[row])) <= set(tokens(text)), (queries.text[row], text)


def test_typo_queries_differ_from_their_source_by_a_few_characters(tiny):
    queries = tiny.queries
    typo = np.flatnonzero(queries.kind == "typo")
    assert typo.size
    for text, base in zip(queries.text[typo].tolist(), queries.base_text[typo].tolist(),
                          strict=True):
        assert text != base
        assert abs(len(text) - len(base)) <= 2
        assert text.split(" ")[0][0] == base.split(" ")[0][0]


def test_every_query_has_an_exact_item(tiny):
    exact = tiny.qrels.query_id[tiny.qrels.grade == 3]
    np.testing.assert_array_equal(np.unique(exact), tiny.queries.query_id)
    assert (tiny.queries.n_exact >= 1).all()


def test_qrels_grades_match_the_grading_rule(tiny):
    qrels = tiny.qrels
    np.testing.assert_array_equal(tiny.grade(qrels.query_id, qrels.item_id), qrels.grade)


def test_qrels_are_bounded_unique_and_cover_every_grade(tiny):
    config, qrels = tiny.config, tiny.qrels
    pairs = qrels.query_id * 10**9 + qrels.item_id
    assert np.unique(pairs).shape[0] == len(qrels)
    per_query = np.bincount(qrels.query_id)
    sampled = config.n_substitutes + config.n_complements + config.n_irrelevant
    assert per_query.max() <= config.max_exact_judged + sampled
    assert set(np.unique(qrels.grade).tolist()) == {0, 1, 2, 3}
    assert (np.diff(qrels.query_id) >= 0).all()


@pytest.mark.parametrize(("left", "right"), COMPLEMENT_PAIRS)
def test_complement_pairs_grade_one_both_ways(tiny, left, right):
    queries, items = tiny.queries, tiny.items
    for category, other in ((left, right), (right, left)):
        query = queries.query_id[queries.category == category]
        item = items.item_id[items.category == other]
        if query.size and item.size:
            assert tiny.grade(query[0], item[0]) == 1


def test_grade_rules_on_hand_picked_items(tiny):
    queries, items = tiny.queries, tiny.items
    row = int(np.flatnonzero((queries.colour != "") & (queries.kind == "exact"))[0])
    query = queries.query_id[row]
    same = items.category == queries.category[row]
    match = same & (items.colour == queries.colour[row])
    for attr in ("brand", "gender", "material", "size"):
        target = getattr(queries, attr)[row]
        if target:
            match &= getattr(items, attr) == target
    assert tiny.grade(query, items.item_id[match][0]) == 3
    assert tiny.grade(query, items.item_id[same & ~match][0]) == 2
    unrelated = [c for c in CATEGORY_NAMES if c != queries.category[row]
                 and (queries.category[row], c) not in COMPLEMENT_PAIRS
                 and (c, queries.category[row]) not in COMPLEMENT_PAIRS]
    assert tiny.grade(query, items.item_id[items.category == unrelated[0]][0]) == 0


def test_head_queries_carry_the_traffic_and_are_broad(tiny):
    queries = tiny.queries
    assert queries.frequency.sum() == pytest.approx(1.0, abs=1e-5)
    head, tail = queries.is_head, ~queries.is_head
    assert head.sum() == round(tiny.config.head_fraction * len(queries))
    assert queries.frequency[head].min() >= queries.frequency[tail].max()
    assert np.median(queries.n_exact[head]) > np.median(queries.n_exact[tail])


def test_query_issuers_are_users_or_anonymous(tiny):
    issuer = tiny.queries.user_id
    anonymous = issuer == ANONYMOUS
    assert 0.1 < anonymous.mean() < 0.5
    assert np.isin(issuer[~anonymous], tiny.users.user_id).all()


def test_split_queries_is_disjoint_stratified_and_deterministic(tiny):
    train, test = split_queries(tiny, test_fraction=0.2, seed=3)
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.union1d(train, test), tiny.queries.query_id)
    kinds = tiny.queries.kind[test]
    assert set(kinds.tolist()) == set(QUERY_KINDS)
    assert not set(tiny.queries.text[train].tolist()) & set(tiny.queries.text[test].tolist())
    again = split_queries(tiny, test_fraction=0.2, seed=3)
    np.testing.assert_array_equal(again[1], test)
    assert len(tiny.qrels.for_queries(test)) + len(tiny.qrels.for_queries(train)) == len(tiny.qrels)


# --- helpers and I/O -----------------------------------------------------------------------------


def test_item_text_is_aligned_and_refuses_unknown_ids(tiny):
    ids = tiny.items.item_id[[5, 0, 7]]
    text = tiny.item_text(ids)
    assert text.dtype.kind == "U"
    assert [t.split(" | ")[0] for t in text.tolist()] == tiny.items.title[[5, 0, 7]].tolist()
    with pytest.raises(KeyError):
        tiny.item_text(np.array([-5]))


def test_save_load_round_trip(tiny, tmp_path: Path):
    tiny.save(tmp_path / "world")
    loaded = Dataset.load(tmp_path / "world")
    assert_same(tiny, loaded)
    assert loaded.summary() == tiny.summary()


def test_saved_arrays_hold_no_objects(tiny, tmp_path: Path):
    tiny.save(tmp_path)
    files = sorted(tmp_path.glob("*.npz"))
    assert len(files) == 6  # five tables and the hidden tastes
    for path in files:
        with np.load(path, allow_pickle=False) as data:
            for name in data.files:
                assert data[name].dtype != object, f"{path.name}:{name}"


def test_load_refuses_an_incomplete_folder(tiny, tmp_path: Path):
    tiny.save(tmp_path)
    (tmp_path / "qrels.npz").unlink()
    with pytest.raises(FileNotFoundError, match="qrels.npz"):
        Dataset.load(tmp_path)


def test_summary_counts(tiny):
    summary = tiny.summary()
    assert summary["items"] == len(tiny.items)
    assert summary["categories"] == len(CATEGORIES)
    assert summary["events"]["total"] == len(tiny.events)
    assert summary["queries"]["total"] == len(tiny.queries)
    assert summary["qrels"]["total"] == len(tiny.qrels)


@pytest.mark.parametrize(
    "bad",
    [
        {"n_items": 5},
        {"n_users": 0},
        {"n_queries": 0},
        {"views_per_user": 0.5},
        {"query_kind_shares": (1.0, -1.0, 0.5)},
        {"query_kind_shares": (1.0, 1.0)},
        {"anonymous_fraction": 1.5},
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        GeneratorConfig(**bad)


def test_hidden_tastes_reproduce_behaviour_and_survive_save(tmp_path):
    from training.data.generator import Dataset, GeneratorConfig, generate

    data = generate(GeneratorConfig.tiny())
    log = data.events.log
    # Items a user interacted with are liked more than random items, on average.
    chosen = data.affinity(log.user_ids, log.item_ids).mean()
    rng = np.random.default_rng(0)
    random_items = rng.choice(data.items.item_id, log.user_ids.shape[0])
    assert chosen > data.affinity(log.user_ids, random_items).mean() + 0.5
    data.save(tmp_path)
    back = Dataset.load(tmp_path)
    np.testing.assert_array_equal(back.affinity(log.user_ids[:50], log.item_ids[:50]),
                                  data.affinity(log.user_ids[:50], log.item_ids[:50]))


def test_personal_gain_adds_at_most_one_for_known_users():
    from training.data.generator import GeneratorConfig, generate

    data = generate(GeneratorConfig.tiny())
    q = data.qrels.query_id[:200]
    items = data.qrels.item_id[:200]
    grade = data.grade(q, items)
    anonymous = data.personal_gain(q, np.full(200, -1), items)
    np.testing.assert_array_equal(anonymous, grade)
    user = data.users.user_id[0]
    gain = data.personal_gain(q, np.full(200, user), items)
    assert np.all((gain - grade >= 0) & (gain - grade <= 1))
    assert np.all(gain[grade == 0] == 0)
