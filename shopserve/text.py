"""Text handling shared by the ranker (training) and the search transformer (serving).

The transformer tokenises (query, title) pairs exactly as the ranker was trained on them, so the
encoding lives here, once.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np

from shopserve.protocol import ATTENTION_MASK, INPUT_IDS, TOKEN_TYPE_IDS

_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    """Lower-case alphanumeric tokens: the tokenisation under which the generator's guarantees hold
    (e.g. a ``synonym`` query shares no token with its category's name or noun) and the terms the
    drift monitor counts."""
    return _TOKEN.findall(text.lower())


def normalise_query(text: str) -> str:
    """NFKC, lower case, whitespace runs collapsed to one space, trimmed.

    NFKC folds full-width and compatibility characters (``Ｓｈｏｅｓ`` -> ``shoes``) so the same
    query always hits the same BM25 terms and tokens.
    """
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def encode_pairs(
    tokenizer: Any, queries: Sequence[str], titles: Sequence[str], max_length: int
) -> dict[str, np.ndarray]:
    """Tokenise (query, title) pairs, padded to the longest pair of this batch only.

    Dynamic padding keeps a batch of short pairs short (attention cost grows with the square of
    the padded length); ``max_length`` truncates the rare outlier, the longer side first.

    Args:
        tokenizer: A Hugging Face (fast) tokenizer.
        queries: One query per pair.
        titles: One title per pair.
        max_length: Longest sequence the model takes (special tokens included).

    Returns:
        ``input_ids``, ``attention_mask``, ``token_type_ids``: int64 ``[B, L]``, ``L <= max_length``
        (the ranker contract's names and dtype).
    """
    if len(queries) != len(titles):
        raise ValueError(f"{len(queries)} queries but {len(titles)} titles")
    encoded = tokenizer(
        list(queries),
        list(titles),
        padding="longest",
        truncation="longest_first",
        max_length=max_length,
        return_tensors="np",
        return_token_type_ids=True,
        return_attention_mask=True,
    )
    return {
        name: np.ascontiguousarray(encoded[name], dtype=np.int64)
        for name in (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)
    }


class PairEncoder:
    """Encodes (query, title) pairs against a fixed list of titles tokenised once, at load.

    Serving scores one query against many catalog titles per request. The titles never change
    between requests, so they are tokenised once here; a request then tokenises only its query
    and builds each pair ``[CLS] query [SEP] title [SEP]`` by concatenating token ids. The result
    is exactly what :func:`encode_pairs` returns for the same pairs: WordPiece tokenises each
    side on its own, and a pair that needs truncation is handed to the tokenizer itself, so the
    rare outlier keeps its ``longest_first`` truncation. A tokenizer whose pair template is not
    BERT's (checked on a probe pair at construction) is always handed to :func:`encode_pairs`.

    Args:
        tokenizer: A Hugging Face (fast) tokenizer.
        titles: Every title a request may pair with, by row.
        max_length: Longest sequence the model takes (special tokens included).
    """

    def __init__(self, tokenizer: Any, titles: Sequence[str], max_length: int) -> None:
        self.tokenizer = tokenizer
        self.titles = titles
        self.max_length = max_length
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.cls_id = tokenizer.cls_token_id
        self.sep_id = tokenizer.sep_token_id
        self.concatenates = self._bert_template()
        if self.concatenates:
            ids = tokenizer(list(titles), add_special_tokens=False)["input_ids"]
            self.lengths = np.fromiter((len(t) for t in ids), dtype=np.int64, count=len(ids))
            self.offsets = np.concatenate(([0], np.cumsum(self.lengths)))
            self.flat = np.fromiter((i for t in ids for i in t), dtype=np.int64,
                                    count=int(self.offsets[-1]))

    def _bert_template(self) -> bool:
        if self.cls_id is None or self.sep_id is None:
            return False
        query, title = "probe query", "probe title"
        q = self.tokenizer(query, add_special_tokens=False)["input_ids"]
        t = self.tokenizer(title, add_special_tokens=False)["input_ids"]
        pair = self.tokenizer(query, title, return_token_type_ids=True)
        return (list(pair["input_ids"]) == [self.cls_id, *q, self.sep_id, *t, self.sep_id]
                and list(pair["token_type_ids"]) == [0] * (len(q) + 2) + [1] * (len(t) + 1))

    def encode(self, query: str, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Tokenise ``query`` paired with the titles at ``rows``, padded to this batch's longest.

        Returns:
            ``input_ids``, ``attention_mask``, ``token_type_ids``: int64 ``[len(rows), L]``, equal
            to ``encode_pairs(tokenizer, [query] * len(rows), titles[rows], max_length)``.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            empty = np.zeros((0, 0), dtype=np.int64)
            return {INPUT_IDS: empty, ATTENTION_MASK: empty.copy(), TOKEN_TYPE_IDS: empty.copy()}
        if not self.concatenates:
            return encode_pairs(self.tokenizer, [query] * len(rows),
                                [self.titles[r] for r in rows], self.max_length)
        q = np.asarray(self.tokenizer(query, add_special_tokens=False)["input_ids"], dtype=np.int64)
        first = len(q) + 2  # [CLS] query [SEP]
        lengths = first + self.lengths[rows] + 1
        fits = lengths <= self.max_length
        if not fits.any():  # a query near max_length on its own: nothing to concatenate
            return encode_pairs(self.tokenizer, [query] * len(rows),
                                [self.titles[r] for r in rows], self.max_length)
        width = int(min(lengths.max(initial=0), self.max_length))
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(rows), width), dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        input_ids[:, 0] = self.cls_id
        input_ids[:, 1:first - 1] = q
        input_ids[:, first - 1] = self.sep_id
        # Every fitting row's title tokens at once: token j of the title in batch row i goes to
        # column first + j, from flat[offsets[row] + j].
        fit = np.flatnonzero(fits)
        title_lengths = self.lengths[rows[fit]]
        batch_rows = np.repeat(fit, title_lengths)
        within = np.arange(int(title_lengths.sum())) - np.repeat(
            np.cumsum(title_lengths) - title_lengths, title_lengths)
        input_ids[batch_rows, first + within] = self.flat[
            np.repeat(self.offsets[rows[fit]], title_lengths) + within]
        input_ids[fit, lengths[fit] - 1] = self.sep_id
        columns = np.arange(width)
        inside = columns < lengths[fit, None]
        attention[fit] = inside
        types[fit] = inside & (columns >= first)
        long = np.flatnonzero(~fits)
        if len(long):
            # Truncation is the tokenizer's business: rare (max_length is a high percentile of
            # pair lengths), and its rules differ between strategies and versions.
            encoded = encode_pairs(self.tokenizer, [query] * len(long),
                                   [self.titles[rows[i]] for i in long], self.max_length)
            n = encoded[INPUT_IDS].shape[1]
            input_ids[long] = self.pad_id
            input_ids[long, :n] = encoded[INPUT_IDS]
            attention[long, :n] = encoded[ATTENTION_MASK]
            types[long, :n] = encoded[TOKEN_TYPE_IDS]
        return {INPUT_IDS: input_ids, ATTENTION_MASK: attention, TOKEN_TYPE_IDS: types}
