"""A seeded synthetic e-commerce world: catalog, users, behaviour log, search queries and qrels.

Everything the recall model, the BERT ranker, BM25 and the offline evaluation train and test on
comes from here, so the data is built to carry real, learnable signal:

* **Catalog.** Twelve categories, each with its own brands, materials, sizes and genders, a shared
  colour palette, templated titles ("Nordhavn Men's Navy Wool Jacket, Size L"), log-normal prices
  around a per-category median, and a Zipf popularity within each category.
* **Users and behaviour.** Users have a peaked category preference, a gender, a price affinity
  and a latent taste vector; item vectors are built mostly from their brand and colour, so a
  matrix factorisation model can learn who likes what. Views are drawn by taste x popularity,
  and a funnel turns some views into carts and some carts into purchases, with time stamps over
  ``n_days``.
* **Queries.** Each query is built from a target attribute set (category, plus some of brand,
  colour, material, gender, size) and comes in one of seven kinds (:data:`QUERY_KINDS`). Three
  are solved by words (:data:`LEXICAL_KINDS`): ``exact`` (title words), ``synonym`` (the category
  word and other attribute words swapped for synonyms, so nothing of the category word is left for
  BM25 to match) and ``typo`` (one character edit a word). Four need understanding
  (:data:`UNDERSTANDING_KINDS`), their phrases from :mod:`shopserve.phrasing`: ``described`` (a
  need in other words, "something to carry my laptop to school for my son", with the material,
  colour and gender described, never the category's or the attributes' title words nor any
  synonym of the table), ``paraphrase`` (the category word kept or swapped for a synonym, the
  attributes paraphrased: "jacket warm puffy for a man extra large"), ``negation`` (a category and
  a colour or material it must not be: "black jacket without down"; items with that value are
  irrelevant) and ``misspelling`` (every word spelt by ear, 2-3 edits each: "sneekurz"). Broad
  queries are frequent (head), specific ones rare (tail), by a Zipf law. Graded labels: 3 exact,
  2 substitute (same category), 1 complement (a related category), 0 irrelevant (and any item
  with a value the query excludes); :meth:`Dataset.grade` computes the same grade for any item,
  so evaluation is not limited to the judged pool.

Generation is vectorised with numpy; the only per-item Python work is formatting title strings.
Every random stream comes from one :class:`numpy.random.SeedSequence`, one child per stage, so a
seed gives the same world and changing e.g. ``n_queries`` leaves the catalog and the log alone.
Nothing here is pickled: :meth:`Dataset.save` writes ``.npz`` with text as ``'U'`` arrays.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from shopserve.artifacts import load_npz, save_npz
from shopserve.catalog_files import (
    EVENT_TYPES,
    EVENTS_FILE,
    FORMAT_VERSION,
    ITEMS_FILE,
    META_FILE,
    QRELS_FILE,
    QUERIES_FILE,
    REQUIRED_FILES,
    TRUTH_FILE,
    USERS_FILE,
)
from shopserve.catalog_files import item_text as _item_text
from shopserve.interactions import IdMap, Interactions
from shopserve.phrasing import (
    DESCRIBED_ATTRIBUTES,
    describable,
    describe,
    is_plural,
    misspell,
    negate,
    paraphrasable,
    paraphrase,
)
from shopserve.text import keyboard_neighbours

EVENT_WEIGHTS: tuple[float, ...] = (1.0, 3.0, 5.0)
"""Implicit-feedback confidence of each event type, in :data:`EVENT_TYPES` order."""

LEXICAL_KINDS: tuple[str, ...] = ("exact", "synonym", "typo")
"""Query kinds that words solve: title words, synonyms a table can map, one-edit typos."""

UNDERSTANDING_KINDS: tuple[str, ...] = ("described", "paraphrase", "negation", "misspelling")
"""Query kinds that words alone do not solve: described needs, paraphrased attributes, negations
and misspellings of two or more edits a word."""

QUERY_KINDS: tuple[str, ...] = LEXICAL_KINDS + UNDERSTANDING_KINDS
"""Query kinds, in the order of :attr:`GeneratorConfig.query_kind_shares`."""

QUERY_KIND_SHARES: tuple[float, ...] = (0.35, 0.21, 0.14, 0.09, 0.07, 0.07, 0.07)
"""Default share of each of :data:`QUERY_KINDS`: the lexical kinds keep their former proportions
(5:3:2) in 70% of the queries, the understanding kinds share the other 30% (described 9%,
paraphrase, negation and misspelling 7% each)."""

EXCLUDABLE: tuple[str, ...] = ("colour", "material")
"""Attributes a ``negation`` query can exclude (``Queries.exclude_colour``, ``exclude_material``)."""

GRADES: dict[str, int] = {"exact": 3, "substitute": 2, "complement": 1, "irrelevant": 0}
"""Graded relevance labels."""

ITEM_ID_BASE = 10_000_000
USER_ID_BASE = 1_000
ANONYMOUS = -1
"""User id of a query issued by a visitor who is not logged in."""

GENDERS: tuple[str, ...] = ("men", "women", "unisex", "kids")
_GENDER_TITLE = {"men": "Men's", "women": "Women's", "unisex": "Unisex", "kids": "Kids'"}

COLOURS: tuple[str, ...] = (
    "Black", "White", "Grey", "Navy", "Red", "Olive",
    "Beige", "Brown", "Pink", "Burgundy", "Teal", "Mustard",
)  # fmt: skip

LINES: tuple[str, ...] = (
    "Classic", "Essential", "Pro", "Urban", "Trail", "Studio",
    "Heritage", "Core", "Flex", "Nova", "Edge", "Aero",
)  # fmt: skip
"""Product-line words: they vary titles without carrying any attribute a query targets."""

_APPAREL = ("men", "women", "unisex", "kids")
_NO_GENDER = ("unisex",)
# Attributes a query can target besides its category, in the word order of a query.
_ATTRS = ("brand", "gender", "colour", "material", "size")

# Title templates. Categories where gender applies name it; sizeless goods (headphones) skip size.
_GENDERED_TEMPLATES = (
    "{brand} {gender} {colour} {material} {noun}, Size {size}",
    "{brand} {line} {noun} - {gender}, {colour}, {material}, {size}",
    "{gender} {material} {noun} by {brand} in {colour} ({size})",
)
_GOODS_TEMPLATES = (
    "{brand} {line} {colour} {material} {noun}, {size}",
    "{brand} {material} {noun} in {colour} - {size}",
    "{colour} {material} {noun} by {brand}, {line} Collection, {size}",
)
_SIZELESS_TEMPLATES = (
    "{brand} {line} {colour} {noun}, {material}",
    "{brand} {colour} {material} {noun}",
    "{colour} {noun} by {brand} - {line} Series, {material}",
)


@dataclass(frozen=True)
class CategorySpec:
    """One category's vocabulary, prices and templates.

    Attributes:
        name: Category value in the catalog and the ``category`` filter, e.g. ``jackets``.
        noun: The word titles use for it, e.g. ``Jacket``.
        brands: Brands selling in the category (no brand sells in two categories).
        materials: Materials used in the category.
        sizes: The category's size scale.
        genders: Genders items are made for; ``("unisex",)`` where gender does not apply.
        price_median: Median price (currency units).
        price_sigma: Spread of log price.
        share: Share of the catalog and of the demand.
        templates: Title templates (``str.format`` fields: brand, line, gender, colour, material,
            noun, size).
    """

    name: str
    noun: str
    brands: tuple[str, ...]
    materials: tuple[str, ...]
    sizes: tuple[str, ...]
    genders: tuple[str, ...]
    price_median: float
    price_sigma: float
    share: float
    templates: tuple[str, ...]

    @property
    def gendered(self) -> bool:
        """Whether titles and queries name a gender."""
        return self.genders != _NO_GENDER


CATEGORIES: tuple[CategorySpec, ...] = (
    CategorySpec(
        "shoes", "Sneakers",
        ("Stridewell", "Kestrel", "Paceline", "Solvik", "Trekka", "Vantor"),
        ("Leather", "Suede", "Canvas", "Mesh", "Knit"),
        ("37", "38", "39", "40", "41", "42", "43", "44", "45"),
        _APPAREL, 115.0, 0.35, 0.12, _GENDERED_TEMPLATES,
    ),
    CategorySpec(
        "t-shirts", "T-Shirt",
        ("Cottonfield", "Basique", "Loomwell", "Tessel", "Marlowe", "Pimaro"),
        ("Cotton", "Linen", "Jersey", "Bamboo", "Modal"),
        ("XS", "S", "M", "L", "XL", "XXL"),
        _APPAREL, 25.0, 0.35, 0.13, _GENDERED_TEMPLATES,
    ),
    CategorySpec(
        "jeans", "Jeans",
        ("Riveted", "Selvra", "Denholm", "Bluecrest", "Raworth", "Castella"),
        ("Denim", "Stretch Denim", "Selvedge Denim", "Organic Cotton", "Recycled Denim"),
        ("W28", "W30", "W32", "W34", "W36"),
        _APPAREL, 70.0, 0.35, 0.10, _GENDERED_TEMPLATES,
    ),
    CategorySpec(
        "jackets", "Jacket",
        ("Nordhavn", "Fjellro", "Stormline", "Ashbury", "Glacis", "Vindur"),
        ("Wool", "Down", "Leather", "Fleece", "Nylon", "Softshell"),
        ("XS", "S", "M", "L", "XL", "XXL"),
        _APPAREL, 200.0, 0.4, 0.09, _GENDERED_TEMPLATES,
    ),
    CategorySpec(
        "dresses", "Dress",
        ("Rosalind", "Bellamie", "Odette", "Florentia", "Sabine", "Lunara"),
        ("Silk", "Cotton", "Linen", "Satin", "Chiffon", "Viscose"),
        ("XS", "S", "M", "L", "XL"),
        ("women", "kids"), 90.0, 0.4, 0.08, _GENDERED_TEMPLATES,
    ),
    CategorySpec(
        "backpacks", "Backpack",
        ("Packwell", "Trailhaus", "Bergen", "Rovana", "Carrick", "Voyanta"),
        ("Nylon", "Canvas", "Leather", "Polyester", "Waxed Canvas"),
        ("15L", "20L", "25L", "30L"),
        ("unisex", "kids"), 55.0, 0.35, 0.06, _GENDERED_TEMPLATES,
    ),
    CategorySpec(
        "watches", "Watch",
        ("Chronex", "Halden", "Tempora", "Oberlin", "Marivel", "Sekunda"),
        ("Steel", "Titanium", "Leather", "Silicone", "Ceramic"),
        ("36mm", "40mm", "42mm", "44mm"),
        ("men", "women", "unisex"), 280.0, 0.5, 0.06, _GENDERED_TEMPLATES,
    ),
    CategorySpec(
        "headphones", "Headphones",
        ("Sonara", "Auralis", "Bassline", "Quietwave", "Echelon", "Tonic"),
        ("Aluminium", "Plastic", "Leatherette", "Fabric"),
        ("One Size",),
        _NO_GENDER, 150.0, 0.5, 0.08, _SIZELESS_TEMPLATES,
    ),
    CategorySpec(
        "sofas", "Sofa",
        ("Hyggely", "Loftmann", "Cushla", "Oakridge", "Sundby", "Velloro"),
        ("Velvet", "Linen", "Leather", "Boucle", "Corduroy", "Cotton"),
        ("2-Seater", "3-Seater", "Corner"),
        _NO_GENDER, 900.0, 0.35, 0.04, _GOODS_TEMPLATES,
    ),
    CategorySpec(
        "lamps", "Lamp",
        ("Lumeno", "Glowhaus", "Brightwell", "Lanterna", "Solstra", "Kandela"),
        ("Brass", "Ceramic", "Glass", "Rattan", "Steel", "Oak"),
        ("Small", "Medium", "Large"),
        _NO_GENDER, 40.0, 0.45, 0.05, _GOODS_TEMPLATES,
    ),
    CategorySpec(
        "mugs", "Mug",
        ("Brewster", "Potterly", "Kilnworth", "Mugsy", "Ceramo", "Steepwell"),
        ("Ceramic", "Stoneware", "Porcelain", "Enamel", "Glass"),
        ("250ml", "350ml", "450ml"),
        _NO_GENDER, 12.0, 0.3, 0.09, _GOODS_TEMPLATES,
    ),
    CategorySpec(
        "phone-cases", "Phone Case",
        ("Shellguard", "Caseo", "Armora", "Slimfit", "Grippa", "Protekt"),
        ("Silicone", "Leather", "Rubber", "Carbon Fibre", "Polycarbonate"),
        ("iPhone 15", "iPhone 15 Pro", "Galaxy S24", "Pixel 8"),
        _NO_GENDER, 18.0, 0.3, 0.10, _GOODS_TEMPLATES,
    ),
)  # fmt: skip
"""The catalog's categories, in category-code order."""

