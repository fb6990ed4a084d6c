"""Synonym mining for query rewriting: learn ``query token -> catalog term`` from judged queries.

The build side of :mod:`transformers_pre.rewrite`: a shop mines its click log, we mine the
generator's training queries and their relevance judgements (never the held-out ones). The table
is saved into the bundle's ``catalog`` component (``query_rewrites.json``, checksummed by its
manifest), which the search transformer reads at load.

Only the lexical kinds' training queries teach it (``exact``, ``synonym``, ``typo``:
:data:`training.data.generator.LEXICAL_KINDS`). The understanding kinds (described needs,
paraphrases, negations, misspellings) are left out: their phrase words would be mined back as
one-token rewrites ("puffy" -> down, "husband" -> men's), turning the classes a ranker must
understand into ones a lookup table solves, and their evaluation into a measure of the table.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shopserve.text import normalise_query
from training.data.generator import LEXICAL_KINDS, Dataset
from transformers_pre.rewrite import REWRITES_FILE, correct_spelling, query_tokens, spelling_dictionary


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
    spell = spelling_dictionary({term: 1 for term in vocab})
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
            if token in vocab or correct_spelling(spell, token) is not None:
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


def lexical_query_ids(dataset: Dataset, query_ids: np.ndarray) -> np.ndarray:
    """The ids among ``query_ids`` of queries of a lexical kind (:data:`LEXICAL_KINDS`): the only
    ones synonym mining learns from."""
    queries = dataset.queries
    ids = np.asarray(query_ids, dtype=np.int64)
    kinds = queries.kind[queries.query_id.searchsorted(ids)]
    return ids[np.isin(kinds, LEXICAL_KINDS)]


def synonyms_from_dataset(
    dataset: Dataset, train_query_ids: np.ndarray, config: MiningConfig | None = None
) -> dict[str, str]:
    """Mine the synonym table from a generated world's training queries of the lexical kinds.

    Args:
        dataset: The world (catalog and judged query log).
        train_query_ids: Queries to learn from: never the held-out ones the bundle is evaluated on.
            Those of an understanding kind are skipped (see the module docstring).
        config: Thresholds.
    """
    config = config or MiningConfig()
    documents = [frozenset(query_tokens(t)) for t in dataset.item_text()]
    items = dataset.items.item_id
    queries = dataset.queries
    rows = queries.query_id.searchsorted(lexical_query_ids(dataset, train_query_ids))
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
    return {"synonyms": len(synonyms),
            "synonyms_mined_from_queries": len(lexical_query_ids(dataset, train_query_ids))}


def save_synonyms(folder: Path, synonyms: Mapping[str, str]) -> Path:
    """Write the synonym table into a component folder (before its manifest is written)."""
    path = Path(folder) / REWRITES_FILE
    path.write_text(json.dumps({"synonyms": dict(synonyms)}, indent=1, sort_keys=True) + "\n")
    return path
