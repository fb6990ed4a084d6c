"""Query rewriting for the lexical stage: spelling correction and synonyms mined from the query log.

BM25 matches tokens, so a shopper's ``crimson parka`` finds nothing in a catalog that says
``red jacket``, and ``jakcet`` finds nothing at all. Before BM25 scores a query, each token that is
not in the catalog's vocabulary is rewritten:

1. a synonym table maps it to a catalog term (``parka`` -> ``jackets``);
2. else spelling correction (SymSpell, Damerau-Levenshtein, via ``symspellpy``) maps it to the
   nearest known token, catalog term or synonym, within 1 edit (2 for tokens of 7+ letters),
   preferring the more frequent; a corrected synonym is then mapped too (``crimsn`` ->
   ``crimson`` -> ``red``);
3. else it is left as it is (BM25 ignores it).

Tokens already in the vocabulary are never touched, so an exact query scores exactly as before.

A negation (``sneakers not leather``, ``mug without handle``, ``jeans that aren't blue``) is split
off first (:func:`split_negation`): BM25 drops its words as stop words and would otherwise search
for the very thing refused. The words before the cue are the query; the catalog rows whose title
or attributes hold every word after it are left out of the request's candidates
(:meth:`transformers_pre.catalog.Catalog.rows_with_all`).

The synonym table is learnt offline (:func:`training.synonyms.mine_synonyms`) from training queries and their
relevance judgements, as a shop mines its click log: a query token the catalog never uses is mapped
to the catalog term that its queries' exact matches have in common far more often than exact
matches of queries in general do. It is saved in the bundle's ``catalog`` component
(:data:`REWRITES_FILE`, checksummed by its manifest); the spelling dictionary is built at load from
the catalog itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import bm25s
from symspellpy import SymSpell, Verbosity

#: The synonym table's file in the ``catalog`` component.
REWRITES_FILE = "query_rewrites.json"
#: Shortest token spelling correction touches: short tokens have too many neighbours one edit away.
MIN_CORRECTED_LENGTH = 4
#: Tokens this long may be two edits from the intended word, shorter ones one edit.
TWO_EDITS_FROM = 7


def query_tokens(text: str) -> list[str]:
    """A (normalised) text's BM25 tokens: the catalog index's tokenisation, stop words out."""
    return bm25s.tokenize([text], stopwords="en", show_progress=False, return_ids=False)[0]


#: Words before a refused value, longest first where one contains another (``but not`` before
#: ``not``). English negation of an attribute or a part, not any one source's phrasing.
NEGATION_CUES: tuple[str, ...] = (
    "any colour but", "any color but", "anything but", "but not", "that isn't", "that aren't",
    "that is not", "that are not", "that doesn't have", "that don't have", "isn't", "aren't",
    "without", "excluding", "except", "other than", "not", "no", "non",
)  # fmt: skip
_NEGATION = re.compile(
    r"(?:^|\s)(" + "|".join(re.escape(c) for c in NEGATION_CUES) + r")(?:\s+|-)(\S.*)$")


@dataclass(frozen=True)
class Negation:
    """A query split at its negation cue.

    Attributes:
        positive: What is wanted: the words before the cue (the whole query without a cue).
        refused: The words after the cue ('' without a cue).
    """

    positive: str
    refused: str = ""


def split_negation(text: str) -> Negation:
    """Split a normalised query at its first negation cue (:data:`NEGATION_CUES`):
    ``kids' sneakers not teal`` -> (``kids' sneakers``, ``teal``). A query that is nothing but a
    negation (``no plastic``) or has nothing after its cue stays whole: there is nothing to want
    or nothing to refuse."""
    match = _NEGATION.search(text.replace("\u2019", "'"))  # a typographic apostrophe too
    if match is None:
        return Negation(text)
    positive = text[: match.start()].strip()
    refused = match.group(2).strip()
    if not query_tokens(positive) or not query_tokens(refused):
        return Negation(text)
    return Negation(positive, refused)


def load_synonyms(folder: Path) -> dict[str, str] | None:
    """The synonym table of a component folder, or None when the bundle predates it."""
    path = Path(folder) / REWRITES_FILE
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return {str(k): str(v) for k, v in raw["synonyms"].items()}


def spelling_dictionary(counts: Mapping[str, int]) -> SymSpell:
    """A SymSpell dictionary of ``term -> frequency`` (2 edits, prefix 7)."""
    spell = SymSpell(max_dictionary_edit_distance=2, prefix_length=7)
    for term, count in counts.items():
        spell.create_dictionary_entry(term, max(int(count), 1))
    return spell


def correct_spelling(spell: SymSpell, token: str) -> str | None:
    """The most frequent known token within the allowed edits of ``token``, or None."""
    if len(token) < MIN_CORRECTED_LENGTH or not token.isalpha():
        return None
    distance = 2 if len(token) >= TWO_EDITS_FROM else 1
    found = spell.lookup(token, Verbosity.TOP, max_edit_distance=distance, transfer_casing=False)
    return found[0].term if found and found[0].term != token else None


@dataclass
class QueryRewriter:
    """Rewrites a query's tokens for BM25 (see the module docstring).

    Args:
        document_frequency: Catalog term -> number of items using it (the vocabulary, and the
            preference between equally close corrections).
        synonyms: Mined ``token -> catalog term`` table; empty for spelling correction alone.
    """

    document_frequency: Mapping[str, int]
    synonyms: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        counts = dict(self.document_frequency)
        for token, term in self.synonyms.items():
            counts.setdefault(token, counts.get(term, 1))
        self._spell = spelling_dictionary(counts)
        self._cache: dict[str, str | None] = {}

    def rewrite_token(self, token: str) -> str | None:
        """The catalog term a token stands for: itself when known, None when nothing fits."""
        if token in self.document_frequency:
            return token
        if token in self._cache:
            return self._cache[token]
        term = self.synonyms.get(token)
        if term is None:
            corrected = correct_spelling(self._spell, token)
            term = self.synonyms.get(corrected, corrected) if corrected else None
        if len(self._cache) < 100_000:  # bounded: tokens are user input
            self._cache[token] = term
        return term

    def rewrite(self, tokens: Sequence[str]) -> list[str]:
        """Every token's catalog term; tokens nothing fits are kept (BM25 scores them 0)."""
        return [self.rewrite_token(t) or t for t in tokens]