CATEGORY_NAMES: tuple[str, ...] = tuple(spec.name for spec in CATEGORIES)

COMPLEMENT_PAIRS: tuple[tuple[str, str], ...] = (
    ("jeans", "t-shirts"),
    ("jeans", "shoes"),
    ("jackets", "t-shirts"),
    ("jackets", "backpacks"),
    ("dresses", "shoes"),
    ("dresses", "watches"),
    ("headphones", "phone-cases"),
    ("backpacks", "headphones"),
    ("sofas", "lamps"),
    ("lamps", "mugs"),
    ("mugs", "sofas"),
)
"""Categories bought together; the relation is symmetric. An item of a category paired with the
query's category is a complement (grade 1)."""

SYNONYMS: dict[str, tuple[str, ...]] = {
    # Category nouns, keyed by the title word in lower case. No synonym shares a token with the
    # noun or the category name: that is what makes ``synonym`` queries hard for BM25.
    "sneakers": ("trainers", "kicks", "footwear"),
    "t-shirt": ("tee", "top", "crewneck"),
    "jeans": ("trousers", "pants", "five-pockets"),
    "jacket": ("coat", "parka", "anorak"),
    "dress": ("gown", "frock", "sundress"),
    "backpack": ("rucksack", "knapsack", "daypack"),
    "watch": ("wristwatch", "timepiece", "chronograph"),
    "headphones": ("earphones", "headset", "earbuds"),
    "sofa": ("couch", "settee", "loveseat"),
    "lamp": ("light", "luminaire", "lighting"),
    "mug": ("cup", "coffee cup", "tumbler"),
    "phone case": ("mobile cover", "smartphone cover", "handset sleeve"),
    # Colours.
    "black": ("ebony", "jet"),
    "white": ("ivory", "cream"),
    "grey": ("gray", "charcoal"),
    "navy": ("dark blue", "midnight blue"),
    "red": ("scarlet", "crimson"),
    "olive": ("khaki", "army green"),
    "beige": ("sand", "tan"),
    "brown": ("chocolate", "chestnut"),
    "pink": ("rose", "blush"),
    "burgundy": ("maroon", "oxblood"),
    "teal": ("turquoise", "petrol"),
    "mustard": ("ochre", "yellow"),
    # Genders, keyed by the title word in lower case.
    "men's": ("male", "guys", "gents"),
    "women's": ("ladies", "female"),
    "kids'": ("children", "junior"),
    "unisex": ("gender neutral",),
    # Materials (spelling variants and near-synonyms).
    "aluminium": ("aluminum",),
    "steel": ("stainless",),
    "wool": ("merino",),
    "velvet": ("velour",),
    "suede": ("nubuck",),
}
"""Title word (lower case) -> words a shopper may type instead. The ranker and BM25 evaluation use
it; the generator draws ``synonym`` queries from it."""

SYNONYM_OF: dict[str, str] = {syn: word for word, syns in SYNONYMS.items() for syn in syns}
"""Inverse of :data:`SYNONYMS`: synonym -> title word."""

# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class GeneratorConfig:
    """Sizes and knobs of a generated world. All defaults give the ``demo`` size.

    Attributes:
        n_items: Catalog size.
        n_users: Registered users.
        n_queries: Distinct search queries (fewer only if the vocabulary runs out).
        n_days: Length of the behaviour log.
        seed: Seed of every random stream.
        latent_dim: Dimension of user and item taste vectors.
        zipf_exponent: Exponent of item popularity within a category.
        views_per_user: Mean views per user (activity is log-normal around it).
        taste_strength: Scale of the user x item affinity in choices; 0 = popularity only.
        taste_concentration: Dirichlet concentration of users' category preference; smaller is
            more peaked (users shop in fewer categories).
        candidates_per_view: Popularity-drawn candidates a view chooses among by taste.
        cart_logit: Log-odds of carting a viewed item liked as much as an average candidate.
        purchase_logit: Log-odds of buying a carted item liked as much as an average candidate.
        start_timestamp: Start of the log, seconds since the epoch (default 2026-01-01 UTC).
        query_kind_shares: Share of each of :data:`QUERY_KINDS`, in that order (default
            :data:`QUERY_KIND_SHARES`: exact .35, synonym .21, typo .14, described .09, paraphrase
            .07, negation .07, misspelling .07).
        query_zipf_exponent: Exponent of query traffic over query frequency rank.
        head_fraction: Fraction of queries, most frequent first, flagged as head queries.
        anonymous_fraction: Fraction of queries issued by anonymous visitors (user id -1).
        max_exact_judged: Most grade-3 items judged per query (all of them when fewer).
        n_substitutes: Grade-2 items sampled per query.
        n_complements: Grade-1 items sampled per query.
        n_irrelevant: Grade-0 items sampled per query.
    """

    n_items: int = 5_000
    n_users: int = 2_000
    n_queries: int = 1_000
    n_days: int = 60
    seed: int = 0
    latent_dim: int = 16
    zipf_exponent: float = 1.1
    views_per_user: float = 20.0
    taste_strength: float = 3.0
    taste_concentration: float = 0.15
    candidates_per_view: int = 16
    cart_logit: float = -3.2
    purchase_logit: float = -1.2
    start_timestamp: int = 1_767_225_600
    query_kind_shares: tuple[float, ...] = QUERY_KIND_SHARES
    query_zipf_exponent: float = 1.0
    head_fraction: float = 0.1
    anonymous_fraction: float = 0.3
    max_exact_judged: int = 100
    n_substitutes: int = 10
    n_complements: int = 5
    n_irrelevant: int = 5

    def __post_init__(self) -> None:
        positive = ("n_items", "n_users", "n_queries", "n_days", "latent_dim",
                    "candidates_per_view", "max_exact_judged")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"GeneratorConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_items < len(CATEGORIES):
            raise ValueError(
                f"GeneratorConfig.n_items must be >= {len(CATEGORIES)} (an item per category)"
            )
        if self.views_per_user < 1:
            raise ValueError("GeneratorConfig.views_per_user must be >= 1")
        shares = tuple(float(s) for s in self.query_kind_shares)
        if len(shares) != len(QUERY_KINDS) or min(shares) < 0 or sum(shares) <= 0:
            raise ValueError(
                f"GeneratorConfig.query_kind_shares needs {len(QUERY_KINDS)} non-negative shares "
                f"(one per kind of {QUERY_KINDS}), got {self.query_kind_shares}"
            )
        # JSON round trips give lists; keep the field hashable and comparable.
        object.__setattr__(self, "query_kind_shares", shares)
        for name in ("head_fraction", "anonymous_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"GeneratorConfig.{name} must be within [0, 1]")

    @classmethod
    def tiny(cls, seed: int = 0) -> GeneratorConfig:
        """Unit-test size: 500 items, 200 users, 100 queries; well under a second."""
        return cls(n_items=500, n_users=200, n_queries=100, n_days=30, seed=seed,
                   views_per_user=15.0, max_exact_judged=50)

    @classmethod
    def demo(cls, seed: int = 0) -> GeneratorConfig:
        """Local-stack size: 5k items, 2k users, 1k queries; a second or two."""
        return cls(seed=seed)

    @classmethod
    def bench(cls, n_items: int = 1_000_000, seed: int = 0) -> GeneratorConfig:
        """Benchmark size: ``n_items`` items, a user per ten items, 10k queries."""
        return cls(n_items=n_items, n_users=max(1_000, n_items // 10), n_queries=10_000,
                   n_days=90, seed=seed, views_per_user=20.0)


# ---------------------------------------------------------------------------------------------
# Tables


def _columns(table: Any) -> dict[str, np.ndarray]:
    return {f.name: getattr(table, f.name) for f in fields(table)}


def _check_lengths(table: Any) -> None:
    lengths = {name: col.shape[0] for name, col in _columns(table).items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{type(table).__name__} columns differ in length: {lengths}")


@dataclass(frozen=True, eq=False)  # array columns: == would be ambiguous
class Items:
    """The catalog, one row per item, rows in ascending ``item_id`` order.

    Attributes:
        item_id: External id (int64, sorted, not contiguous).
        title: Product title.
        category: Category name (see :data:`CATEGORY_NAMES`).
        brand: Brand.
        colour: Colour, as in :data:`COLOURS`.
        material: Material.
        size: Size on the category's scale.
        gender: ``men``, ``women``, ``unisex`` or ``kids`` (``unisex`` where it does not apply).
        price: Price (float32, > 0).
        popularity: Prior share of views (float32, sums to 1).
    """

    item_id: np.ndarray
    title: np.ndarray
    category: np.ndarray
    brand: np.ndarray
    colour: np.ndarray
    material: np.ndarray
    size: np.ndarray
    gender: np.ndarray
    price: np.ndarray
    popularity: np.ndarray

    def __post_init__(self) -> None:
        _check_lengths(self)

    def __len__(self) -> int:
        return int(self.item_id.shape[0])


@dataclass(frozen=True, eq=False)  # array columns: == would be ambiguous
class Users:
    """Registered users, rows in ascending ``user_id`` order.

    Attributes:
        user_id: External id (int64, sorted, not contiguous, never -1).
        gender: ``men`` or ``women``.
        has_kids: Whether the user also shops for kids.
        top_category: The category the user prefers most.
        price_affinity: > 0 leans to dearer items within a category, < 0 to cheaper (float32).
        activity: Relative activity level, mean 1 (float32).
    """

    user_id: np.ndarray
    gender: np.ndarray
    has_kids: np.ndarray
    top_category: np.ndarray
    price_affinity: np.ndarray
    activity: np.ndarray

    def __post_init__(self) -> None:
        _check_lengths(self)

    def __len__(self) -> int:
        return int(self.user_id.shape[0])


@dataclass(frozen=True, eq=False)  # array columns: == would be ambiguous
class Events:
    """The behaviour log: the interactions plus each event's type.

    Attributes:
        log: Interactions sorted by time; weights follow :data:`EVENT_WEIGHTS`.
        event_type: Index into :data:`EVENT_TYPES` (int8).
    """

    log: Interactions
    event_type: np.ndarray

    def __post_init__(self) -> None:
        if self.event_type.shape[0] != len(self.log):
            raise ValueError("event_type and the interaction log differ in length")

    def __len__(self) -> int:
        return len(self.log)

    def of_type(self, name: str) -> Interactions:
        """The events of one type (``view``, ``cart`` or ``purchase``)."""
        return self.log.take(self.event_type == EVENT_TYPES.index(name))

    def counts(self) -> dict[str, int]:
        """Number of events of each type."""
        per_type = np.bincount(self.event_type.astype(np.int64), minlength=len(EVENT_TYPES))
        return {name: int(n) for name, n in zip(EVENT_TYPES, per_type, strict=True)}


@dataclass(frozen=True, eq=False)  # array columns: == would be ambiguous
class Queries:
    """Search queries, rows in ascending ``query_id`` order (``query_id`` = row).

    Target attributes are what a query asks for; an empty string leaves that attribute free.
    Excluded values are what a ``negation`` query refuses (``''`` when none): an item with one is
    irrelevant whatever else it matches.

    Attributes:
        query_id: Id (int64).
        text: What the shopper typed (lower case).
        kind: One of :data:`QUERY_KINDS`.
        base_text: The ``exact`` wording of the same target (equal to ``text`` for exact queries);
            for a negation, the positive targets' wording then ``not`` and the excluded value.
        user_id: Issuing user, :data:`ANONYMOUS` (-1) for a visitor.
        category: Target category (always set).
        brand: Target brand or ``''``.
        colour: Target colour or ``''``.
        material: Target material or ``''``.
        gender: Target gender or ``''``.
        size: Target size or ``''``.
        exclude_colour: Colour the query excludes or ``''``.
        exclude_material: Material the query excludes or ``''``.
        frequency: Share of search traffic (float32, sums to 1).
        is_head: Whether the query is among the most frequent ``head_fraction``.
        n_exact: Number of catalog items that match every target attribute and have no excluded
            value (grade 3).
    """

    query_id: np.ndarray
    text: np.ndarray
    kind: np.ndarray
    base_text: np.ndarray
    user_id: np.ndarray
    category: np.ndarray
    brand: np.ndarray
    colour: np.ndarray
    material: np.ndarray
    gender: np.ndarray
    size: np.ndarray
    exclude_colour: np.ndarray
    exclude_material: np.ndarray
    frequency: np.ndarray
    is_head: np.ndarray
    n_exact: np.ndarray

    def __post_init__(self) -> None:
        _check_lengths(self)

    def __len__(self) -> int:
        return int(self.query_id.shape[0])

    def take(self, rows: np.ndarray) -> Queries:
        """The queries at the given rows (or boolean mask)."""
        return Queries(**{name: col[rows] for name, col in _columns(self).items()})


@dataclass(frozen=True, eq=False)  # array columns: == would be ambiguous
class Qrels:
    """Graded relevance judgments, one row per judged (query, item) pair, sorted by query.

    Attributes:
        query_id: Query id (int64).
        item_id: Item id (int64).
        grade: 3 exact, 2 substitute, 1 complement, 0 irrelevant (int8).
    """

    query_id: np.ndarray
    item_id: np.ndarray
    grade: np.ndarray

    def __post_init__(self) -> None:
        _check_lengths(self)

    def __len__(self) -> int:
        return int(self.query_id.shape[0])

    def for_queries(self, query_ids: np.ndarray) -> Qrels:
        """The judgments of the given queries only."""
        keep = np.isin(self.query_id, np.asarray(query_ids, dtype=np.int64))
        return Qrels(self.query_id[keep], self.item_id[keep], self.grade[keep])


#: Table -> file, as the catalog component's format names them (shopserve.catalog_files).
_FILES = {"items": ITEMS_FILE, "users": USERS_FILE, "events": EVENTS_FILE, "queries": QUERIES_FILE,
          "qrels": QRELS_FILE}


@dataclass(frozen=True, eq=False)
class Truth:
    """The generator's hidden tastes, kept to judge personalisation offline (never served).

    Attributes:
        user_vectors: Latent taste per user row (float32 ``[n_users, d]``).
        item_vectors: Latent vector per item row (float32 ``[n_items, d]``, unit norm).
        item_price_z: Standardised log price of each item within its category (float32).
        taste_strength: Scale of the latent term in :func:`affinity_logits`.
    """

    user_vectors: np.ndarray
    item_vectors: np.ndarray
    item_price_z: np.ndarray
    taste_strength: float


def affinity_logits(
    latent: np.ndarray, item_gender: np.ndarray, user_gender: np.ndarray, has_kids: np.ndarray,
    price_affinity: np.ndarray, price_z: np.ndarray, taste_strength: float,
) -> np.ndarray:
    """How much a user likes an item (the logit behind every simulated choice).

    Adults mostly shop their own gender and unisex; kids' items only if they have kids; a price
    affinity leans to dearer or cheaper items within a category. Arguments broadcast; genders are
    codes into :data:`GENDERS`.
    """
    wrong_gender = (item_gender <= 1) & (item_gender != user_gender)
    kids = (item_gender == GENDERS.index("kids")) & ~has_kids
    return taste_strength * latent - 2.5 * wrong_gender - 2.0 * kids + 0.7 * price_affinity * price_z


@dataclass(frozen=True, eq=False)  # array columns: == would be ambiguous
class Dataset:
    """A generated world: catalog, users, behaviour log, queries and their judgments.

    Attributes:
        config: The configuration it was generated from.
        items: The catalog.
        users: Registered users.
        events: The behaviour log.
        queries: Search queries.
        qrels: Graded judgments of a bounded pool of items per query.
        meta: Extra facts read back by :meth:`load` (the summary saved with the files).
        truth: The hidden tastes behind the behaviour, for offline judgments of personalisation.
    """

    config: GeneratorConfig
    items: Items
    users: Users
    events: Events
    queries: Queries
    qrels: Qrels
    meta: dict[str, Any] = field(default_factory=dict)
    truth: Truth | None = None

    @cached_property
    def item_map(self) -> IdMap:
        """Item id <-> row of :attr:`items`."""
        return IdMap(self.items.item_id)

    @cached_property
    def user_map(self) -> IdMap:
        """User id <-> row of :attr:`users`."""
        return IdMap(self.users.user_id)

    def item_rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Rows of the given item ids in :attr:`items`.

        Raises:
            KeyError: an id is not in the catalog.
        """
        rows = self.item_map.index(np.asarray(item_ids, dtype=np.int64))
        if (rows < 0).any():
            unknown = np.asarray(item_ids)[rows < 0][:5].tolist()
            raise KeyError(f"unknown item ids {unknown}")
        return rows

    def item_text(self, item_ids: np.ndarray | None = None) -> np.ndarray:
        """The text a lexical index sees per item: the title, then every attribute.

        Every word of an ``exact`` query occurs in the text of each of its grade-3 items.

        Args:
            item_ids: Items to describe; all items in row order when None.

        Returns:
            A ``'U'`` array aligned with ``item_ids``.

        Raises:
            KeyError: an id is not in the catalog.
        """
        rows = None if item_ids is None else self.item_rows(item_ids)
        return _item_text(_columns(self.items), rows)

    def grade(self, query_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """Graded relevance of any (query, item) pairs, judged or not.

        Uses the rules the qrels were made with: 0 when the item has a value the query excludes
        (a negation's colour or material, whatever its category), else 3 when the item is of the
        target category and matches every target attribute (brand, gender, colour, material,
        size), 2 for another item of the target category, 1 for an item of a complementary
        category (:data:`COMPLEMENT_PAIRS`), else 0. The arguments broadcast against each other.

        Returns:
            int8 grades of the broadcast shape.
        """
        q_ids, i_ids = np.broadcast_arrays(np.asarray(query_ids, np.int64),
                                           np.asarray(item_ids, np.int64))
        q_rows = _query_rows(self.queries, q_ids.ravel())
        i_rows = self.item_rows(i_ids.ravel())
        return _grade(self.queries, q_rows, self.items, i_rows).reshape(q_ids.shape)

    def affinity(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """The hidden taste logit of users for items (arguments broadcast; known users only).

        Raises:
            ValueError: the dataset carries no :class:`Truth` (e.g. loaded without it).
            KeyError: an unknown user or item id.
        """
        if self.truth is None:
            raise ValueError("this dataset has no hidden tastes to judge personalisation with")
        u = self.user_map.index(np.asarray(user_ids))
        i = self.item_map.index(np.asarray(item_ids))
        if (u < 0).any() or (i < 0).any():
            raise KeyError("affinity needs known user and item ids")
        u, i = np.broadcast_arrays(u, i)
        latent = np.einsum("...d,...d->...", self.truth.user_vectors[u], self.truth.item_vectors[i])
        return affinity_logits(
            latent, _gender_codes(self.items.gender[i]), _gender_codes(self.users.gender[u]),
            self.users.has_kids[u], self.users.price_affinity[u], self.truth.item_price_z[i],
            self.truth.taste_strength,
        ).astype(np.float32)

    def personal_gain(
        self, query_ids: np.ndarray, user_ids: np.ndarray, item_ids: np.ndarray
    ) -> np.ndarray:
        """Graded relevance plus one for relevant items the issuing user likes (affinity > 0).

        Anonymous shoppers (-1) get the plain grade. This is the label that shows whether
        personalisation helps: two items equally relevant to the query are not equally good for
        every shopper.
        """
        grade = self.grade(query_ids, item_ids).astype(np.float32)
        user_ids, item_ids, grade = np.broadcast_arrays(np.asarray(user_ids), np.asarray(item_ids),
                                                        grade)
        bonus = np.zeros(grade.shape, dtype=np.float32)
        known = (user_ids != ANONYMOUS) & (grade > 0)
        if known.any():
            bonus[known] = (self.affinity(user_ids[known], item_ids[known]) > 0).astype(np.float32)
        return grade + bonus

    def summary(self) -> dict[str, Any]:
        """Counts and parameters for a bundle manifest's data summary."""
        kinds, kind_counts = np.unique(self.queries.kind, return_counts=True)
        grades = np.bincount(self.qrels.grade.astype(np.int64), minlength=4)
        return {
            "source": "training.data.generator",
            "format_version": FORMAT_VERSION,
            "seed": self.config.seed,
            "items": len(self.items),
            "categories": int(np.unique(self.items.category).shape[0]),
            "users": len(self.users),
            "events": self.events.counts() | {"total": len(self.events)},
            "interactions": self.events.log.summary(),
            "queries": {str(k): int(n) for k, n in zip(kinds, kind_counts, strict=True)}
            | {"total": len(self.queries), "head": int(self.queries.is_head.sum())},
            "qrels": {name: int(grades[g]) for name, g in GRADES.items()}
            | {"total": len(self.qrels)},
        }

    def save(self, folder: Path | str) -> None:
        """Write the dataset as ``.npz`` files (no pickle) plus ``dataset.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        log = self.events.log
        tables: dict[str, dict[str, np.ndarray]] = {
            "items": _columns(self.items),
            "users": _columns(self.users),
            "events": {
                "user_id": log.user_ids, "item_id": log.item_ids, "timestamp": log.timestamps,
                "weight": log.weights, "event_type": self.events.event_type,
            },
            "queries": _columns(self.queries),
            "qrels": _columns(self.qrels),
        }
        for name, columns in tables.items():
            save_npz(folder / _FILES[name], **columns)
        if self.truth is not None:
            save_npz(folder / TRUTH_FILE, user_vectors=self.truth.user_vectors,
                     item_vectors=self.truth.item_vectors, item_price_z=self.truth.item_price_z,
                     taste_strength=np.float32(self.truth.taste_strength))
        meta = {
            "format_version": FORMAT_VERSION,
            "config": asdict(self.config),
            "summary": self.summary(),
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, folder: Path | str) -> Dataset:
        """Read a dataset written by :meth:`save`.

        Raises:
            FileNotFoundError: a file of the dataset is missing.
            ValueError: the files were written by an incompatible format version.
        """
        folder = Path(folder)
        missing = [n for n in REQUIRED_FILES if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: not a generated dataset, missing {missing}")
        meta = json.loads((folder / META_FILE).read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{folder}: dataset format {meta.get('format_version')}, expected {FORMAT_VERSION}"
            )
        raw = {name: load_npz(folder / file) for name, file in _FILES.items()}
        ev = raw["events"]
        return cls(
            config=GeneratorConfig(**_upgrade_config(meta["config"])),
            items=Items(**raw["items"]),
            users=Users(**raw["users"]),
            events=Events(
                Interactions(ev["user_id"], ev["item_id"], ev["timestamp"], ev["weight"]),
                ev["event_type"],
            ),
            queries=Queries(**_upgrade_queries(raw["queries"])),
            qrels=Qrels(**raw["qrels"]),
            meta={"summary": meta.get("summary", {})},
            truth=_load_truth(folder / TRUTH_FILE),
        )


_GENDER_ORDER = np.argsort(np.array(GENDERS))
_SORTED_GENDERS = np.array(GENDERS)[_GENDER_ORDER]


def _gender_codes(names: np.ndarray) -> np.ndarray:
    """Codes into :data:`GENDERS` of gender names."""
    return _GENDER_ORDER[np.searchsorted(_SORTED_GENDERS, names)]


def _upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A saved configuration from before the understanding kinds: their shares were 0."""
    shares = config.get("query_kind_shares")
    if shares is not None and len(shares) == len(LEXICAL_KINDS):
        config = config | {"query_kind_shares": [*shares, *[0.0] * len(UNDERSTANDING_KINDS)]}
    return config


def _upgrade_queries(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Saved queries from before negations: nothing excluded."""
    n = columns["query_id"].shape[0]
    missing = {f"exclude_{a}": np.full(n, "", dtype="U1") for a in EXCLUDABLE
               if f"exclude_{a}" not in columns}  # fmt: skip
    return columns | missing


def _load_truth(path: Path) -> Truth | None:
    if not path.is_file():
        return None
    raw = load_npz(path)
    return Truth(raw["user_vectors"], raw["item_vectors"], raw["item_price_z"],
                 float(raw["taste_strength"]))


def _query_rows(queries: Queries, query_ids: np.ndarray) -> np.ndarray:
    rows = IdMap(queries.query_id).index(query_ids)
    if (rows < 0).any():
        raise KeyError(f"unknown query ids {query_ids[rows < 0][:5].tolist()}")
    return rows


_COMPLEMENT = np.zeros((len(CATEGORIES), len(CATEGORIES)), dtype=bool)
for _a, _b in COMPLEMENT_PAIRS:
    _COMPLEMENT[CATEGORY_NAMES.index(_a), CATEGORY_NAMES.index(_b)] = True
    _COMPLEMENT[CATEGORY_NAMES.index(_b), CATEGORY_NAMES.index(_a)] = True
_SORTED_CATEGORIES = np.array(sorted(CATEGORY_NAMES))
_SORTED_TO_CODE = np.array([CATEGORY_NAMES.index(n) for n in _SORTED_CATEGORIES])


def _category_codes(names: np.ndarray) -> np.ndarray:
    return _SORTED_TO_CODE[np.searchsorted(_SORTED_CATEGORIES, names)]


def _grade(queries: Queries, q_rows: np.ndarray, items: Items, i_rows: np.ndarray) -> np.ndarray:
    q_cat = queries.category[q_rows]
    i_cat = items.category[i_rows]
    same = q_cat == i_cat
    exact = same.copy()
    for attr in _ATTRS:
        target = getattr(queries, attr)[q_rows]
        exact &= (target == "") | (target == getattr(items, attr)[i_rows])
    excluded = np.zeros(same.shape, bool)
    for attr in EXCLUDABLE:
        value = getattr(queries, f"exclude_{attr}")[q_rows]
        excluded |= (value != "") & (value == getattr(items, attr)[i_rows])
    complement = _COMPLEMENT[_category_codes(q_cat), _category_codes(i_cat)]
    graded = np.where(exact, 3, np.where(same, 2, np.where(complement, 1, 0)))
    return np.where(excluded, 0, graded).astype(np.int8)


def split_queries(
    dataset: Dataset, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split query ids into train and test, stratified by query kind.

    Query texts are unique, so no test query's text is ever trained on; the same target may appear
    in both sides under different wordings, which is what teaches a ranker synonyms. Every kind of
    :data:`QUERY_KINDS`, the understanding ones too, is held out in the same fraction.

    Returns:
        ``(train_query_ids, test_query_ids)``, each sorted.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be within (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    queries = dataset.queries
    test: list[np.ndarray] = []
    for kind in QUERY_KINDS:
        ids = queries.query_id[queries.kind == kind]
        n_test = int(round(ids.shape[0] * test_fraction))
        test.append(rng.permutation(ids)[:n_test])
    test_ids = np.sort(np.concatenate(test)).astype(np.int64)
    train_ids = np.setdiff1d(queries.query_id, test_ids).astype(np.int64)
    return train_ids, test_ids


# ---------------------------------------------------------------------------------------------
# Generation


@dataclass(frozen=True)
class _Vocab:
    """Global code tables: every attribute value once, so item attributes are small int codes."""

    brands: np.ndarray  # 'U', global brand code -> name
    brand_tier: np.ndarray  # brand code -> log-price offset, centred within each category
    materials: np.ndarray  # 'U', global material code -> name
    cat_materials: list[np.ndarray]  # category -> its material codes
    sizes: np.ndarray
    cat_sizes: list[np.ndarray]
    cat_brands: list[np.ndarray]
    cat_genders: list[np.ndarray]  # category -> gender codes into GENDERS
    templates: list[str]
    cat_templates: list[np.ndarray]

    @classmethod
    def build(cls) -> _Vocab:
        brands: list[str] = []
        brand_tier: list[float] = []
        materials: list[str] = []
        sizes: list[str] = []
        templates: list[str] = []
        cat_brands, cat_materials, cat_sizes, cat_genders, cat_templates = [], [], [], [], []
        for spec in CATEGORIES:
            start = len(brands)
            brands.extend(spec.brands)
            # Premium and budget brands, centred so the category median stays as configured.
            brand_tier.extend(np.linspace(-0.25, 0.25, len(spec.brands)).tolist())
            cat_brands.append(np.arange(start, len(brands)))
            cat_materials.append(np.array([_intern(materials, m) for m in spec.materials]))
            cat_sizes.append(np.array([_intern(sizes, s) for s in spec.sizes]))
            cat_genders.append(np.array([GENDERS.index(g) for g in spec.genders]))
            cat_templates.append(np.array([_intern(templates, t) for t in spec.templates]))
        return cls(
            np.array(brands), np.array(brand_tier),
            np.array(materials), cat_materials, np.array(sizes), cat_sizes, cat_brands,
            cat_genders, templates, cat_templates,
        )


def _intern(table: list[str], value: str) -> int:
    if value not in table:
        table.append(value)
    return table.index(value)


@dataclass(frozen=True)
class _Catalog:
    """Item attributes as codes, plus what behaviour and queries need."""

    category: np.ndarray  # int64 category code per row
    brand: np.ndarray
    colour: np.ndarray
    material: np.ndarray
    size: np.ndarray
    gender: np.ndarray
    price_z: np.ndarray  # standardised log price within the category (float32)
    vectors: np.ndarray  # item taste vectors (n, d) float32, unit norm
    by_category: np.ndarray  # rows grouped by category, most popular first within each
    cat_start: np.ndarray  # offset of each category in by_category
    cat_count: np.ndarray  # items per category


def _largest_remainder(total: int, shares: np.ndarray, minimum: int = 1) -> np.ndarray:
    """Integer counts summing to ``total``, proportional to ``shares``, each >= ``minimum``."""
    free = total - minimum * shares.shape[0]
    raw = shares / shares.sum() * free
    counts = np.floor(raw).astype(np.int64)
    remainder = free - int(counts.sum())
    counts[np.argsort(-(raw - counts), kind="stable")[:remainder]] += 1
    return counts + minimum


def _zipf_inverse_cdf(u: np.ndarray, n: np.ndarray, s: float) -> np.ndarray:
    """Ranks ``0..n-1`` drawn by inverse CDF from the continuous Zipf law on ``[0, n]``.

    The mass of rank ``r`` is ``F(r+1) - F(r)``, with ``F(x)`` proportional to
    ``(x+1)^(1-s) - 1`` (``log(x+1)`` for ``s = 1``): close to ``(r+1)^-s``, and exact for this
    sampler, so popularity and draws agree and each draw costs O(1) instead of a search over the
    category.
    """
    n = n.astype(np.float64)
    if abs(s - 1.0) < 1e-9:
        x = np.power(n + 1.0, u) - 1.0
    else:
        a = 1.0 - s
        x = np.power(1.0 + u * (np.power(n + 1.0, a) - 1.0), 1.0 / a) - 1.0
    return np.minimum(np.floor(x).astype(np.int64), n.astype(np.int64) - 1)


def _zipf_mass(n: int, s: float) -> np.ndarray:
    """Mass of ranks ``0..n-1`` under :func:`_zipf_inverse_cdf`."""
    x = np.arange(n + 1, dtype=np.float64)
    cdf = np.log1p(x) if abs(s - 1.0) < 1e-9 else np.power(x + 1.0, 1.0 - s) - 1.0
    return np.diff(cdf) / (cdf[-1] - cdf[0])


def _generate_catalog(
    config: GeneratorConfig, vocab: _Vocab, rng: np.random.Generator
) -> tuple[Items, _Catalog]:
    n = config.n_items
    n_cat = len(CATEGORIES)
    shares = np.array([spec.share for spec in CATEGORIES])
    counts = _largest_remainder(n, shares)
    category = rng.permutation(np.repeat(np.arange(n_cat), counts))

    brand = np.empty(n, np.int64)
    material = np.empty(n, np.int64)
    size = np.empty(n, np.int64)
    gender = np.empty(n, np.int64)
    template = np.empty(n, np.int64)
    log_price = np.empty(n, np.float64)
    price_z = np.empty(n, np.float32)
    rank_in_cat = np.empty(n, np.int64)
    popularity = np.empty(n, np.float64)
    colour = rng.integers(0, len(COLOURS), n)
    line = rng.integers(0, len(LINES), n)
    for code, spec in enumerate(CATEGORIES):  # per category, never per item
        rows = np.flatnonzero(category == code)
        k = rows.shape[0]
        brand[rows] = rng.choice(vocab.cat_brands[code], k)
        material[rows] = rng.choice(vocab.cat_materials[code], k)
        size[rows] = rng.choice(vocab.cat_sizes[code], k)
        gender[rows] = rng.choice(vocab.cat_genders[code], k)
        template[rows] = rng.choice(vocab.cat_templates[code], k)
        z = rng.standard_normal(k)
        price_z[rows] = z
        log_price[rows] = np.log(spec.price_median) + spec.price_sigma * z + vocab.brand_tier[
            brand[rows]
        ]
        # Popularity rank within the category is random: a hit can be any brand or colour.
        ranks = rng.permutation(k)
        rank_in_cat[rows] = ranks
        popularity[rows] = spec.share / shares.sum() * _zipf_mass(k, config.zipf_exponent)[ranks]
    # Psychological price points: 24.99 rather than 25.13.
    price = np.maximum(np.round(np.exp(log_price)) - 0.01, 0.99).astype(np.float32)

    # Item taste vectors: shared brand and colour directions (brand loyalty and colour taste,
    # which a low-rank model can learn from few events per item) plus a smaller item-specific part.
    d = config.latent_dim
    brand_vec = rng.standard_normal((vocab.brands.shape[0], d))
    colour_vec = rng.standard_normal((len(COLOURS), d))
    vectors = brand_vec[brand] + colour_vec[colour] + 0.5 * rng.standard_normal((n, d))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    by_category = np.lexsort((rank_in_cat, category))
    cat_start = np.r_[0, np.cumsum(counts)[:-1]]

    gaps = rng.integers(1, 4, n)
    item_id = (ITEM_ID_BASE + np.cumsum(gaps)).astype(np.int64)

    noun = np.array([spec.noun for spec in CATEGORIES])
    gender_title = np.array([_GENDER_TITLE[g] for g in GENDERS])
    columns = zip(
        template.tolist(), vocab.brands[brand].tolist(), np.array(LINES)[line].tolist(),
        gender_title[gender].tolist(), np.array(COLOURS)[colour].tolist(),
        vocab.materials[material].tolist(), noun[category].tolist(), vocab.sizes[size].tolist(),
        strict=True,
    )
    templates = vocab.templates
    titles = [
        templates[t].format(brand=b, line=li, gender=g, colour=c, material=m, noun=no, size=s)
        for t, b, li, g, c, m, no, s in columns
    ]
    items = Items(
        item_id=item_id,
        title=np.array(titles, dtype=np.str_),
        category=np.array(CATEGORY_NAMES)[category],
        brand=vocab.brands[brand],
        colour=np.array(COLOURS)[colour],
        material=vocab.materials[material],
        size=vocab.sizes[size],
        gender=np.array(GENDERS)[gender],
        price=price,
        popularity=popularity.astype(np.float32),
    )
    catalog = _Catalog(
        category=category, brand=brand, colour=colour, material=material, size=size,
        gender=gender, price_z=price_z, vectors=vectors.astype(np.float32),
        by_category=by_category, cat_start=cat_start, cat_count=counts,
    )
    return items, catalog


@dataclass(frozen=True)
class _Tastes:
    category_pref: np.ndarray  # (n_users, n_cat), rows sum to 1
    vectors: np.ndarray  # (n_users, d) float32
    gender: np.ndarray  # 0 men, 1 women (codes into GENDERS)
    has_kids: np.ndarray
    price_affinity: np.ndarray
    activity: np.ndarray


def _generate_users(config: GeneratorConfig, rng: np.random.Generator) -> tuple[Users, _Tastes]:
    n = config.n_users
    shares = np.array([spec.share for spec in CATEGORIES])
    alpha = config.taste_concentration * len(CATEGORIES) * shares / shares.sum()
    # Dirichlet draws with small alpha underflow to exact zeros; the floor keeps every category
    # reachable (a user may still browse outside their favourites).
    pref = rng.dirichlet(alpha, n) + 1e-3
    pref /= pref.sum(axis=1, keepdims=True)
    vectors = rng.standard_normal((n, config.latent_dim)).astype(np.float32)
    gender = rng.integers(0, 2, n)
    has_kids = rng.random(n) < 0.25
    price_affinity = rng.normal(0.0, 0.7, n).astype(np.float32)
    activity = rng.lognormal(0.0, 0.8, n)
    activity = (activity / activity.mean()).astype(np.float32)
    gaps = rng.integers(1, 3, n)
    users = Users(
        user_id=(USER_ID_BASE + np.cumsum(gaps)).astype(np.int64),
        gender=np.array(GENDERS)[gender],
        has_kids=has_kids,
        top_category=np.array(CATEGORY_NAMES)[pref.argmax(axis=1)],
        price_affinity=price_affinity,
        activity=activity,
    )
    return users, _Tastes(pref, vectors, gender, has_kids, price_affinity, activity)


_CHUNK = 1 << 17


def _affinity(
    config: GeneratorConfig, catalog: _Catalog, tastes: _Tastes, users: np.ndarray,
    rows: np.ndarray,
) -> np.ndarray:
    """Taste logits ``(m, k)`` of users ``users`` ``(m,)`` for item rows ``rows`` ``(m, k)``."""
    latent = np.matmul(catalog.vectors[rows], tastes.vectors[users][:, :, None])[:, :, 0]
    u = users[:, None]
    return affinity_logits(latent, catalog.gender[rows], tastes.gender[u], tastes.has_kids[u],
                           tastes.price_affinity[u], catalog.price_z[rows], config.taste_strength)



def _generate_events(
    config: GeneratorConfig, catalog: _Catalog, tastes: _Tastes, user_ids: np.ndarray,
    item_ids: np.ndarray, rng: np.random.Generator,
) -> Events:
    n_users = user_ids.shape[0]
    lam = config.views_per_user * tastes.activity.astype(np.float64)
    n_views = 1 + rng.poisson(np.maximum(lam - 1.0, 0.0))
    view_user = np.repeat(np.arange(n_users), n_views)
    total = view_user.shape[0]
    cum_pref = np.cumsum(tastes.category_pref, axis=1)
    k = config.candidates_per_view

    view_item = np.empty(total, np.int64)
    view_liking = np.empty(total, np.float32)
    for start in range(0, total, _CHUNK):
        users = view_user[start : start + _CHUNK]
        m = users.shape[0]
        # Category from the user's preference, then k candidates by popularity within it, then
        # the candidate with the best taste logit + Gumbel noise: a draw from
        # popularity x exp(taste) (sampling-importance-resampling), without scoring the catalog.
        category = (rng.random((m, 1)) > cum_pref[users]).sum(axis=1)
        category = np.minimum(category, len(CATEGORIES) - 1)
        ranks = _zipf_inverse_cdf(
            rng.random((m, k)), catalog.cat_count[category][:, None], config.zipf_exponent
        )
        candidates = catalog.by_category[catalog.cat_start[category][:, None] + ranks]
        logits = _affinity(config, catalog, tastes, users, candidates)
        pick = np.argmax(logits + rng.gumbel(size=(m, k)), axis=1)
        view_item[start : start + m] = candidates[np.arange(m), pick]
        # The funnel sees how much the user liked the item relative to the other candidates, so
        # cart and purchase rates stay put when taste_strength changes.
        chosen = logits[np.arange(m), pick]
        spread = logits.std(axis=1) + 1e-6
        view_liking[start : start + m] = (chosen - logits.mean(axis=1)) / spread

    span = config.n_days * 86_400
    end = config.start_timestamp + span - 1
    view_time = config.start_timestamp + rng.integers(0, span, total)
    # Funnel: liked items are carted more often, and carts of liked items bought more often.
    carted = rng.random(total) < _sigmoid(config.cart_logit + 0.8 * view_liking)
    cart_idx = np.flatnonzero(carted)
    cart_time = np.minimum(view_time[cart_idx] + 30 + rng.exponential(600.0, cart_idx.size), end)
    bought = rng.random(cart_idx.shape[0]) < _sigmoid(
        config.purchase_logit + 0.5 * view_liking[cart_idx]
    )
    buy_idx = cart_idx[bought]
    buy_time = np.minimum(cart_time[bought] + 60 + rng.exponential(1_800.0, buy_idx.shape[0]), end)

    users = np.concatenate([view_user, view_user[cart_idx], view_user[buy_idx]])
    rows = np.concatenate([view_item, view_item[cart_idx], view_item[buy_idx]])
    times = np.concatenate([view_time, cart_time, buy_time]).astype(np.int64)
    etype = np.concatenate([
        np.zeros(total, np.int8), np.ones(cart_idx.shape[0], np.int8),
        np.full(buy_idx.shape[0], 2, np.int8),
    ])
    order = np.lexsort((etype, users, times))
    weights = np.array(EVENT_WEIGHTS, dtype=np.float32)[etype[order]]
    log = Interactions(
        user_ids=user_ids[users[order]],
        item_ids=item_ids[rows[order]],
        timestamps=times[order],
        weights=weights,
    )
    return Events(log, etype[order])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# Query patterns: the target attributes besides the category, with their shares of queries. The
# longer ones make the long tail; they also keep 10k+ distinct texts available at bench scale.
_PATTERNS: tuple[tuple[tuple[str, ...], float], ...] = (
    ((), 0.08),
    (("colour",), 0.14),
    (("gender",), 0.06),
    (("gender", "colour"), 0.12),
    (("brand",), 0.10),
    (("material",), 0.07),
    (("brand", "colour"), 0.10),
    (("colour", "material"), 0.06),
    (("gender", "colour", "material"), 0.07),
    (("brand", "gender", "colour"), 0.06),
    (("brand", "colour", "material"), 0.05),
    (("colour", "size"), 0.05),
    (("brand", "colour", "size"), 0.04),
)
# Radix of each attribute's code in a packed match key (> the number of values of each).
_KEY_RADIX = (("brand", 256), ("colour", 64), ("material", 256), ("gender", 8), ("size", 64))
# Typo edits substitute letters with a neighbour on a QWERTY keyboard, as fingers do.
_NEIGHBOURS: dict[str, str] = keyboard_neighbours()


def _typo(word: str, rng: np.random.Generator) -> str:
    """One character-level edit: delete, transpose, substitute a neighbour key, or double."""
    for _ in range(8):
        i = int(rng.integers(1, len(word) - 1))  # keep the first letter, as most typos do
        edit = int(rng.integers(0, 4))
        if edit == 0:
            out = word[:i] + word[i + 1 :]
        elif edit == 1:
            out = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        elif edit == 2 and word[i] in _NEIGHBOURS:
            near = _NEIGHBOURS[word[i]]
            out = word[:i] + near[int(rng.integers(0, len(near)))] + word[i + 1 :]
        else:
            out = word[:i] + word[i] + word[i:]
        if out != word:
            return out
    return word[:-1]


def _make_typo(text: str, rng: np.random.Generator) -> str:
    words = text.split(" ")
    editable = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not editable:
        editable = [i for i, w in enumerate(words) if len(w) >= 3] or [len(words) - 1]
    n_edits = 1 if len(editable) < 3 else 2
    for i in rng.choice(editable, size=min(n_edits, len(editable)), replace=False).tolist():
        word = words[i]
        words[i] = _typo(word, rng) if len(word) >= 3 else word + word[-1]
    return " ".join(words)


def _synonym(word: str, rng: np.random.Generator) -> str:
    options = SYNONYMS.get(word)
    return options[int(rng.integers(0, len(options)))] if options else word


@dataclass
class _QueryDraft:
    category: int
    attrs: dict[str, int]  # attribute -> code, for the targeted attributes
    kind: int
    text: str
    base_text: str
    excludes: dict[str, int] = field(default_factory=dict)  # attribute -> code it must not have


def _size_words(size: str) -> str:
    # "size l" and "size 42" read like queries; "w32", "25l" or "iphone 15" stand on their own.
    return f"size {size}" if len(size) <= 3 and (size.isalpha() or size.isdigit()) else size


def _draft_queries(
    config: GeneratorConfig, vocab: _Vocab, catalog: _Catalog, popularity: np.ndarray,
    rng: np.random.Generator,
) -> list[_QueryDraft]:
    """Distinct query texts, each targeting the attributes of a popularity-drawn seed item.

    Draws in batches until every kind has its quota or the vocabulary runs dry (then there are
    fewer than ``n_queries``), dropping texts already drawn and draws a kind cannot use (a
    paraphrase of a query with nothing to paraphrase).
    """
    p = popularity.astype(np.float64)
    p /= p.sum()  # in float64: a float32 sum over 1M items is off by more than choice() allows
    pattern_p = np.array([w for _, w in _PATTERNS])
    pattern_p /= pattern_p.sum()
    kind_p = np.array(config.query_kind_shares)
    kind_p /= kind_p.sum()
    nouns = [spec.noun.lower() for spec in CATEGORIES]
    names = [name.replace("-", " ") for name in CATEGORY_NAMES]
    sizes = [str(size).lower() for size in vocab.sizes]
    colours = [c.lower() for c in COLOURS]
    materials = [str(m).lower() for m in vocab.materials]

    def draw(n: int) -> int:
        return int(rng.integers(0, n))

    quota = _largest_remainder(config.n_queries, kind_p, minimum=0)
    drafts: list[_QueryDraft] = []
    seen: set[str] = set()
    batch = 2 * config.n_queries + 64
    for _ in range(10):
        if len(drafts) == config.n_queries:
            break
        seeds = rng.choice(p.shape[0], batch, p=p)
        patterns = rng.choice(len(_PATTERNS), batch, p=pattern_p)
        kinds = rng.choice(len(QUERY_KINDS), batch, p=kind_p)
        for seed_row, pattern, kind in zip(seeds.tolist(), patterns.tolist(), kinds.tolist(),
                                           strict=True):
            if len(drafts) == config.n_queries:
                break
            if quota[kind] == 0:
                continue
            cat = int(catalog.category[seed_row])
            spec = CATEGORIES[cat]
            name = QUERY_KINDS[kind]
            # Attributes the category does not vary (gender of a sofa, size of headphones) are
            # never targeted: they would not narrow anything.
            wanted = tuple(
                a for a in _PATTERNS[pattern][0]
                if not (a == "gender" and not spec.gendered)
                and not (a == "size" and len(spec.sizes) == 1)
            )
            codes = {attr: int(getattr(catalog, attr)[seed_row]) for attr in _ATTRS}
            values = {
                "brand": str(vocab.brands[codes["brand"]]).lower(),
                "gender": GENDERS[codes["gender"]],
                "colour": colours[codes["colour"]],
                "material": materials[codes["material"]],
                "size": sizes[codes["size"]],
            }
            words = values | {"gender": _GENDER_TITLE[values["gender"]].lower()}
            excludes: dict[str, int] = {}
            if name == "described":
                # A need names neither a brand nor a size: those would give it away in title words.
                wanted = tuple(a for a in wanted if a in DESCRIBED_ATTRIBUTES
                               and describable(a, values[a]))  # fmt: skip
            elif name == "paraphrase" and not any(paraphrasable(a, values[a]) for a in wanted):
                continue
            elif name == "negation":
                # Exclude a colour or material the seed item does not have (so it stays an exact
                # match); a target on the same attribute makes way for the exclusion.
                attr = EXCLUDABLE[draw(len(EXCLUDABLE))]
                choices = (np.arange(len(COLOURS)) if attr == "colour"
                           else vocab.cat_materials[cat])  # fmt: skip
                choices = choices[choices != codes[attr]]
                excludes = {attr: int(choices[draw(choices.shape[0])])}
                wanted = tuple(a for a in wanted if a != attr)
            attrs = {a: codes[a] for a in wanted}
            # A category-only query uses either the title noun or the category name: both occur
            # in the item text, so both are exact.
            noun = nouns[cat] if wanted or rng.random() < 0.5 else names[cat]
            size = [_size_words(sizes[codes["size"]])] if "size" in attrs else []
            lead = [a for a in _ATTRS if a in attrs and a != "size"]
            base = " ".join([words[a] for a in lead] + [noun] + size)
            text: str | None
            if name == "exact":
                text = base
            elif name == "synonym":
                # Brands and sizes have no synonyms; every other word is swapped where the table
                # has one, and the category word always is.
                swapped = [_synonym(words[a], rng) for a in lead]
                text = " ".join(swapped + [_synonym(nouns[cat], rng)] + size)
            elif name == "typo":
                text = _make_typo(base, rng)
            elif name == "described":
                text = describe(CATEGORY_NAMES[cat], {a: values[a] for a in attrs}, draw)
            elif name == "paraphrase":
                word = nouns[cat] if draw(2) else _synonym(nouns[cat], rng)
                text = paraphrase(word, {a: values[a] for a in attrs if a != "brand"}, draw,
                                  brand=values["brand"] if "brand" in attrs else "",
                                  size_words=" ".join(size))
            elif name == "negation":
                ((attr, code),) = excludes.items()
                excluded = colours[code] if attr == "colour" else materials[code]
                text = negate(base, attr, excluded, draw, plural=is_plural(noun))
                base = f"{base} not {excluded}"
            else:
                text = misspell(base, draw)
            if text is None or text in seen:
                continue
            seen.add(text)
            quota[kind] -= 1
            drafts.append(_QueryDraft(cat, attrs, kind, text, base, excludes))
    return drafts


def _pattern_key(catalog: _Catalog, attrs: tuple[str, ...]) -> np.ndarray:
    """One int64 per item packing its category and the given attributes (others left 0)."""
    key = catalog.category.astype(np.int64)
    for attr, radix in _KEY_RADIX:
        key = key * radix + (getattr(catalog, attr) if attr in attrs else 0)
    return key


def _draft_key(draft: _QueryDraft) -> int:
    key = draft.category
    for attr, radix in _KEY_RADIX:
        key = key * radix + draft.attrs.get(attr, 0)
    return key


def _generate_queries(
    config: GeneratorConfig, vocab: _Vocab, catalog: _Catalog, items: Items, tastes: _Tastes,
    user_ids: np.ndarray, rng: np.random.Generator,
) -> tuple[Queries, Qrels]:
    drafts = _draft_queries(config, vocab, catalog, items.popularity, rng)
    n = len(drafts)

    # Exact matches of every query through one sorted key per pattern: a binary search per
    # query instead of scanning the catalog.
    exact_rows: list[np.ndarray] = [np.zeros(0, np.int64)] * n
    by_pattern: dict[tuple[str, ...], list[int]] = {}
    for qi, draft in enumerate(drafts):
        by_pattern.setdefault(tuple(sorted(draft.attrs)), []).append(qi)
    for attrs, members in by_pattern.items():
        keys = _pattern_key(catalog, attrs)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        q_keys = np.array([_draft_key(drafts[qi]) for qi in members], dtype=np.int64)
        lo = np.searchsorted(sorted_keys, q_keys, "left")
        hi = np.searchsorted(sorted_keys, q_keys, "right")
        for qi, a, b in zip(members, lo.tolist(), hi.tolist(), strict=True):
            rows = order[a:b]
            for attr, code in drafts[qi].excludes.items():
                rows = rows[getattr(catalog, attr)[rows] != code]
            exact_rows[qi] = rows
    n_exact = np.array([rows.shape[0] for rows in exact_rows], dtype=np.int64)

    # Who searches: a visitor, or a user drawn by their taste for the target category (so the
    # user's history says something about the query).
    category = np.array([d.category for d in drafts], dtype=np.int64)
    issuer = np.full(n, ANONYMOUS, dtype=np.int64)
    known = rng.random(n) >= config.anonymous_fraction
    weight = tastes.category_pref * tastes.activity[:, None]
    for code in range(len(CATEGORIES)):
        which = np.flatnonzero(known & (category == code))
        if which.size:
            p = weight[:, code] / weight[:, code].sum()
            issuer[which] = user_ids[rng.choice(user_ids.shape[0], which.size, p=p)]

    # Broad queries are frequent, specific ones rare: rank by (noisy) number of matching items,
    # then give traffic by a Zipf law over that rank.
    breadth = np.log1p(n_exact) + rng.normal(0.0, 0.75, n)
    rank = np.empty(n, np.int64)
    rank[np.argsort(-breadth, kind="stable")] = np.arange(n)
    frequency = np.power(rank + 1.0, -config.query_zipf_exponent)
    frequency /= frequency.sum()
    is_head = rank < max(1, int(round(config.head_fraction * n)))

    def target(attr: str, names: np.ndarray, excluded: bool = False) -> np.ndarray:
        codes = [d.excludes if excluded else d.attrs for d in drafts]
        values = [str(names[c[attr]]) if attr in c else "" for c in codes]
        return np.array(values, dtype=np.str_) if values else np.zeros(0, "U1")

    queries = Queries(
        query_id=np.arange(n, dtype=np.int64),
        text=np.array([d.text for d in drafts], dtype=np.str_),
        kind=np.array([QUERY_KINDS[d.kind] for d in drafts], dtype=np.str_),
        base_text=np.array([d.base_text for d in drafts], dtype=np.str_),
        user_id=issuer,
        category=np.array(CATEGORY_NAMES)[category],
        brand=target("brand", vocab.brands),
        colour=target("colour", np.array(COLOURS)),
        material=target("material", vocab.materials),
        gender=target("gender", np.array(GENDERS)),
        size=target("size", vocab.sizes),
        exclude_colour=target("colour", np.array(COLOURS), excluded=True),
        exclude_material=target("material", vocab.materials, excluded=True),
        frequency=frequency.astype(np.float32),
        is_head=is_head,
        n_exact=n_exact,
    )
    qrels = _judge(config, catalog, items, queries, drafts, exact_rows, rng)
    return queries, qrels


def _judge(
    config: GeneratorConfig, catalog: _Catalog, items: Items, queries: Queries,
    drafts: list[_QueryDraft], exact_rows: list[np.ndarray], rng: np.random.Generator,
) -> Qrels:
    """A bounded judged pool per query: exact items, then sampled substitutes, complements and
    irrelevant items.

    Vectorised over queries: every query gets a fixed-width row of sampled candidates (three per
    judgment wanted, to survive duplicates and grade misses), graded on attribute codes by the
    same rule as :meth:`Dataset.grade` (a unit test checks they agree). A negation's excluded
    items fall among the irrelevant ones, same-category ones first: the hard negatives it needs.
    """
    n = len(queries)
    if n == 0:
        return Qrels(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8))
    category = np.array([d.category for d in drafts], dtype=np.int64)
    targets = np.array([[d.attrs.get(a, -1) for a in _ATTRS] for d in drafts], dtype=np.int64)
    excludes = np.array([[d.excludes.get(a, -1) for a in EXCLUDABLE] for d in drafts],
                        dtype=np.int64)

    def in_category(cats: np.ndarray, width: int) -> np.ndarray:
        offsets = (rng.random((n, width)) * catalog.cat_count[cats]).astype(np.int64)
        return catalog.by_category[catalog.cat_start[cats] + offsets]

    # Complement categories of each category, padded to a table; a draw picks one uniformly.
    comp_count = _COMPLEMENT.sum(axis=1)
    comp_table = np.argsort(~_COMPLEMENT, axis=1, kind="stable")  # complements come first
    comp_width = 3 * config.n_complements
    pick = (rng.random((n, comp_width)) * comp_count[category][:, None]).astype(np.int64)
    comp_cats = comp_table[category[:, None], pick]
    pool = np.concatenate([
        in_category(category[:, None], 3 * config.n_substitutes),
        in_category(comp_cats, comp_width),
        rng.integers(0, len(items), (n, 3 * config.n_irrelevant)),
    ], axis=1)
    grades = _grade_codes(category, targets, excludes, catalog, pool)

    # Each row's first occurrence of an item only, then the first `quota` of each grade.
    order = np.argsort(pool, axis=1, kind="stable")
    sorted_pool = np.take_along_axis(pool, order, axis=1)
    repeat_sorted = np.c_[np.zeros((n, 1), bool), sorted_pool[:, 1:] == sorted_pool[:, :-1]]
    repeat = np.empty_like(repeat_sorted)
    np.put_along_axis(repeat, order, repeat_sorted, axis=1)
    keep = np.zeros(pool.shape, bool)
    for grade, quota in ((2, config.n_substitutes), (1, config.n_complements),
                         (0, config.n_irrelevant)):
        wanted = (grades == grade) & ~repeat
        keep |= wanted & (np.cumsum(wanted, axis=1) <= quota)
    sampled_q, sampled_col = np.nonzero(keep)

    # All exact items, but at most max_exact_judged of a broad query (picked at random).
    exact = [
        rows if rows.shape[0] <= config.max_exact_judged
        else np.sort(rng.choice(rows, config.max_exact_judged, replace=False))
        for rows in exact_rows
    ]
    exact_q = np.repeat(np.arange(n), [rows.shape[0] for rows in exact])
    q_rows = np.concatenate([exact_q, sampled_q])
    i_rows = np.concatenate([*exact, pool[sampled_q, sampled_col]]).astype(np.int64)
    grade = np.concatenate([np.full(exact_q.shape[0], 3, np.int8), grades[sampled_q, sampled_col]])
    by_query = np.argsort(q_rows, kind="stable")
    return Qrels(
        queries.query_id[q_rows[by_query]], items.item_id[i_rows[by_query]], grade[by_query]
    )


def _grade_codes(
    category: np.ndarray, targets: np.ndarray, excludes: np.ndarray, catalog: _Catalog,
    rows: np.ndarray,
) -> np.ndarray:
    """:func:`_grade` on codes: queries ``(n,)`` with targets ``(n, len(_ATTRS))`` and excluded
    values ``(n, len(EXCLUDABLE))`` (-1 = none) against item rows ``(n, m)``."""
    item_cat = catalog.category[rows]
    same = item_cat == category[:, None]
    exact = same.copy()
    for j, attr in enumerate(_ATTRS):
        target = targets[:, j, None]
        exact &= (target < 0) | (target == getattr(catalog, attr)[rows])
    excluded = np.zeros(same.shape, bool)
    for j, attr in enumerate(EXCLUDABLE):
        value = excludes[:, j, None]
        excluded |= (value >= 0) & (value == getattr(catalog, attr)[rows])
    complement = _COMPLEMENT[category[:, None], item_cat]
    graded = np.where(exact, 3, np.where(same, 2, np.where(complement, 1, 0)))
    return np.where(excluded, 0, graded).astype(np.int8)


def generate(config: GeneratorConfig | None = None) -> Dataset:
    """Generate a world from a configuration (the ``demo`` size by default).

    Deterministic: the same configuration gives an identical dataset.
    """
    config = config or GeneratorConfig.demo()
    catalog_rng, user_rng, event_rng, query_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(4)
    )
    vocab = _Vocab.build()
    items, catalog = _generate_catalog(config, vocab, catalog_rng)
    users, tastes = _generate_users(config, user_rng)
    events = _generate_events(config, catalog, tastes, users.user_id, items.item_id, event_rng)
    queries, qrels = _generate_queries(
        config, vocab, catalog, items, tastes, users.user_id, query_rng
    )
    truth = Truth(tastes.vectors, catalog.vectors, catalog.price_z, config.taste_strength)
    return Dataset(config, items, users, events, queries, qrels, truth=truth)
