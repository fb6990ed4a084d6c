"""Pair encoding on the ``tokenizers`` library alone, equal to the Hugging Face tokenizer's own.

``PairTokenizer`` (from the Hugging Face tokenizer, or from its saved folder as serving reads it),
``encode_pairs`` and ``PairEncoder`` (titles tokenised once, pairs concatenated) must return what
``tokenizer(queries, titles, padding="longest", truncation="longest_first", ...)`` returns.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from shopserve.protocol import ATTENTION_MASK, INPUT_IDS, TOKEN_TYPE_IDS
from shopserve.text import PairEncoder, PairTokenizer, encode_pairs
from training.data.generator import GeneratorConfig, generate
from training.ranker.modeling import load_tokenizer, minilm_dir

NAMES = (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)


@pytest.fixture(scope="module")
def hf_tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def tokenizer(hf_tokenizer) -> PairTokenizer:
    return PairTokenizer.from_hf(hf_tokenizer)


@pytest.fixture(scope="module")
def saved_dir(hf_tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tokenizer folder as the ranker build writes it into the bundle."""
    folder = tmp_path_factory.mktemp("tokenizer")
    hf_tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def titles() -> list[str]:
    return generate(GeneratorConfig.tiny()).items.title.tolist()


def hf_pairs(hf_tokenizer, queries: list[str], titles: list[str], max_length: int
             ) -> dict[str, np.ndarray]:
    """What the Hugging Face tokenizer itself returns for the pairs (the reference)."""
    out = hf_tokenizer(queries, titles, padding="longest", truncation="longest_first",
                       max_length=max_length, return_tensors="np")
    return {name: out[name] for name in NAMES}


def assert_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(NAMES)
    for name in NAMES:
        assert got[name].dtype == np.int64, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


# name: (queries, titles, max_length)
CASES: dict[str, tuple[list[str], list[str], int]] = {
    "short pairs": (["red sneakers", "sock"], ["Nike Red Running Shoe", "Wool Grey Sock"], 64),
    "one pair": (["blue sock"], ["Blue Sock"], 32),
    "mixed lengths padded to the longest": (
        ["sock", "red nike running shoes for trail and road"],
        ["red sock", "nike air zoom pegasus red running shoe with a long name"], 64),
    "long title truncated": (["shoe"], ["word " * 200], 16),
    "long query truncated": (["a very long query " * 10], ["red sock"], 16),
    "both sides truncated, longest first": (
        ["long query words " * 8, "x"], ["long title words " * 12, "y"], 24),
    "truncation to the special tokens and one token each": (["red shoe"], ["blue sock"], 5),
    "some rows truncated, some not": (
        ["sock", "red running shoe " * 10], ["Cotton Red Sock", "Wool Grey Sock"], 12),
    "empty query": ([""], ["Cotton Red Sock"], 32),
    "empty query and title": (["", "sock"], ["", "Wool Grey Sock"], 32),
    "unicode": (
        ["ｓｈｏｅｓ für Läufer", "北京 跑鞋", "café crème 🙂", "naïve  résumé\tcase"],
        ["Schuhe für Läufer — grün", "跑鞋 红色 size 42", "Crème brûlée ☕", "Résumé Naïve"], 32),
    "unicode truncated": (["ＴＲＡＩＬ ｓｈｏｅｓ"], ["跑鞋 " * 40], 10),
    "special tokens typed in the text": (["[CLS] shoes [SEP]"], ["[PAD] sock [MASK]"], 32),
    "unknown words": (["unknownwordzzz x"], ["qqqqzzzz wwwwkkkk"], 16),
}


@pytest.mark.parametrize("case", CASES)
def test_encode_pairs_equals_the_hugging_face_tokenizer(hf_tokenizer, tokenizer: PairTokenizer,
                                                        case: str) -> None:
    queries, titles, max_length = CASES[case]
    got = encode_pairs(tokenizer, queries, titles, max_length)
    assert_equal(got, hf_pairs(hf_tokenizer, queries, titles, max_length))
    assert got[INPUT_IDS].shape[1] <= max_length


@pytest.mark.parametrize("case", CASES)
def test_from_dir_equals_from_hf(hf_tokenizer, saved_dir: Path, case: str) -> None:
    queries, titles, max_length = CASES[case]
    got = encode_pairs(PairTokenizer.from_dir(saved_dir), queries, titles, max_length)
    assert_equal(got, hf_pairs(hf_tokenizer, queries, titles, max_length))


def test_from_dir_reads_the_special_tokens_and_sides(tokenizer: PairTokenizer,
                                                     saved_dir: Path) -> None:
    loaded = PairTokenizer.from_dir(saved_dir)
    for attribute in ("cls_id", "sep_id", "pad_id", "pad_token", "pad_type_id", "padding_side",
                      "truncation_side", "split_special_tokens"):
        assert getattr(loaded, attribute) == getattr(tokenizer, attribute), attribute
    assert (loaded.cls_id, loaded.sep_id, loaded.pad_id) == (101, 102, 0)


