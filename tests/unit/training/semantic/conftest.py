"""Fixtures of the semantic path's tests: a toy bi-encoder (a one-layer BERT, random weights, for
the serving side's shapes and checks) and the real MiniLM with its tokenizer (for the export's
numbers), the tiny world, and one tiny ``semantic`` component built as the pipeline builds it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, PreTrainedTokenizerBase

from shopserve.artifacts import Manifest
from training.data.generator import Dataset, GeneratorConfig, generate
from training.semantic.encoder import MeanPoolEncoder, encoder_tokenizer, load_encoder
from training.semantic.export import export_onnx

#: The toy encoder's vocabulary, width and output size.
TOY_VOCAB, TOY_DIM = 120, 16


def toy_encoder(seed: int = 0) -> MeanPoolEncoder:
    """A one-layer BERT with mean pooling, random weights: the export's shapes in milliseconds."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=TOY_VOCAB, hidden_size=TOY_DIM, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                        attn_implementation="eager")
    return MeanPoolEncoder(BertModel(config, add_pooling_layer=False)).eval()


@pytest.fixture(scope="session")
def toy_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy encoder's ``query-encoder`` graph (the real export)."""
    return export_onnx(toy_encoder(), tmp_path_factory.mktemp("toy-encoder") / "model.onnx")


@pytest.fixture(scope="session")
def minilm() -> MeanPoolEncoder:
    """The packaged all-MiniLM-L6-v2 as the bi-encoder (untuned, eval mode)."""
    torch.set_num_threads(1)
    return load_encoder()


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerBase:
    return encoder_tokenizer()


@pytest.fixture(scope="session")
def tiny_world() -> Dataset:
    return generate(GeneratorConfig.tiny())


@pytest.fixture(scope="session")
def tiny_component(tiny_world: Dataset, tmp_path_factory: pytest.TempPathFactory
                   ) -> tuple[Path, Manifest]:
    """A ``semantic`` component of the tiny world with the tiny preset, and its manifest."""
    from pipeline.lifecycle.config import semantic_config
    from pipeline.lifecycle.semantic import build_semantic_component

    folder = tmp_path_factory.mktemp("semantic") / "semantic"
    manifest = build_semantic_component(tiny_world, folder,
                                        semantic_config({"preset": "tiny"}, progress=False), "t-1")
    return folder, manifest
