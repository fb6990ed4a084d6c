"""How shoppers ask for things without the catalog's words: the phrase tables and edit functions of
the query classes that words alone do not solve.

One place for the data generator's judged queries (``training.data.generator``) and the load
test's composed tail (``loadtest.tail``), which may not import the build (the ``loadtest``
import-linter contract): the same need phrases, attribute paraphrases, negations and misspellings
on both sides, as :func:`shopserve.text.keyboard_neighbours` is one table for both typos.

* :data:`NEED_PHRASES`: per category, a need described in other words ("something to carry my
  laptop to school" for a backpack); ``{who}`` in a phrase is the person it is for.
* :data:`RELATIONS`, :data:`GENDER_PHRASES`: a gender through the person it is for ("for my
  husband") and in plain words ("for a man").
* :data:`COLOUR_PHRASES`: a colour through a thing of that colour ("the colour of soot"). No
  "dark": it is a token of the synonym ``dark blue``, which rewriting already knows.
* :data:`MATERIAL_PHRASES`: a material through its property or its stuff ("warm puffy" for down,
  "breathable" for mesh, "made of hide" for leather).
* :data:`SIZE_PHRASES`: a size in other units or words ("extra large", "uk 8", "28 inch waist").
* :data:`NEGATORS`: words that exclude a colour or a material ("not", "without", "that isn't").
* :func:`misspell`: two or three character edits per word (phonetic substitutions, doubled and
  dropped letters, transpositions), at least two edits (Damerau-Levenshtein) from the word.

Tables are keyed by the catalog's values in lower case (``black``, ``stretch denim``, ``xl``;
genders by their names ``men``, ``women``, ``unisex``, ``kids``). No phrase shares a token
(:func:`shopserve.text.tokens`) with a category noun or name, a colour, a material or a gender
word of the catalog, nor with the generator's synonym table; a size phrase shares none with its own
size. That is what makes these queries hard for BM25 and for the mined synonym rewriting (the
generator's unit tests check it against its vocabulary).

Randomness comes in as a :data:`Draw` so one implementation serves a numpy ``Generator`` (the
generator) and a ``random.Random`` (the load test).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

Draw = Callable[[int], int]
"""``draw(n)``: a uniform integer in ``[0, n)``, e.g. ``random.Random().randrange`` or
``lambda n: int(generator.integers(0, n))``."""

#: Who a need is for when no gender is asked for (fills ``{who}``).
SOMEONE = "someone"

NEED_PHRASES: dict[str, tuple[str, ...]] = {
    "shoes": (
        "something for my feet for running in the rain",
        "what to wear for jogging in the park",
        "lace ups for the gym",
        "something comfy to walk around town all day",
    ),
    "t-shirts": (
        "something breezy to wear on hot days",
        "a plain layer to wear under a hoodie",
        "what to wear to the beach on a hot afternoon",
        "casual gym clothing for warm weather",
    ),
    "jeans": (
        "casual bottoms for the weekend",
        "sturdy everyday legwear",
        "something for my legs that goes with everything",
        "hard wearing work bottoms",
    ),
    "jackets": (
        "something to keep me warm outside in winter",
        "outerwear for a windy autumn walk",
        "what to wear over my jumper when it rains",
        "something to throw on when it gets chilly outside",
    ),
    "dresses": (
        "something to wear to a wedding as a guest",
        "an outfit for a summer garden party",
        "something elegant for a cocktail evening",
        "an outfit for a date night",
    ),
    "backpacks": (
        "something to carry my laptop to school",
        "a bag for my hiking trip",
        "something to carry my books on my shoulders",
        "a hands free bag for commuting",
    ),
    "watches": (
        "something on my wrist to tell the time",
        "a present for {who} who is always checking the time",
        "a wrist accessory that shows the hour",
        "something to know the hour without pulling out my cell",
    ),
    "headphones": (
        "something to listen to music on the train",
        "a way to hear podcasts without bothering anybody",
        "noise blocking gear for a long flight",
        "something to wear over my ears for gaming",
    ),
    "sofas": (
        "somewhere comfy for the whole family to sit",
        "seating for my living room",
        "something to lounge on in front of the tv",
        "a place for guests to sit in the lounge",
    ),
    "lamps": (
        "something to read by at night",
        "a glow for my desk when i work late",
        "something to brighten a gloomy room",
        "bedside illumination",
    ),
    "mugs": (
        "something to drink my morning tea from",
        "a present for {who} who loves tea",
        "something for hot cocoa",
        "a vessel for my morning brew",
    ),
    "phone-cases": (
        "protection for my cell if i drop it",
        "something so my screen does not crack when it falls",
        "a shell to guard my cell against drops",
        "a grip for my cell so it stops slipping",
    ),
}
"""Category name -> needs a shopper describes instead of naming the product."""

RELATIONS: dict[str, tuple[str, ...]] = {
    "men": ("my husband", "my dad", "my boyfriend", "my brother"),
    "women": ("my wife", "my mum", "my girlfriend", "my sister"),
    "kids": ("my son", "my daughter", "a toddler", "my nephew"),
    "unisex": ("anyone", "him or her"),
}
"""Gender -> the person a described need is for (``for my husband``)."""

CATEGORY_RELATIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "dresses": {"kids": ("my daughter", "my niece", "a little girl")},
}
"""Category -> gender -> who a described need is for, where :data:`RELATIONS` would not do (a
kids' dress is rarely for a son)."""

GENDER_PHRASES: dict[str, tuple[str, ...]] = {
    "men": ("for a man", "for gentlemen", "for him"),
    "women": ("for a woman", "for her", "for a lady"),
    "kids": ("for a toddler", "for a child", "for youngsters"),
    "unisex": ("for him or her", "for anyone", "for everybody"),
}
"""Gender -> a paraphrase of the title's gender word."""

COLOUR_PHRASES: dict[str, tuple[str, ...]] = {
    "black": ("coal coloured", "the colour of soot", "raven coloured"),
    "white": ("snow coloured", "the colour of milk", "chalk coloured"),
    "grey": ("slate coloured", "the colour of storm clouds", "ash coloured"),
    "navy": ("the colour of the deep sea", "sailor suit coloured", "deep ocean coloured"),
    "red": ("the colour of ripe tomatoes", "fire engine coloured", "cherry coloured"),
    "olive": ("moss coloured", "the colour of moss", "sage coloured"),
    "beige": ("oatmeal coloured", "the colour of biscuits", "camel coloured"),
    "brown": ("the colour of tree bark", "conker coloured", "walnut coloured"),
    "pink": ("flamingo coloured", "bubblegum coloured", "the colour of candy floss"),
    "burgundy": ("wine coloured", "the colour of claret", "plum coloured"),
    "teal": ("peacock coloured", "the colour of a lagoon", "kingfisher coloured"),
    "mustard": ("the colour of egg yolk", "sunflower coloured", "honey coloured"),
}
"""Colour -> the colour described through something of that colour."""

MATERIAL_PHRASES: dict[str, tuple[str, ...]] = {
    "leather": ("made of hide", "made from tanned hide"),
    "suede": ("made of napped hide", "with a brushed nap"),
    "canvas": ("made of sturdy woven cloth", "sailcloth"),
    "mesh": ("breathable", "airy and breathable"),
    "knit": ("sock like", "made of soft yarn"),
    "cotton": ("soft natural cloth", "everyday natural cloth"),
    "linen": ("made from flax", "crumpled summery flax"),
    "jersey": ("soft and clingy", "drapey and clingy"),
    "bamboo": ("from a fast growing grass", "grass based"),
    "modal": ("silky smooth", "from beech pulp"),
    "denim": ("rugged twill", "indigo twill"),
    "stretch denim": ("twill with give", "twill that moves with you"),
    "selvedge denim": ("raw japanese twill", "old school loom twill"),
    "organic cotton": ("pesticide free natural cloth", "eco friendly natural cloth"),
    "recycled denim": ("upcycled twill", "twill made from old garments"),
    "wool": ("from sheep", "warm sheep yarn"),
    "down": ("warm puffy", "feather filled", "puffy and padded"),
    "fleece": ("fuzzy and warm", "soft polar pile"),
    "nylon": ("slick synthetic", "thin windproof synthetic"),
    "softshell": ("windproof and flexible", "weather resistant bonded"),
    "silk": ("smooth and lustrous", "luxuriously smooth"),
    "satin": ("glossy", "with a glossy sheen"),
    "chiffon": ("sheer and floaty", "see through and floaty"),
    "viscose": ("drapey", "flowing rayon"),
    "polyester": ("synthetic", "quick drying synthetic"),
    "waxed canvas": ("weatherproof oiled cloth", "oilskin"),
    "steel": ("silvery metal", "shiny silver metal"),
    "titanium": ("featherweight metal", "ultra lightweight metal"),
    "silicone": ("soft grippy", "soft and grippy"),
    "ceramic": ("made of fired clay", "glazed clay"),
    "aluminium": ("lightweight metal", "brushed metal"),
    "plastic": ("moulded synthetic", "budget synthetic"),
    "leatherette": ("faux hide", "vegan hide"),
    "fabric": ("cloth wrapped", "soft woven"),
    "velvet": ("plush", "soft plush pile"),
    "boucle": ("nubbly textured", "looped teddy texture"),
    "corduroy": ("ribbed", "wale ribbed"),
    "brass": ("gold toned metal", "antique gold"),
    "rattan": ("woven wicker", "wicker"),
    "oak": ("solid hardwood", "wooden"),
    "glass": ("see through", "transparent"),
    "stoneware": ("rustic pottery", "heavy earthenware"),
    "porcelain": ("fine china", "delicate china"),
    "enamel": ("camping style tin", "retro tin"),
    "rubber": ("bouncy shockproof", "shock absorbing"),
    "carbon fibre": ("featherweight composite", "aerospace composite"),
    "polycarbonate": ("hard clear", "rigid and clear"),
}
"""Material -> the material described through its property or its stuff."""

SIZE_PHRASES: dict[str, tuple[str, ...]] = {
    "xs": ("extra small",), "s": ("small",), "m": ("medium",), "l": ("large",),
    "xl": ("extra large",), "xxl": ("double extra large",),
    "37": ("uk 4",), "38": ("uk 5",), "39": ("uk 6",), "40": ("uk 6 and a half",), "41": ("uk 7",),
    "42": ("uk 8",), "43": ("uk 9",), "44": ("uk 9 and a half",), "45": ("uk 10 and a half",),
    "w28": ("28 inch waist",), "w30": ("30 inch waist",), "w32": ("32 inch waist",),
    "w34": ("34 inch waist",), "w36": ("36 inch waist",),
    "15l": ("15 litre",), "20l": ("20 litre",), "25l": ("25 litre",), "30l": ("30 litre",),
    "36mm": ("36 millimetre",), "40mm": ("40 millimetre",), "42mm": ("42 millimetre",),
    "44mm": ("44 millimetre",),
    "2-seater": ("two person", "for two"), "3-seater": ("three person",),
    "corner": ("l shaped", "sectional"),
    "small": ("little",), "medium": ("mid sized",), "large": ("big",),
    "250ml": ("8 oz",), "350ml": ("12 oz",), "450ml": ("15 oz",),
}  # fmt: skip
"""Size -> the size in other units or words (phone models have none: they keep their name)."""

NEGATORS: dict[str, tuple[str, ...]] = {
    "colour": ("not", "that isn't", "but not", "any colour but"),
    "material": ("not", "without", "no", "that isn't", "but not"),
}
"""Attribute -> words that exclude a value of it, written before the value."""

#: Attributes a described need may carry (a brand or a size would give it away in title words).
DESCRIBED_ATTRIBUTES: tuple[str, ...] = ("material", "colour", "gender")
#: Attributes a paraphrase rewrites, in the order it names them (a brand is kept as typed).
PARAPHRASED_ATTRIBUTES: tuple[str, ...] = ("colour", "material", "gender", "size")

_PARAPHRASE_TABLES: dict[str, Mapping[str, Sequence[str]]] = {
    "colour": COLOUR_PHRASES, "material": MATERIAL_PHRASES, "gender": GENDER_PHRASES,
    "size": SIZE_PHRASES,
}
_DESCRIBED_TABLES: dict[str, Mapping[str, Sequence[str]]] = {
    "material": MATERIAL_PHRASES, "colour": COLOUR_PHRASES,
}


def pick(options: Sequence[str], draw: Draw) -> str:
    """One of ``options``, uniformly."""
    return options[draw(len(options))]


def describable(attribute: str, value: str) -> bool:
    """Whether a described need can carry this attribute value."""
    table = RELATIONS if attribute == "gender" else _DESCRIBED_TABLES.get(attribute, {})
    return value.lower() in table


def paraphrasable(attribute: str, value: str) -> bool:
    """Whether :func:`paraphrase` rewrites this attribute value (else it keeps the catalog's words)."""
    return value.lower() in _PARAPHRASE_TABLES.get(attribute, {})


def describe(category: str, values: Mapping[str, str], draw: Draw) -> str | None:
    """A need described in other words: a need phrase of the category, then the material and
    colour described, then who it is for.

    Args:
        category: Category name (a key of :data:`NEED_PHRASES`).
        values: Attribute (``material``, ``colour``, ``gender``) -> catalog value; values without a
            phrase are left out of the text, so callers target only :func:`describable` ones.
        draw: Randomness.

    Returns:
        The text, or None when the category has no need phrases.
    """
    needs = NEED_PHRASES.get(category)
    if not needs:
        return None
    need = pick(needs, draw)
    gender = values.get("gender", "").lower()
    relations = RELATIONS | CATEGORY_RELATIONS.get(category, {})
    who = pick(relations[gender], draw) if gender in relations else ""
    parts = [need.replace("{who}", who or SOMEONE)]
    for attr in ("material", "colour"):
        value = values.get(attr, "").lower()
        if value in _DESCRIBED_TABLES[attr]:
            parts.append(pick(_DESCRIBED_TABLES[attr][value], draw))
    if who and "{who}" not in need:
        parts.append(f"for {who}")
    return " ".join(parts)


def paraphrase(category_word: str, values: Mapping[str, str], draw: Draw, *, brand: str = "",
               size_words: str = "") -> str | None:
    """The category word with its attributes paraphrased: ``kestrel trainers coal coloured made of
    hide for a man uk 8``.

    Args:
        category_word: The category's noun or a synonym of it, as the query names the product.
        values: Attribute (``colour``, ``material``, ``gender``, ``size``) -> catalog value.
        draw: Randomness.
        brand: A brand to name (kept as typed: brands have no other words).
        size_words: How the size is typed when it has no paraphrase (``iphone 15``).

    Returns:
        The text, or None when no attribute has a paraphrase (it would not be one).
    """
    phrases = [pick(_PARAPHRASE_TABLES[a][values[a].lower()], draw)
               for a in PARAPHRASED_ATTRIBUTES if a in values and paraphrasable(a, values[a])]
    if not phrases:
        return None
    keep_size = bool(size_words) and "size" in values and not paraphrasable("size", values["size"])
    return " ".join(([brand] if brand else []) + [category_word] + phrases
                    + ([size_words] if keep_size else []))


def is_plural(noun: str) -> bool:
    """Whether a product noun is plural (``sneakers``, ``jeans``; not ``dress``)."""
    return noun.endswith("s") and not noun.endswith("ss")


def negate(text: str, attribute: str, value: str, draw: Draw, *, plural: bool = False) -> str:
    """``text`` followed by a negation of ``attribute`` = ``value``: ``black jacket without down``,
    ``sneakers that aren't leather`` (``plural``: the product is named in the plural, see
    :func:`is_plural`).

    Raises:
        KeyError: the attribute cannot be negated (only colours and materials can).
    """
    negator = pick(NEGATORS[attribute], draw)
    if plural:
        negator = negator.replace("isn't", "aren't")
    return f"{text} {negator} {value.lower()}"


# Phonetic substitutions shoppers make when they spell by ear (each applied once, anywhere).
_PHONETIC: tuple[tuple[str, str], ...] = (
    ("ph", "f"), ("f", "ph"), ("ee", "ea"), ("ea", "ee"), ("ck", "k"), ("c", "k"), ("k", "c"),
    ("s", "z"), ("ie", "ei"), ("ei", "ie"), ("oo", "u"), ("ou", "ow"), ("au", "aw"), ("y", "i"),
    ("i", "y"), ("er", "ur"), ("or", "er"), ("tion", "shun"), ("qu", "kw"), ("x", "ks"),
    ("wh", "w"), ("ai", "ay"), ("a", "e"), ("e", "a"), ("e", "i"), ("i", "e"), ("o", "u"),
    ("u", "o"),
)  # fmt: skip


# Kinds of edit, by how often a shopper spelling by ear makes them: sounds first.
_PHONETIC_EDIT, _DOUBLE, _DROP, _SWAP = 0, 1, 2, 3
_EDIT_KINDS = (_PHONETIC_EDIT, _PHONETIC_EDIT, _PHONETIC_EDIT, _DOUBLE, _DOUBLE, _DROP, _SWAP)
_VOWELS = frozenset("aeiou")
_NEVER_DOUBLED = _VOWELS | frozenset("hjqwxy")  # letters English never (or rarely) doubles


def _edit_once(word: str, kind: int, draw: Draw) -> str:
    """One misspelling edit of a kind (``word`` unchanged when the kind does not apply):

    * phonetic: a substitution of :data:`_PHONETIC` (``ph`` -> ``f``, ``ee`` -> ``ea``, ``ck`` ->
      ``k``; the only edit that may touch the first letter, ``phone`` -> ``fone``);
    * double: a consonant after the first letter doubled (``jacket`` -> ``jackett``);
    * drop: a letter of a doubled pair (``dresses`` -> ``dreses``), else an interior vowel of a
      word of 6+ letters;
    * swap: two interior neighbours of a word of 6+ letters transposed (``leather`` ->
      ``laether``).
    """
    if kind == _PHONETIC_EDIT:
        options = [(i, old, new) for old, new in _PHONETIC
                   for i in range(len(word)) if word.startswith(old, i)]  # fmt: skip
        if not options:
            return word
        i, old, new = options[draw(len(options))]
        return word[:i] + new + word[i + len(old):]
    interior = range(1, len(word) - 1)
    if kind == _DOUBLE:
        spots = [i for i in range(1, len(word)) if word[i].isalpha() and word[i] not in _NEVER_DOUBLED
                 and word[i - 1] != word[i] and word[i:i + 2] != word[i] * 2]  # fmt: skip
        if not spots:
            return word
        i = spots[draw(len(spots))]
        return word[:i] + word[i] + word[i:]
    if kind == _DROP:
        spots = [i for i in range(1, len(word)) if word[i] == word[i - 1]]
        if not spots and len(word) >= 6:
            spots = [i for i in interior if word[i] in _VOWELS]
        if not spots:
            return word
        i = spots[draw(len(spots))]
        return word[:i] + word[i + 1:]
    if len(word) < 6:
        return word
    i = 1 + draw(len(word) - 3)  # swap letters i and i + 1, both interior
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def misspell_word(word: str, edits: int, draw: Draw) -> str:
    """``word`` after ``edits`` misspelling edits (each one changes it; phonetic ones as often as
    they apply, each other kind once, so the word stays recognisable), at least
    ``min(edits, 2)`` edits (:func:`edit_distance`) away from it."""
    target = min(edits, 2)
    for _ in range(8):
        out, used = word, set()
        for _ in range(edits):
            for _ in range(16):
                kind = _EDIT_KINDS[draw(len(_EDIT_KINDS))]
                if kind in used:
                    continue
                changed = _edit_once(out, kind, draw)
                if changed != out:
                    out = changed
                    if kind != _PHONETIC_EDIT:
                        used.add(kind)
                    break
        if edit_distance(word, out) >= target:
            return out
    # Edits that kept cancelling out or did not apply (rare, on short words): a letter doubled
    # twice over.
    return word + word[-1] * target


def misspell(text: str, draw: Draw) -> str:
    """Misspell every editable word (alphabetic, 4+ letters; else the longest word) with 2 or 3
    edits, each word at least 2 edits (:func:`edit_distance`) from what it was.

    The data generator's ``typo`` kind makes one edit in a word or two; this is a shopper who
    spells by ear (``sneekurz``, ``bakpak``), beyond what a one-edit spelling corrector repairs.
    """
    words = text.split(" ")
    editable = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not editable:
        longest = max(len(w) for w in words)
        editable = [next(i for i, w in enumerate(words) if len(w) == longest)]
    for i in editable:
        words[i] = misspell_word(words[i], 2 + draw(2), draw)
    return " ".join(words)


def edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein distance (optimal string alignment: insertions, deletions,
    substitutions and adjacent transpositions, each 1)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[len(b)]


def phrase_words() -> set[str]:
    """Every word (split on spaces) that a phrase of these tables or a negation may write."""
    words = {SOMEONE, "for"}
    tables: list[Mapping[str, Sequence[str]]] = [
        NEED_PHRASES, RELATIONS, *CATEGORY_RELATIONS.values(), GENDER_PHRASES, COLOUR_PHRASES,
        MATERIAL_PHRASES, SIZE_PHRASES, NEGATORS,
    ]
    words.add("aren't")
    for table in tables:
        for phrases in table.values():
            for phrase in phrases:
                words.update(w for w in phrase.split() if w != "{who}")
    return words
