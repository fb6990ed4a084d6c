"""The long tail of a load test's query stream: queries composed fresh from a bundle's catalog.

A real shop's search log is a short head of frequent queries and a long tail of queries seen once
(specific attribute combinations, unusual wordings, typos). Drawing every request from the bundle's
1,000 logged queries would make any cache look perfect, so :class:`QueryComposer` writes new ones
the way the data generator wrote the logged ones, but only from what the bundle ships (the load
test never imports the build):

* **words**: the attribute values of a catalog item drawn by popularity (brand, gender, colour,
  material, size) and its category's noun, the word every title of the category contains
  (``jacket``, ``phone case``); 2 to 4 attributes a query, the lead words in a shuffled order now
  and then, as shoppers type them;
* **synonyms**: the replacements shoppers used in the logged ``synonym`` queries (each logged one
  keeps the words it replaced in ``base_text``, so ``navy leather jacket`` -> ``dark blue leather
  parka`` teaches ``navy -> dark blue`` and ``jacket -> parka``), plus the transformer's mined
  rewrite table (``query_rewrites.json``) read backwards;
* **typos**: one or two character edits (drop, swap, neighbouring key, double), never the first
  letter, as the generator makes them;
* **the harder classes**, from the phrase tables and edit functions the generator uses
  (:mod:`shopserve.phrasing`): ``described`` needs ("something to carry my laptop to school for my
  son"), ``paraphrase`` ("jacket warm puffy for a man"), ``negation`` ("black jacket without
  down", the excluded value one the category has and the item has not) and ``misspelling`` (two or
  three edits a word, "bakpak");
* **kinds**: all of :data:`KINDS` in the shares the logged queries have (a log without the harder
  classes composes none). A kind that cannot be written for the drawn item (a category without
  need phrases, nothing to paraphrase or to exclude) is written ``exact`` instead.

A composed text that is a logged query, or one the stream already sent, is drawn again, so within
one stream every composed query is new. The vocabulary is large (thousands of items times attribute
subsets, synonyms and typos), so two streams rarely compose the same text either.

No locust here; numpy only to read the catalog.
"""

from __future__ import annotations

import difflib
import json
import random
import re
from bisect import bisect_right
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

import numpy as np

from shopserve.catalog_files import CatalogFiles
from shopserve.phrasing import (
    DESCRIBED_ATTRIBUTES,
    describable,
    describe,
    is_plural,
    misspell,
    negate,
    paraphrase,
    phrase_words,
)
from shopserve.text import keyboard_neighbours

#: The mined synonym table of a catalog component (written by the build, read by the transformer).
QUERY_REWRITES_FILE = "query_rewrites.json"
#: Query kinds the composer writes, as the generator names them (``training.data.generator``'s
#: ``QUERY_KINDS``, which the load test may not import).
EXACT, SYNONYM, TYPO = "exact", "synonym", "typo"
DESCRIBED, PARAPHRASE, NEGATION, MISSPELLING = "described", "paraphrase", "negation", "misspelling"
KINDS: tuple[str, ...] = (EXACT, SYNONYM, TYPO, DESCRIBED, PARAPHRASE, NEGATION, MISSPELLING)
#: Attributes a negation may exclude.
EXCLUDABLE: tuple[str, ...] = ("colour", "material")
#: Attributes a composed query may name besides the category noun, in the generator's word order.
LEAD_ATTRIBUTES: tuple[str, ...] = ("brand", "gender", "colour", "material")
#: Redraws before a stream gives up on finding a text it has not sent (never reached in practice).
MAX_REDRAWS = 50

_WORD = re.compile(r"[a-z0-9][a-z0-9'\-]*")
_NEIGHBOURS = keyboard_neighbours()


def typo(word: str, rng: random.Random) -> str:
    """One character edit of ``word`` that keeps its first letter: drop, swap, neighbour key, double.

    Words shorter than three characters get their last letter doubled.
    """
    if len(word) < 3:
        return word + word[-1]
    for _ in range(8):
        i = rng.randrange(1, len(word) - 1)
        edit = rng.randrange(4)
        if edit == 0:
            out = word[:i] + word[i + 1:]
        elif edit == 1:
            out = word[:i] + word[i + 1] + word[i] + word[i + 2:]
        elif edit == 2 and word[i] in _NEIGHBOURS:
            near = _NEIGHBOURS[word[i]]
            out = word[:i] + near[rng.randrange(len(near))] + word[i + 1:]
        else:
            out = word[:i] + word[i] + word[i:]
        if out != word:
            return out
    return word[:-1]


