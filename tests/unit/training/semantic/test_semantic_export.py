"""The ``query-encoder`` graph: the contract's tensors, the same embeddings as torch (MiniLM, within
1e-4), unit vectors whatever the padding, and the shipped tokenizer.json tokenising as the build's
tokenizer does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from predictors.ranker.triton_repo import onnx_io
from shopserve.protocol import ATTENTION_MASK, INPUT_IDS, QUERY_EMBEDDING, QUERY_ENCODER
from tests.unit.training.semantic.conftest import TOY_DIM
from training.semantic.build import write_tokenizer
from training.semantic.encoder import MeanPoolEncoder, as_tensors, embed_texts, tokenize
from training.semantic.export import check_export, embed_onnx, export_onnx, run_onnx, session

QUERIES = ["red lamp", "running shoes for rainy days", "blak lether jaket size m",
           "a mug that is not white", "kids' navy wool parka, size 10-12 years old"]


@pytest.fixture(scope="module")
def minilm_graph(minilm: MeanPoolEncoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(minilm, tmp_path_factory.mktemp("minilm") / "model.onnx")


def test_the_graph_has_the_contracts_tensors_with_a_fixed_size(toy_graph: Path) -> None:
    io = onnx_io(toy_graph)
    assert [(n, d, len(s)) for n, d, s in io["inputs"]] == [
        (t.name, t.datatype, len(t.shape)) for t in QUERY_ENCODER.inputs]
    assert [n for n, _, _ in io["inputs"]] == [INPUT_IDS, ATTENTION_MASK]
    ((name, datatype, shape),) = io["outputs"]
    assert (name, datatype) == (QUERY_EMBEDDING, "FP32")
    assert shape[0] == -1 and shape[1] == TOY_DIM
    assert all(dim == -1 for _, _, s in io["inputs"] for dim in s)  # batch and length vary


def test_the_onnx_graph_equals_torch_within_1e_4(
    minilm: MeanPoolEncoder, minilm_graph: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    batch = tokenize(tokenizer, QUERIES, 32)
    check = check_export(minilm, minilm_graph, batch)
    assert check.max_abs_diff <= 1e-4, check
    assert check.min_cosine >= 1 - 1e-5 and check.texts == len(QUERIES)
    with torch.inference_mode():
        reference = minilm(*as_tensors(batch)).numpy()
    np.testing.assert_allclose(run_onnx(minilm_graph, batch), reference, atol=1e-4)


def test_embeddings_are_unit_vectors_and_padding_changes_nothing(
    minilm_graph: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    together = run_onnx(minilm_graph, tokenize(tokenizer, QUERIES, 32))  # padded to the longest
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    for text, row in zip(QUERIES, together, strict=True):
        alone = run_onnx(minilm_graph, tokenize(tokenizer, [text], 32))[0]  # no padding
        np.testing.assert_allclose(row, alone, atol=1e-5)


def test_a_row_without_tokens_is_zero_not_nan(toy_graph: Path) -> None:
    batch = {INPUT_IDS: np.array([[1, 5, 2], [0, 0, 0]], np.int64),
             ATTENTION_MASK: np.array([[1, 1, 1], [0, 0, 0]], np.int64)}
    out = run_onnx(toy_graph, batch)
    assert np.isfinite(out).all() and not out[1].any()


def test_embedding_in_batches_keeps_the_order(
    minilm: MeanPoolEncoder, minilm_graph: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    texts = [*QUERIES, *(q.upper() for q in QUERIES)]
    onnx_vectors = embed_onnx(session(minilm_graph), tokenizer, texts, 32, batch_size=3)
    torch_vectors = embed_texts(minilm, tokenizer, texts, 32, batch_size=4)
    np.testing.assert_allclose(onnx_vectors, torch_vectors, atol=1e-4)
    one_by_one = np.stack([run_onnx(minilm_graph, tokenize(tokenizer, [t], 32))[0] for t in texts])
    np.testing.assert_allclose(onnx_vectors, one_by_one, atol=1e-5)


def test_the_shipped_tokenizer_json_tokenises_as_the_build_and_truncates(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    shipped = Tokenizer.from_file(str(write_tokenizer(tmp_path / "tokenizer.json", 8)))
    for text in QUERIES:
        ids = shipped.encode(text).ids
        assert ids == tokenize(tokenizer, [text], 8)[INPUT_IDS][0].tolist()
        assert len(ids) <= 8 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert len(shipped.encode(" ".join(["word"] * 50)).ids) == 8
