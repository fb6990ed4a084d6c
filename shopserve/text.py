"""Text handling shared by the ranker (training) and the search transformer (serving).

The transformer tokenises (query, title) pairs exactly as the ranker was trained on them, so the
encoding lives here, once. It runs on the Rust ``tokenizers`` library alone (:class:`PairTokenizer`,
read from the bundle's ``tokenizer/`` folder), so serving needs neither ``transformers`` nor torch;
the build wraps its Hugging Face tokenizer with :meth:`PairTokenizer.from_hf` and gets the same
encoding the Hugging Face tokenizer itself would return.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from shopserve.protocol import ATTENTION_MASK, INPUT_IDS, TOKEN_TYPE_IDS

_TOKEN = re.compile(r"[a-z0-9]+")

#: Files of a Hugging Face fast tokenizer folder (``save_pretrained``) that :class:`PairTokenizer`
#: reads: the tokenizer itself, then its special tokens and sides from the other two.
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"


#: The rows of a QWERTY keyboard, for typos a finger makes.
KEYBOARD_ROWS: tuple[str, ...] = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def keyboard_neighbours() -> dict[str, str]:
    """Letter -> the letters around it on a QWERTY keyboard: the neighbour-key typo of the data
    generator's queries and of the load test's composed ones (one table for both)."""
    out: dict[str, str] = {}
    for r, row in enumerate(KEYBOARD_ROWS):
        for c, ch in enumerate(row):
            near = row[max(c - 1, 0):c] + row[c + 1:c + 2]
            for other in (r - 1, r + 1):
                if 0 <= other < len(KEYBOARD_ROWS):
                    near += KEYBOARD_ROWS[other][max(c - 1, 0):c + 1]
            out[ch] = near
    return out


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


class PairTokenizer:
    """A ``tokenizers.Tokenizer`` with what pair encoding needs: special tokens, padding, sides.

    Encodes exactly as the Hugging Face fast tokenizer it was saved from (or wraps): Hugging Face
    calls the same Rust tokenizer, after setting truncation and padding from the call's arguments
    and the special tokens and sides below. Truncation and padding are never changed on a shared
    instance: each ``max_length`` gets its own configured copy, made on first use and read-only
    after, so concurrent encodings (threads on the build side, coroutines while serving) cannot
    see each other's settings. A process uses one or two lengths; each copy costs a few MB.

    Args:
        tokenizer: The tokenizer (copied; its own truncation and padding are ignored).
        cls_id: Id of the classifier token, None if it has none.
        sep_id: Id of the separator token, None if it has none.
        pad_id: Id of the padding token; None if it has none (then pairs cannot be batched).
        pad_token: The padding token (default: the token of ``pad_id``).
        pad_type_id: Segment id of padding positions.
        padding_side: ``right`` or ``left``.
        truncation_side: ``right`` or ``left``.
        split_special_tokens: Whether special tokens typed in the text are split like words
            (Hugging Face's ``split_special_tokens``) instead of mapped to their ids.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        cls_id: int | None,
        sep_id: int | None,
        pad_id: int | None,
        pad_token: str | None = None,
        pad_type_id: int = 0,
        padding_side: str = "right",
        truncation_side: str = "right",
        split_special_tokens: bool = False,
    ) -> None:
        for name, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if side not in ("right", "left"):
                raise ValueError(f"{name} must be 'right' or 'left', not {side!r}")
        self._json = tokenizer.to_str()
        self.cls_id = cls_id
        self.sep_id = sep_id
        self.pad_id = pad_id
        self.pad_token = pad_token if pad_token is not None or pad_id is None else (
            tokenizer.id_to_token(pad_id))
        self.pad_type_id = pad_type_id
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.split_special_tokens = split_special_tokens
        self._plain = self._copy()
        self._plain.no_truncation()
        self._plain.no_padding()
        self._by_length: dict[int, Tokenizer] = {}

    @classmethod
    def from_hf(cls, tokenizer: Any) -> PairTokenizer:
        """Wrap a Hugging Face fast tokenizer (the build side), without importing transformers.

        Args:
            tokenizer: A ``PreTrainedTokenizerFast`` (anything with ``backend_tokenizer``).
        """
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if not isinstance(backend, Tokenizer):
            raise TypeError(f"{type(tokenizer).__name__} is not a Hugging Face fast tokenizer "
                            "(no tokenizers.Tokenizer backend)")
        return cls(
            backend,
            cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id,
            pad_id=tokenizer.pad_token_id,
            pad_token=str(tokenizer.pad_token) if tokenizer.pad_token is not None else None,
            pad_type_id=int(tokenizer.pad_token_type_id),
            padding_side=tokenizer.padding_side, truncation_side=tokenizer.truncation_side,
            split_special_tokens=bool(getattr(tokenizer, "split_special_tokens", False)),
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> PairTokenizer:
        """Load a Hugging Face fast tokenizer folder (``save_pretrained``) without transformers.

        ``tokenizer.json`` is the tokenizer. The special tokens come from
        ``tokenizer_config.json``, then ``special_tokens_map.json``, then ``tokenizer.json`` itself
        (the post-processor's ``[CLS]``/``[SEP]``, the padding's token); the sides and
        ``split_special_tokens`` from ``tokenizer_config.json``, Hugging Face's defaults otherwise.

        Raises:
            OSError: ``tokenizer.json`` is missing or unreadable.
            ValueError: a file is not valid JSON, or a side is neither ``right`` nor ``left``.
        """
        folder = Path(path)
        text = (folder / TOKENIZER_FILE).read_text(encoding="utf-8")
        tokenizer = Tokenizer.from_str(text)
        config = _read_json(folder / TOKENIZER_CONFIG_FILE)
        special = _read_json(folder / SPECIAL_TOKENS_MAP_FILE)
        backend = json.loads(text)
        from_post = _post_processor_tokens(backend.get("post_processor"))
        padding = backend.get("padding") or {}

        def token_id(name: str, fallback: str | None) -> tuple[str | None, int | None]:
            for source in (config, special):
                content = _token_content(source.get(name))
                if content is not None:
                    return content, tokenizer.token_to_id(content)
            if fallback is None:
                return None, None
            return fallback, tokenizer.token_to_id(fallback)

        _, cls_id = token_id("cls_token", from_post.get("cls"))
        _, sep_id = token_id("sep_token", from_post.get("sep"))
        pad_token, pad_id = token_id("pad_token", padding.get("pad_token"))
        return cls(
            tokenizer, cls_id=cls_id, sep_id=sep_id, pad_id=pad_id,
            pad_token=pad_token if pad_id is not None else None,
            pad_type_id=int(config.get("pad_token_type_id", 0)),
            padding_side=str(config.get("padding_side", "right")),
            truncation_side=str(config.get("truncation_side", "right")),
            split_special_tokens=bool(config.get("split_special_tokens", False)),
        )

    def _copy(self) -> Tokenizer:
        tokenizer = Tokenizer.from_str(self._json)
        tokenizer.encode_special_tokens = self.split_special_tokens
        return tokenizer

    def _for_length(self, max_length: int) -> Tokenizer:
        """The copy that truncates pairs to ``max_length`` and pads to the batch's longest."""
        tokenizer = self._by_length.get(max_length)
        if tokenizer is None:
            if self.pad_id is None or self.pad_token is None:
                raise ValueError("the tokenizer has no padding token: pairs of different lengths "
                                 "cannot be batched")
            tokenizer = self._copy()
            tokenizer.enable_truncation(max_length, stride=0, strategy="longest_first",
                                        direction=self.truncation_side)
            tokenizer.enable_padding(direction=self.padding_side, pad_id=self.pad_id,
                                     pad_type_id=self.pad_type_id, pad_token=self.pad_token,
                                     length=None, pad_to_multiple_of=None)
            # Two first uses at once build two equal copies; the dict keeps one of them.
            tokenizer = self._by_length.setdefault(max_length, tokenizer)
        return tokenizer

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text alone: no special tokens, no truncation, no padding."""
        encodings = self._plain.encode_batch_fast(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]

    def encode(self, queries: Sequence[str], titles: Sequence[str],
               max_length: int | None = None) -> list[Encoding]:
        """Encode (query, title) pairs with special tokens.

        Args:
            queries: One query per pair.
            titles: One title per pair.
            max_length: Truncate each pair to this many tokens (``longest_first``) and pad to the
                batch's longest pair; None: neither (every pair at its own length).
        """
        tokenizer = self._plain if max_length is None else self._for_length(max_length)
        return tokenizer.encode_batch_fast(list(zip(queries, titles, strict=True)),
                                           add_special_tokens=True)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _token_content(value: Any) -> str | None:
    """A special token as written by Hugging Face: a string or an ``AddedToken`` dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _post_processor_tokens(processor: Any) -> dict[str, str]:
    """``cls`` and ``sep`` tokens named by a ``tokenizer.json`` post-processor, where it has them."""
    if not isinstance(processor, Mapping):
        return {}
    kind = processor.get("type")
    if kind in ("BertProcessing", "RobertaProcessing"):
        return {name: str(processor[name][0]) for name in ("cls", "sep")
                if isinstance(processor.get(name), list) and processor[name]}
    if kind == "TemplateProcessing":
        # The pair template of BERT: [CLS] $A [SEP] $B [SEP]; the token before $A is cls, the
        # one right after $A is sep.
        found: dict[str, str] = {}
        pieces = processor.get("pair") or []
        for i, piece in enumerate(pieces):
            if "Sequence" in piece and piece["Sequence"].get("id") == "A":
                if i > 0 and "SpecialToken" in pieces[i - 1]:
                    found["cls"] = str(pieces[i - 1]["SpecialToken"]["id"])
                if i + 1 < len(pieces) and "SpecialToken" in pieces[i + 1]:
                    found["sep"] = str(pieces[i + 1]["SpecialToken"]["id"])
        return found
    if kind == "Sequence":
        found = {}
        for inner in processor.get("processors") or []:
            found = {**found, **_post_processor_tokens(inner)}
        return found
    return {}


def _pair_tokenizer(tokenizer: Any) -> PairTokenizer:
    if not isinstance(tokenizer, PairTokenizer):
        raise TypeError(f"expected a shopserve.text.PairTokenizer, got {type(tokenizer).__name__}; "
                        "wrap a Hugging Face tokenizer with PairTokenizer.from_hf(tokenizer)")
    return tokenizer


def encode_pairs(
    tokenizer: PairTokenizer, queries: Sequence[str], titles: Sequence[str], max_length: int
) -> dict[str, np.ndarray]:
    """Tokenise (query, title) pairs, padded to the longest pair of this batch only.

    Dynamic padding keeps a batch of short pairs short (attention cost grows with the square of
    the padded length); ``max_length`` truncates the rare outlier, the longer side first. Equal to
    the Hugging Face tokenizer's ``tokenizer(queries, titles, padding="longest",
    truncation="longest_first", max_length=max_length, return_tensors="np")``.

    Args:
        tokenizer: The ranker's tokenizer (:meth:`PairTokenizer.from_dir` of the bundle's folder,
            or :meth:`PairTokenizer.from_hf` on the build side).
        queries: One query per pair.
        titles: One title per pair.
        max_length: Longest sequence the model takes (special tokens included).

    Returns:
        ``input_ids``, ``attention_mask``, ``token_type_ids``: int64 ``[B, L]``, ``L <= max_length``
        (the ranker contract's names and dtype); ``[0, 0]`` for no pairs.

    Raises:
        TypeError: ``tokenizer`` is not a :class:`PairTokenizer`.
        ValueError: ``queries`` and ``titles`` differ in length, or the tokenizer has no padding
            token.
    """
    tokenizer = _pair_tokenizer(tokenizer)
    if len(queries) != len(titles):
        raise ValueError(f"{len(queries)} queries but {len(titles)} titles")
    if not len(queries):
        return _empty()
    encodings = tokenizer.encode(queries, titles, max_length)
    return {
        INPUT_IDS: np.array([e.ids for e in encodings], dtype=np.int64),
        ATTENTION_MASK: np.array([e.attention_mask for e in encodings], dtype=np.int64),
        TOKEN_TYPE_IDS: np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def _empty() -> dict[str, np.ndarray]:
    return {name: np.zeros((0, 0), dtype=np.int64)
            for name in (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)}


class PairEncoder:
    """Encodes (query, title) pairs against a fixed list of titles tokenised once, at load.

    Serving scores one query against many catalog titles per request. The titles never change
    between requests, so they are tokenised once here; a request then tokenises only its query
    and builds each pair ``[CLS] query [SEP] title [SEP]`` by concatenating token ids. The result
    is exactly what :func:`encode_pairs` returns for the same pairs: WordPiece tokenises each
    side on its own, and a pair that needs truncation is handed to the tokenizer itself, so the
    rare outlier keeps its ``longest_first`` truncation. A tokenizer whose pair template is not
    BERT's (checked on a probe pair at construction), or that pads on the left or with a segment
    id other than 0, is always handed to :func:`encode_pairs`.

    With ``background`` the titles are tokenised on a thread of their own, so that a server is
    ready without waiting for it (0.1-0.4 s for 5,000 titles on 2 cores); until that is done,
    :meth:`encode` hands each batch to :func:`encode_pairs`, which gives the same ids.

    Args:
        tokenizer: The ranker's tokenizer.
        titles: Every title a request may pair with, by row.
        max_length: Longest sequence the model takes (special tokens included).
        background: Tokenise the titles on a background thread (see above).
    """

    def __init__(self, tokenizer: PairTokenizer, titles: Sequence[str], max_length: int,
                 background: bool = False) -> None:
        self.tokenizer = _pair_tokenizer(tokenizer)
        self.titles = titles
        self.max_length = max_length
        self.pad_id = int(tokenizer.pad_id or 0)
        self.cls_id = tokenizer.cls_id
        self.sep_id = tokenizer.sep_id
        self.concatenates = self._bert_template()
        self.titles_ready = threading.Event()
        if not self.concatenates:
            self.titles_ready.set()
        elif background:
            threading.Thread(target=self._tokenise_titles, name="title-tokens", daemon=True
                             ).start()
        else:
            self._tokenise_titles()

    def _tokenise_titles(self) -> None:
        ids = self.tokenizer.token_ids(self.titles)
        lengths = np.fromiter((len(t) for t in ids), dtype=np.int64, count=len(ids))
        self.offsets = np.concatenate(([0], np.cumsum(lengths)))
        self.flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64,
                                count=int(self.offsets[-1]))
        self.lengths = lengths
        self.titles_ready.set()

    def _bert_template(self) -> bool:
        tok = self.tokenizer
        if (self.cls_id is None or self.sep_id is None or tok.pad_id is None
                or tok.padding_side != "right" or tok.pad_type_id != 0):
            return False
        query, title = "probe query", "probe title"
        q, t = tok.token_ids([query, title])
        pair = tok.encode([query], [title])[0]
        return (pair.ids == [self.cls_id, *q, self.sep_id, *t, self.sep_id]
                and pair.type_ids == [0] * (len(q) + 2) + [1] * (len(t) + 1))

    def encode(self, query: str, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Tokenise ``query`` paired with the titles at ``rows``, padded to this batch's longest.

        Returns:
            ``input_ids``, ``attention_mask``, ``token_type_ids``: int64 ``[len(rows), L]``, equal
            to ``encode_pairs(tokenizer, [query] * len(rows), titles[rows], max_length)``.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return _empty()
        if not self.titles_ready.is_set():  # no template to concatenate, or titles still to come
            return encode_pairs(self.tokenizer, [query] * len(rows),
                                [self.titles[r] for r in rows], self.max_length)
        q = np.asarray(self.tokenizer.token_ids([query])[0], dtype=np.int64)
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
