"""Text handling shared by the ranker (training) and the search transformer (serving).

The transformer tokenises (query, title) pairs exactly as the ranker was trained on them, so the
encoding lives here, once.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np

from shopserve.protocol import ATTENTION_MASK, INPUT_IDS, TOKEN_TYPE_IDS


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