def test_the_packaged_folder_ignores_its_stored_truncation_and_padding(hf_tokenizer) -> None:
    # The packaged tokenizer.json pads every sequence to 128 and truncates at 128; Hugging Face
    # overrides both per call, and so must we.
    queries, titles, max_length = CASES["mixed lengths padded to the longest"]
    got = encode_pairs(PairTokenizer.from_dir(minilm_dir()), queries, titles, max_length)
    assert_equal(got, hf_pairs(hf_tokenizer, queries, titles, max_length))


def test_tokenizer_json_alone_names_its_special_tokens(hf_tokenizer, tmp_path: Path) -> None:
    # Without tokenizer_config.json or special_tokens_map.json: [CLS] and [SEP] from the pair
    # template of the post-processor, [PAD] from the stored padding.
    shutil.copy(minilm_dir() / "tokenizer.json", tmp_path / "tokenizer.json")
    loaded = PairTokenizer.from_dir(tmp_path)
    assert (loaded.cls_id, loaded.sep_id, loaded.pad_id, loaded.pad_token) == (101, 102, 0, "[PAD]")
    queries, titles, max_length = CASES["some rows truncated, some not"]
    assert_equal(encode_pairs(loaded, queries, titles, max_length),
                 hf_pairs(hf_tokenizer, queries, titles, max_length))


def test_a_folder_without_tokenizer_json_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        PairTokenizer.from_dir(tmp_path)


def test_lengths_do_not_leak_between_calls(tokenizer: PairTokenizer) -> None:
    queries, titles, _ = CASES["both sides truncated, longest first"]
    short = encode_pairs(tokenizer, queries, titles, 16)
    encode_pairs(tokenizer, queries, titles, 64)
    assert_equal(encode_pairs(tokenizer, queries, titles, 16), short)
    assert short[INPUT_IDS].shape[1] == 16


def test_from_hf_leaves_the_hugging_face_tokenizer_alone(hf_tokenizer) -> None:
    backend = hf_tokenizer.backend_tokenizer
    before = (backend.truncation, backend.padding)
    pair_tokenizer = PairTokenizer.from_hf(hf_tokenizer)
    encode_pairs(pair_tokenizer, ["red shoe"], ["blue sock " * 30], 16)
    assert (backend.truncation, backend.padding) == before


def test_a_hugging_face_tokenizer_is_refused_with_the_fix(hf_tokenizer) -> None:
    with pytest.raises(TypeError, match="from_hf"):
        encode_pairs(hf_tokenizer, ["a"], ["b"], 8)
    with pytest.raises(TypeError, match="from_hf"):
        PairEncoder(hf_tokenizer, ["b"], 8)


def test_no_pairs_is_an_empty_batch(tokenizer: PairTokenizer) -> None:
    out = encode_pairs(tokenizer, [], [], 16)
    assert all(out[name].shape == (0, 0) and out[name].dtype == np.int64 for name in NAMES)


QUERIES = ["red sneakers", "", "ｓｈｏｅｓ for running", "a very long query " * 6, "unknownwordzzz x"]


@pytest.mark.parametrize("max_length", [8, 16, 32, 128])
@pytest.mark.parametrize("query", QUERIES)
def test_pair_encoder_equals_the_hugging_face_tokenizer(
    hf_tokenizer, tokenizer: PairTokenizer, titles: list[str], query: str, max_length: int
) -> None:
    encoder = PairEncoder(tokenizer, titles, max_length)
    assert encoder.concatenates
    rows = np.random.default_rng(len(query) + max_length).choice(len(titles), 50, replace=False)
    got = encoder.encode(query, rows)
    picked = [titles[r] for r in rows]
    assert_equal(got, encode_pairs(tokenizer, [query] * len(rows), picked, max_length))
    assert_equal(got, hf_pairs(hf_tokenizer, [query] * len(rows), picked, max_length))


def test_pair_encoder_from_the_saved_folder(hf_tokenizer, saved_dir: Path,
                                            titles: list[str]) -> None:
    encoder = PairEncoder(PairTokenizer.from_dir(saved_dir), titles, 32)
    rows = np.arange(0, len(titles), max(1, len(titles) // 50))
    assert_equal(encoder.encode("red running shoes", rows),
                 hf_pairs(hf_tokenizer, ["red running shoes"] * len(rows),
                          [titles[r] for r in rows], 32))


def test_empty_rows(tokenizer: PairTokenizer, titles: list[str]) -> None:
    got = PairEncoder(tokenizer, titles, 32).encode("shoes", np.array([], dtype=np.int64))
    assert got[INPUT_IDS].shape[0] == 0


def test_titles_tokenised_in_the_background_give_the_same_pairs_before_and_after(
        tokenizer: PairTokenizer, titles: list[str]) -> None:
    rows = np.arange(min(40, len(titles)))
    want = encode_pairs(tokenizer, ["red running shoes"] * len(rows),
                        [titles[r] for r in rows], 64)
    encoder = PairEncoder(tokenizer, titles, 64, background=True)
    assert_equal(encoder.encode("red running shoes", rows), want)  # before or after: the same
    assert encoder.titles_ready.wait(30)
    assert encoder.concatenates
    assert_equal(encoder.encode("red running shoes", rows), want)
    foreground = PairEncoder(tokenizer, titles, 64)
    assert foreground.titles_ready.is_set()
    np.testing.assert_array_equal(foreground.flat, encoder.flat)