def make_typos(text: str, rng: random.Random) -> str:
    """``text`` with one typo (two when it has three or more editable words) in words of 4+ letters."""
    words = text.split(" ")
    editable = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not editable:
        editable = [i for i, w in enumerate(words) if len(w) >= 3] or [len(words) - 1]
    for i in rng.sample(editable, 1 if len(editable) < 3 else 2):
        words[i] = typo(words[i], rng)
    return " ".join(words)


def size_words(size: str) -> str:
    """How a shopper types a size: ``size l``, ``size 42``; ``25l`` or ``iphone 15`` stand alone."""
    size = size.lower()
    return f"size {size}" if len(size) <= 3 and (size.isalpha() or size.isdigit()) else size


def mined_synonyms(base_texts: list[str], texts: list[str]) -> dict[str, set[str]]:
    """Word -> phrases shoppers typed instead, from (catalog wording, typed wording) query pairs.

    Each replaced block is keyed by the catalog words it replaced: ``navy`` -> ``dark blue``,
    ``phone case`` -> ``mobile cover``. Two adjacent attributes both replaced make one block
    (``kids' navy`` -> ``junior midnight blue``), a key no composed query looks up.
    """
    table: dict[str, set[str]] = defaultdict(set)
    for base, text in zip(base_texts, texts, strict=True):
        a, b = base.split(), text.split()
        for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
            if op == "replace":
                table[" ".join(a[i1:i2])].add(" ".join(b[j1:j2]))
    return dict(table)


@dataclass(frozen=True)
class ComposedQuery:
    """One composed query.

    Attributes:
        text: What the shopper typed.
        base_text: The same attributes in the catalog's words (before synonyms and typos); for a
            negation, the wanted ones' words then ``not`` and the excluded value.
        kind: One of :data:`KINDS`.
        category: The category of the item it was composed from (for filters).
    """

    text: str
    base_text: str
    kind: str
    category: str


