"""The semantic path in the search engine: candidates by meaning, and degradation without it.

The engine runs on the tiny bundle's real catalog and the MiniLM tokenizer; the semantic index is
built here over known vectors (one per catalog row), so that the query encoder's answer decides
which items are nearest. The integration tests (``test_semantic_stack.py``) run the real encoder
on Triton.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from tokenizers import Tokenizer

from shopserve.artifacts import CATALOG_COMPONENT, RANKER_COMPONENT, RANKER_TOKENIZER_DIR
from shopserve.errors import ShopserveError, UpstreamTimeout
from shopserve.protocol import ATTENTION_MASK, INPUT_IDS, QUERY_EMBEDDING, SCORE
from shopserve.text import PairTokenizer
from transformers_pre import blend
from transformers_pre.catalog import Catalog
from transformers_pre.engine import (
    DegradationReason,
    Dependency,
    EngineConfig,
    SearchEngine,
    SearchRequest,
)
from transformers_pre.rewrite import query_tokens
from transformers_pre.semantic import SemanticIndex

DIM = 16
#: A query no title shares a word with: BM25 finds nothing for it.
UNMATCHED = "something to keep my feet dry"


class Encoder:
    """A query encoder that embeds every query as the vector of one catalog row."""

    name = "query-encoder"

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector
        self.inputs: list[Mapping[str, np.ndarray]] = []

    async def infer(self, inputs: Mapping[str, np.ndarray],
                    parameters: Mapping[str, Any] | None = None,
                    request_id: str | None = None) -> dict[str, np.ndarray]:
        self.inputs.append(inputs)
        return {QUERY_EMBEDDING: self.vector[None, :]}


class Failing:
    def __init__(self, name: str, error: ShopserveError) -> None:
        self.name, self.error = name, error

    async def infer(self, inputs: Mapping[str, np.ndarray],
                    parameters: Mapping[str, Any] | None = None,
                    request_id: str | None = None) -> dict[str, np.ndarray]:
        raise self.error


class Neutral:
    """A ranker that scores every pair alike (the order is left to the other terms)."""

    name = "bert-ranker"

    async def infer(self, inputs: Mapping[str, np.ndarray],
                    parameters: Mapping[str, Any] | None = None,
                    request_id: str | None = None) -> dict[str, np.ndarray]:
        return {SCORE: np.zeros((inputs[INPUT_IDS].shape[0], 1), np.float32)}


@pytest.fixture(scope="module")
def world(tiny_bundle: Path) -> tuple[Catalog, PairTokenizer, SemanticIndex]:
    catalog = Catalog.load(tiny_bundle / CATALOG_COMPONENT)
    tokenizer_dir = tiny_bundle / RANKER_COMPONENT / RANKER_TOKENIZER_DIR
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(catalog), DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(DIM)
    index.add(vectors)
    text = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    text.enable_truncation(16)
    text.no_padding()
    semantic = SemanticIndex(index, np.arange(len(catalog), dtype=np.int64), vectors, text, DIM)
    return catalog, PairTokenizer.from_dir(tokenizer_dir), semantic


def _engine(world: tuple[Catalog, PairTokenizer, SemanticIndex], encoder: Any,
            **config: Any) -> SearchEngine:
    catalog, tokenizer, semantic = world
    return SearchEngine(catalog, tokenizer, Failing(Dependency.RECALL, UpstreamTimeout("unused")),
                        Neutral(), EngineConfig(max_length=32, semantic_candidates=10, **config),
                        semantic=encoder, semantic_index=semantic)


def test_a_query_without_lexical_matches_is_answered_by_meaning(world: Any) -> None:
    catalog, _, semantic = world
    target = 7
    encoder = Encoder(semantic.vectors[target])
    result = asyncio.run(_engine(world, encoder).search(SearchRequest(UNMATCHED, top_n=5)))
    assert result.degraded == []
    assert int(result.rows[0]) == target  # the nearest item, scored first by the semantic term
    assert all(blend.Source(int(s)) & blend.Source.SEMANTIC for s in result.sources)
    sent = encoder.inputs[0]
    assert sent[INPUT_IDS].shape == sent[ATTENTION_MASK].shape == (1, sent[INPUT_IDS].shape[1])
    assert sent[INPUT_IDS].dtype == np.int64


def test_semantic_candidates_respect_the_filters(world: Any) -> None:
    catalog, _, semantic = world
    target = 7
    other = next(c for c in np.unique(catalog.categories) if c != catalog.categories[target])
    result = asyncio.run(_engine(world, Encoder(semantic.vectors[target])).search(
        SearchRequest(UNMATCHED, top_n=5, category=str(other))))
    assert result.rows.size and target not in result.rows.tolist()
    assert set(catalog.categories[result.rows].tolist()) == {other}


def test_a_stopped_encoder_degrades_to_lexical_candidates(world: Any) -> None:
    catalog, _, _ = world
    query = " ".join(str(catalog.titles[0]).split()[:2])
    engine = _engine(world, Failing("query-encoder", UpstreamTimeout("query-encoder late")))
    result = asyncio.run(engine.search(SearchRequest(query, top_n=5)))
    assert result.degraded == [Dependency.SEMANTIC]
    assert DegradationReason.of(result.failures[Dependency.SEMANTIC]) is DegradationReason.TIMEOUT
    assert result.rows.size == 5
    assert not any(blend.Source(int(s)) & blend.Source.SEMANTIC for s in result.sources)
    with pytest.raises(UpstreamTimeout):
        asyncio.run(engine.search(SearchRequest(query, top_n=5, allow_degraded=False)))


def test_an_embedding_of_the_wrong_size_is_not_searched_with(world: Any) -> None:
    catalog, _, _ = world
    query = " ".join(str(catalog.titles[0]).split()[:2])
    engine = _engine(world, Encoder(np.ones(DIM + 1, np.float32)))
    result = asyncio.run(engine.search(SearchRequest(query, top_n=5)))
    assert result.degraded == [Dependency.SEMANTIC]
    reason = DegradationReason.of(result.failures[Dependency.SEMANTIC])
    assert reason is DegradationReason.UNAVAILABLE
    assert "query_embedding" in str(result.failures[Dependency.SEMANTIC])


def test_explanations_carry_the_semantic_term(world: Any) -> None:
    _, _, semantic = world
    result = asyncio.run(_engine(world, Encoder(semantic.vectors[3])).search(
        SearchRequest(UNMATCHED, top_n=5, explain=True)))
    assert "semantic" in result.parts
    assert float(result.parts["semantic"][0]) > 0
    total = sum(result.parts[name] for name in result.parts)
    np.testing.assert_allclose(total, result.scores, atol=1e-5)


def test_a_negation_leaves_out_what_it_refuses_from_every_source(world: Any) -> None:
    catalog, _, semantic = world
    target = 7
    title = str(catalog.titles[target]).lower()
    wanted = " ".join(query_tokens(title)[:2])
    refused = next(w for w in query_tokens(title)[2:] if catalog.rows_with_all(w).size < len(catalog))
    holding = set(catalog.rows_with_all(refused).tolist())
    assert target in holding
    # The encoder answers with the refused item itself: the semantic source must drop it too.
    engine = _engine(world, Encoder(semantic.vectors[target]))
    plain = asyncio.run(engine.search(SearchRequest(wanted, top_n=20)))
    negated = asyncio.run(engine.search(SearchRequest(f"{wanted} not {refused}", top_n=20)))
    assert holding & set(plain.rows.tolist())
    assert negated.rows.size and not holding & set(negated.rows.tolist())
    assert negated.degraded == []
    off = _engine(world, Encoder(semantic.vectors[target]), query_negation=False)
    kept = asyncio.run(off.search(SearchRequest(f"{wanted} not {refused}", top_n=20)))
    assert holding & set(kept.rows.tolist())  # off: the refused word is searched like any other
