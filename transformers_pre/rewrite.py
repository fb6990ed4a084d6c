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

The synonym table is learnt offline (:func:`mine_synonyms`) from training queries and their
relevance judgements, as a shop mines its click log: a query token the catalog never uses is mapped
to the catalog term that its queries' exact matches have in common far more often than exact
matches of queries in general do. It is saved in the bundle's ``catalog`` component
(:data:`REWRITES_FILE`, checksummed by its manifest); the spelling dictionary is built at load from
the catalog itself.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import bm25s
import numpy as np
from symspellpy import SymSpell, Verbosity

from shopserve.data.generator import Dataset
from shopserve.text import normalise_query

#: The synonym table's file in the ``catalog`` component.
REWRITES_FILE = "query_rewrites.json"
#: Shortest token spelling correction touches: short tokens have too many neighbours one edit away.
MIN_CORRECTED_LENGTH = 4
#: Tokens this long may be two edits from the intended word, shorter ones one edit.
TWO_EDITS_FROM = 7


def query_tokens(text: str) -> list[str]:
    """A (normalised) text's BM25 tokens: the catalog index's tokenisation, stop words out."""
    return bm25s.tokenize([text], stopwords="en", show_progress=False, return_ids=False)[0]


@dataclass(frozen=True)
class MiningConfig:
    """Thresholds of :func:`mine_synonyms`.

    Attributes:
        min_queries: A token must occur in at least this many training queries.
        min_lift: The term's share among the token's queries' exact matches minus its share among
            all training queries' exact matches; 0.5 keeps only terms shared by most of them.
        max_judged: Exact matches per query considered (the first, by item order).
    """

    min_queries: int = 2
    min_lift: float = 0.5
    max_judged: int = 50


def mine_synonyms(
    queries: Iterable[tuple[Sequence[str], Sequence[frozenset[str]]]],
    vocabulary: Iterable[str],
    config: MiningConfig | None = None,
) -> dict[str, str]:
    """Learn ``query token -> catalog term`` from judged training queries.

    Args:
        queries: Per training query, its tokens and the token sets of its exact matches (the items
            judged fully relevant). Queries without exact matches teach nothing and may be left out.
        vocabulary: Tokens the catalog uses (title and attributes).
        config: Thresholds.

    Returns:
        One catalog term per out-of-vocabulary token that passed the thresholds.
    """
    config = config or MiningConfig()
    vocab = frozenset(vocabulary)
    spell = _dictionary({term: 1 for term in vocab})
    together: Counter[tuple[str, str]] = Counter()
    seen: Counter[str] = Counter()
    shared_overall: Counter[str] = Counter()
    judged = 0
    for tokens, matches in queries:
        if not matches:
            continue
        shared = frozenset.intersection(*matches[: config.max_judged])
        judged += 1
        shared_overall.update(shared)
        for token in set(tokens):
            # Typos of catalog terms are spelling correction's job, not the table's.
            if token in vocab or _correct(spell, token) is not None:
                continue
            seen[token] += 1
            together.update((token, term) for term in shared)
    synonyms: dict[str, str] = {}
    for token, count in seen.items():
        if count < config.min_queries:
            continue
        lift, term = max(
            (together[token, t] / count - shared_overall[t] / judged, t)
            for t in shared_overall if together[token, t]
        ) if any(together[token, t] for t in shared_overall) else (0.0, "")
        if lift >= config.min_lift:
            synonyms[token] = term
    return dict(sorted(synonyms.items()))


def synonyms_from_dataset(
    dataset: Dataset, train_query_ids: np.ndarray, config: MiningConfig | None = None
) -> dict[str, str]:
    """Mine the synonym table from a generated world's training queries only.

    Args:
        dataset: The world (catalog and judged query log).
        train_query_ids: Queries to learn from: never the held-out ones the bundle is evaluated on.
        config: Thresholds.
    """
    config = config or MiningConfig()
    documents = [frozenset(query_tokens(t)) for t in dataset.item_text()]
    items = dataset.items.item_id
    queries = dataset.queries
    rows = queries.query_id.searchsorted(np.asarray(train_query_ids))
    judged = []
    for query_id, text in zip(queries.query_id[rows], queries.text[rows], strict=True):
        exact = np.flatnonzero(dataset.grade(np.full(items.shape, query_id), items) >= 3)
        judged.append((query_tokens(normalise_query(str(text))),
                       [documents[r] for r in exact[: config.max_judged]]))
    vocabulary = {token for document in documents for token in document}
    return mine_synonyms(judged, vocabulary, config)


def mine_into(folder: Path, dataset: Dataset, train_query_ids: np.ndarray) -> dict[str, int]:
    """Mine the table from the training queries and save it in a component folder.

    Call it before the folder's manifest is written; returns the manifest parameters to record.
    """
    synonyms = synonyms_from_dataset(dataset, train_query_ids)
    save_synonyms(folder, synonyms)
    return {"synonyms": len(synonyms), "synonyms_mined_from_queries": len(train_query_ids)}


def save_synonyms(folder: Path, synonyms: Mapping[str, str]) -> Path:
    """Write the synonym table into a component folder (before its manifest is written)."""
    path = Path(folder) / REWRITES_FILE
    path.write_text(json.dumps({"synonyms": dict(synonyms)}, indent=1, sort_keys=True) + "\n")
    return path


def load_synonyms(folder: Path) -> dict[str, str] | None:
    """The synonym table of a component folder, or None when the bundle predates it."""
    path = Path(folder) / REWRITES_FILE
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return {str(k): str(v) for k, v in raw["synonyms"].items()}


def _dictionary(counts: Mapping[str, int]) -> SymSpell:
    spell = SymSpell(max_dictionary_edit_distance=2, prefix_length=7)
    for term, count in counts.items():
        spell.create_dictionary_entry(term, max(int(count), 1))
    return spell


def _correct(spell: SymSpell, token: str) -> str | None:
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
        self._spell = _dictionary(counts)
        self._cache: dict[str, str | None] = {}

    def rewrite_token(self, token: str) -> str | None:
        """The catalog term a token stands for: itself when known, None when nothing fits."""
        if token in self.document_frequency:
            return token
        if token in self._cache:
            return self._cache[token]
        term = self.synonyms.get(token)
        if term is None:
            corrected = _correct(self._spell, token)
            term = self.synonyms.get(corrected, corrected) if corrected else None
        if len(self._cache) < 100_000:  # bounded: tokens are user input
            self._cache[token] = term
        return term

    def rewrite(self, tokens: Sequence[str]) -> list[str]:
        """Every token's catalog term; tokens nothing fits are kept (BM25 scores them 0)."""
        return [self.rewrite_token(t) or t for t in tokens]