class QueryComposer:
    """Composes new queries from a catalog's vocabulary (see the module docstring).

    Args:
        items: Item columns (``category``, ``brand``, ``colour``, ``material``, ``size``,
            ``gender``, ``title``, ``popularity``).
        synonyms: Catalog word (lower case) -> phrases shoppers type instead.
        kind_shares: Share of each kind of :data:`KINDS` (a kind left out gets none).
        known: Texts never to compose (the logged queries, which the head already sends).
    """

    def __init__(self, items: dict[str, np.ndarray], synonyms: dict[str, set[str]],
                 kind_shares: dict[str, float], known: set[str] | None = None) -> None:
        if not len(items["category"]):
            raise ValueError("a catalog without items has no vocabulary to compose from")
        self.known = set(known or ())
        self.synonyms = {word: sorted(phrases) for word, phrases in synonyms.items() if phrases}
        shares = [max(float(kind_shares.get(k, 0.0)), 0.0) for k in KINDS]
        if sum(shares) <= 0:
            shares = [1.0] + [0.0] * (len(KINDS) - 1)  # exact only
        self.kind_shares = dict(zip(KINDS, shares, strict=True))
        self._kind_cum = list(accumulate(shares))
        # Seed items by the square root of popularity: the tail reaches further down the catalog
        # than the head does, which is what makes its queries rare.
        weights = np.sqrt(np.clip(np.asarray(items["popularity"], dtype=np.float64), 0.0, None))
        if not weights.sum() > 0:
            weights = np.ones_like(weights)
        self._item_cum = list(accumulate(weights.tolist()))
        self.category = [str(c) for c in items["category"].tolist()]
        self.brand = [str(v).lower() for v in items["brand"].tolist()]
        self.colour = [str(v).lower() for v in items["colour"].tolist()]
        self.material = [str(v).lower() for v in items["material"].tolist()]
        self.raw_size = [str(v).lower() for v in items["size"].tolist()]
        self.size = [size_words(v) for v in self.raw_size]
        self.gender = [str(v).lower() for v in items["gender"].tolist()]
        titles = [str(t).lower() for t in items["title"].tolist()]
        self.nouns, self.gendered, self.sized = self._category_words(titles)
        self.gender_words = self._gender_words(titles)
        # What a negation may exclude: the colours and materials each category has.
        self.category_values: dict[str, dict[str, list[str]]] = {}
        for attr in EXCLUDABLE:
            seen: dict[str, set[str]] = defaultdict(set)
            for category, value in zip(self.category, getattr(self, attr), strict=True):
                if value:
                    seen[category].add(value)
            self.category_values[attr] = {c: sorted(v) for c, v in seen.items()}

    def _category_words(self, titles: list[str]) -> tuple[dict[str, str], set[str], set[str]]:
        """Each category's noun (the words in all its titles that are no attribute's), and which
        categories vary by gender and by size (only those are worth naming in a query)."""
        rows: dict[str, list[int]] = defaultdict(list)
        for row, category in enumerate(self.category):
            rows[category].append(row)
        nouns, gendered, sized = {}, set(), set()
        for category, members in rows.items():
            common = set.intersection(*(set(_WORD.findall(titles[r])) for r in members))
            attribute_words = {w for r in members
                               for value in (self.brand[r], self.colour[r], self.material[r],
                                             self.size[r], self.gender[r])
                               for w in _WORD.findall(value)}  # fmt: skip
            first = _WORD.findall(titles[members[0]])
            noun = [w for w in dict.fromkeys(first) if w in common - attribute_words]
            nouns[category] = " ".join(noun) or category.replace("-", " ")
            if len({self.gender[r] for r in members}) > 1:
                gendered.add(category)
            if len({self.size[r] for r in members}) > 1:
                sized.add(category)
        return nouns, gendered, sized

    def _gender_words(self, titles: list[str]) -> dict[str, str]:
        """Gender value -> the word titles use (``men`` -> ``men's``, ``kids`` -> ``kids'``)."""
        seen: dict[str, Counter[str]] = defaultdict(Counter)
        for title, gender in zip(titles, self.gender, strict=True):
            for word in _WORD.findall(title):
                if word in (gender, f"{gender}'s", f"{gender}'"):
                    seen[gender][word] += 1
        return {g: (seen[g].most_common(1)[0][0] if seen[g] else g) for g in set(self.gender)}

    @classmethod
    def from_files(cls, files: CatalogFiles) -> QueryComposer:
        """The composer of a bundle's ``catalog`` component: its items, logged queries and the
        mined rewrite table (when the component has one)."""
        q = files.queries
        kinds = [str(k) for k in q["kind"].tolist()] if "kind" in q else []
        texts = [str(t) for t in q["text"].tolist()]
        synonyms: dict[str, set[str]] = {}
        if "base_text" in q and kinds:
            pairs = [(str(b), t) for b, t, k in zip(q["base_text"].tolist(), texts, kinds, strict=True)
                     if k == SYNONYM]  # fmt: skip
            synonyms = mined_synonyms([b for b, _ in pairs], [t for _, t in pairs])
        counts = Counter(kinds)
        shares = {k: counts[k] / max(len(kinds), 1) for k in KINDS} if kinds else {EXACT: 1.0}
        composer = cls(files.items, synonyms, shares, known=set(texts))
        rewrites = Path(files.folder) / QUERY_REWRITES_FILE
        if rewrites.is_file():
            composer.add_rewrites(json.loads(rewrites.read_text()).get("synonyms") or {})
        return composer

    def add_rewrites(self, rewrites: dict[str, str]) -> None:
        """Read the transformer's rewrite table (typed word -> catalog word) backwards.

        A catalog value a query names whole (a colour, a material, a gender word, a noun) that the
        logged queries taught no one-word synonym for gains the typed words the table maps onto
        it. Parts of longer values (``phone`` of ``phone case``, ``one`` of ``one size``) are left
        alone: the table's tokens for them are fragments of phrases.
        """
        whole = (set(self.colour) | set(self.material) | set(self.gender_words.values())
                 | set(self.nouns.values()))  # fmt: skip
        words = self.lexicon()
        learned = {target for target, phrases in self.synonyms.items()
                   if any(len(p.split()) == 1 for p in phrases)}  # fmt: skip
        for typed, target in rewrites.items():
            typed, target = str(typed).lower(), str(target).lower()
            if target in whole and target not in learned and typed not in words:
                phrases = self.synonyms.setdefault(target, [])
                if typed not in phrases:
                    phrases.append(typed)
                    phrases.sort()

    def lexicon(self) -> set[str]:
        """Every catalog word a composed query may name (before synonyms and typos)."""
        words: set[str] = set()
        for column in (self.brand, self.colour, self.material, self.size,
                       list(self.gender_words.values()), list(self.nouns.values())):
            for value in set(column):
                words.update(value.split())
        return words

    def vocabulary(self) -> set[str]:
        """Every word a composed query may contain before typos and misspellings: :meth:`lexicon`,
        the words of every synonym phrase and those of the shared phrase tables
        (:func:`shopserve.phrasing.phrase_words`)."""
        words = self.lexicon() | phrase_words()
        for phrases in self.synonyms.values():
            for phrase in phrases:
                words.update(phrase.split())
        return words

    def compose(self, rng: random.Random, seen: set[str] | None = None) -> ComposedQuery:
        """A query not in the log and, when ``seen`` is given, not in ``seen`` (then added to it)."""
        query = self._draft(rng)
        for _ in range(MAX_REDRAWS):
            if query.text not in self.known and (seen is None or query.text not in seen):
                break
            query = self._draft(rng)
        if seen is not None:
            seen.add(query.text)
        return query

    def _draft(self, rng: random.Random) -> ComposedQuery:
        row = bisect_right(self._item_cum, rng.random() * self._item_cum[-1])
        row = min(row, len(self.category) - 1)
        category = self.category[row]
        words = {"brand": self.brand[row], "colour": self.colour[row],
                 "material": self.material[row],
                 "gender": self.gender_words.get(self.gender[row], self.gender[row])}  # fmt: skip
        available = [a for a in LEAD_ATTRIBUTES if words[a]
                     and (a != "gender" or category in self.gendered)]  # fmt: skip
        # 2 to 4 attributes: the tail is specific queries; a size takes one of the slots.
        with_size = category in self.sized and rng.random() < 0.35
        count = rng.choice((2, 2, 3, 3, 4)) - with_size
        lead = rng.sample(available, max(1, min(count, len(available)))) if available else []
        if rng.random() < 0.7:  # most shoppers type in the catalog's order; some do not
            lead.sort(key=LEAD_ATTRIBUTES.index)
        noun = self.nouns[category]
        tail = [self.size[row]] if with_size else []
        base = " ".join([words[a] for a in lead] + [noun] + tail)
        kind = KINDS[min(bisect_right(self._kind_cum, rng.random() * self._kind_cum[-1]), len(KINDS) - 1)]
        composed: tuple[str, str] | None = None
        if kind == SYNONYM:
            swapped = [self._synonym(words[a], rng) for a in lead] + [self._synonym(noun, rng)]
            composed = " ".join(swapped + tail), base
        elif kind == TYPO:
            composed = make_typos(base, rng), base
        elif kind == DESCRIBED:
            composed = self._described(row, words, rng)
        elif kind == PARAPHRASE:
            values = {a: self._value(a, row) for a in lead if a != "brand"}
            if with_size:
                values["size"] = self.raw_size[row]
            word = noun if rng.random() < 0.5 else self._synonym(noun, rng)
            text = paraphrase(word, values, rng.randrange, size_words=" ".join(tail),
                              brand=words["brand"] if "brand" in lead else "")
            composed = (text, base) if text else None
        elif kind == NEGATION:
            composed = self._negation(row, lead, words, tail, rng)
        elif kind == MISSPELLING:
            composed = misspell(base, rng.randrange), base
        if composed is None:  # the kind does not apply to this item
            return ComposedQuery(base, base, EXACT, category)
        return ComposedQuery(composed[0], composed[1], kind, category)

    def _value(self, attribute: str, row: int) -> str:
        """An item's attribute value as the phrase tables key it (gender by name: ``men``)."""
        return str(getattr(self, attribute)[row])

    def _described(self, row: int, words: dict[str, str],
                   rng: random.Random) -> tuple[str, str] | None:
        """A need of the item's category in other words with one or two of its material, colour
        and gender described; its base names the same attributes in the catalog's words."""
        category = self.category[row]
        options = [a for a in DESCRIBED_ATTRIBUTES if describable(a, self._value(a, row))
                   and (a != "gender" or category in self.gendered)]  # fmt: skip
        chosen = rng.sample(options, min(rng.choice((1, 2)), len(options)))
        text = describe(category, {a: self._value(a, row) for a in chosen}, rng.randrange)
        if text is None:
            return None
        lead = [a for a in LEAD_ATTRIBUTES if a in chosen]
        return text, " ".join([words[a] for a in lead] + [self.nouns[category]])

    def _negation(self, row: int, lead: list[str], words: dict[str, str], tail: list[str],
                  rng: random.Random) -> tuple[str, str] | None:
        """The item's wanted words then a colour or material of its category that it has not."""
        category = self.category[row]
        attr = rng.choice(EXCLUDABLE)
        values = [v for v in self.category_values[attr].get(category, [])
                  if v != self._value(attr, row)]  # fmt: skip
        if not values:
            return None
        excluded = rng.choice(values)
        noun = self.nouns[category]
        wanted = " ".join([words[a] for a in lead if a != attr] + [noun] + tail)
        text = negate(wanted, attr, excluded, rng.randrange, plural=is_plural(noun))
        return text, f"{wanted} not {excluded}"

    def _synonym(self, word: str, rng: random.Random) -> str:
        options = self.synonyms.get(word)
        return options[rng.randrange(len(options))] if options else word
