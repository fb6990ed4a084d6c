"""Recent items, the sequence model's session and explanations in the search engine.

The engine runs on the tiny bundle's real catalog and tokenizer. The upstream clients answer as
the real models would (the ranker a score per pair; the sequence model its top next items after
the sequence, excluding it, with the session vector), computed here from a small made-up embedding
table, so the expected answers can be derived exactly. The real models behind v2 are in the
integration tests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shopserve.artifacts import CATALOG_COMPONENT, RANKER_COMPONENT, RANKER_TOKENIZER_DIR
from shopserve.errors import ShopserveError, UpstreamTimeout
from shopserve.protocol import (
    INPUT_IDS,
    ITEM_SEQUENCE,
    NEXT_ITEMS,
    NEXT_SCORES,
    SCORE,
    SESSION_EMBEDDING,
)
from shopserve.text import PairTokenizer
from transformers_pre import blend
from transformers_pre.catalog import Catalog
from transformers_pre.engine import (
    ADJUSTMENT,
    Dependency,
    EngineConfig,
    SearchEngine,
    SearchRequest,
    SearchResult,
)
from transformers_pre.session import SessionModel

DIM = 8
TOP_K = 20
LENGTH = 5


class Ranker:
    """Scores each pair by its first token ids (deterministic, distinct per title)."""

    name = "ranker"

    async def infer(self, inputs: Mapping[str, np.ndarray], parameters: Any = None,
                    request_id: str | None = None) -> dict[str, np.ndarray]:
        ids = inputs[INPUT_IDS].astype(np.float32)
        return {SCORE: (np.sin(ids.sum(axis=1)) * 3).reshape(-1, 1).astype(np.float32)}


class Sequence:
    """The sequence model's answer from ``embeddings``: the session is the mean embedding of the
    sequence; next items are the best dot products, the sequence's own items excluded."""

    name = "sequence"

    def __init__(self, embeddings: np.ndarray, error: ShopserveError | None = None) -> None:
        self.embeddings = embeddings
        self.error = error
        self.sequences: list[np.ndarray] = []

    async def infer(self, inputs: Mapping[str, np.ndarray], parameters: Any = None,
                    request_id: str | None = None) -> dict[str, np.ndarray]:
        if self.error is not None:
            raise self.error
        sequence = inputs[ITEM_SEQUENCE]
        self.sequences.append(sequence)
        known = sequence[0][sequence[0] > 0]
        session = self.embeddings[known].mean(axis=0).astype(np.float32)
        scores = self.embeddings @ session
        scores[0] = -np.inf
        scores[known] = -np.inf
        top = np.argsort(-scores, kind="stable")[:TOP_K]
        return {NEXT_ITEMS: top[None].astype(np.int64),
                NEXT_SCORES: scores[top][None].astype(np.float32),
                SESSION_EMBEDDING: session[None]}


class Recall:
    name = "recall"

    async def infer(self, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        raise AssertionError("anonymous shoppers never ask recall")


@pytest.fixture(scope="module")
def parts(tiny_bundle: Path) -> tuple[Catalog, PairTokenizer]:
    catalog = Catalog.load(tiny_bundle / CATALOG_COMPONENT)
    tokenizer = PairTokenizer.from_dir(tiny_bundle / RANKER_COMPONENT / RANKER_TOKENIZER_DIR)
    return catalog, tokenizer


@pytest.fixture(scope="module")
def session_model(parts: tuple[Catalog, PairTokenizer]) -> SessionModel:
    catalog, _ = parts
    rng = np.random.default_rng(7)
    # The model knows every catalog item but the last (an item it never saw in training).
    item_ids = np.concatenate([[-1], catalog.items.ids[:-1]]).astype(np.int64)
    embeddings = rng.normal(size=(item_ids.size, DIM)).astype(np.float32)
    embeddings[0] = 0.0
    return SessionModel.build(item_ids, embeddings, catalog.items, LENGTH, TOP_K)


def _engine(parts: tuple[Catalog, PairTokenizer], session_model: SessionModel | None,
            sequence: Sequence | None) -> SearchEngine:
    catalog, tokenizer = parts
    return SearchEngine(catalog, tokenizer, Recall(), Ranker(), EngineConfig(max_length=32),
                        sequence, session_model)


def _search(engine: SearchEngine, **request: Any) -> SearchResult:
    return asyncio.run(engine.search(SearchRequest(**request)))


def _assert_parts_sum_to_scores(result: SearchResult) -> None:
    assert set(result.parts) == {*blend.PARTS, ADJUSTMENT}
    total = sum(result.parts[name].astype(np.float64) for name in (*blend.PARTS, ADJUSTMENT))
    np.testing.assert_allclose(total, result.scores, atol=1e-5)
    assert (result.parts[ADJUSTMENT] <= 1e-7).all()  # it only ever lowers a score


def test_the_model_input_is_the_newest_known_items_left_padded(session_model: SessionModel
                                                                ) -> None:
    rows = session_model.row_of_index
    unknown = len(session_model.index_of_row) - 1  # the catalog's last row: not in the model
    assert session_model.index_of_row[unknown] == 0
    sequence = session_model.sequence((int(rows[3]), unknown, int(rows[1])))
    assert sequence.tolist() == [[0, 0, 0, 3, 1]]
    many = tuple(int(r) for r in rows[1:9])
    assert session_model.sequence(many).tolist() == [[4, 5, 6, 7, 8]]


def test_an_anonymous_shopper_with_recent_items_gets_the_sessions_next_items(
        parts: tuple[Catalog, PairTokenizer], session_model: SessionModel) -> None:
    catalog, _ = parts
    sequence = Sequence(session_model.embeddings)
    engine = _engine(parts, session_model, sequence)
    recent = tuple(int(r) for r in session_model.row_of_index[[5, 9, 2]])
    result = _search(engine, query="", top_n=5, recent=recent, explain=True)
    assert result.degraded == []
    # What the model puts first, as rows, minus nothing (it already left the recent items out).
    expected_next = session_model.row_of_index[asyncio.run(sequence.infer(
        {ITEM_SEQUENCE: session_model.sequence(recent)}))[NEXT_ITEMS][0]]
    assert set(result.rows.tolist()) <= set(expected_next.tolist())
    assert not set(result.rows.tolist()) & set(recent)
    assert all(blend.Source(int(s)) & blend.Source.SEQUENCE for s in result.sources)
    _assert_parts_sum_to_scores(result)
    # Without recent items the same shopper gets popularity: the session changed the answer.
    popular = _search(engine, query="", top_n=5)
    assert popular.rows.tolist() == catalog.popular(5, None).tolist()
    assert popular.rows.tolist() != result.rows.tolist()


def test_recent_items_personalise_a_search_through_the_session_term(
        parts: tuple[Catalog, PairTokenizer], session_model: SessionModel) -> None:
    catalog, _ = parts
    engine = _engine(parts, session_model, Sequence(session_model.embeddings))
    query = " ".join(str(catalog.titles[0]).split()[:1])
    recent = tuple(int(r) for r in session_model.row_of_index[[1, 2, 3]])
    plain = _search(engine, query=query, top_n=10, explain=True)
    session = _search(engine, query=query, top_n=10, recent=recent, explain=True)
    assert (plain.parts["session"] == 0).all()
    assert (session.parts["session"] > 0).any()
    for result in (plain, session):
        _assert_parts_sum_to_scores(result)
        assert all(blend.Source(int(s)) & (blend.Source.LEXICAL | blend.Source.RECALL)
                   for s in result.sources)


def test_explanations_sum_to_the_score_across_the_ranked_head_and_the_tail(
        parts: tuple[Catalog, PairTokenizer]) -> None:
    catalog, tokenizer = parts
    engine = SearchEngine(catalog, tokenizer, Recall(), Ranker(),
                          EngineConfig(max_length=32, rank_candidates=3))
    query = " ".join(str(catalog.titles[0]).split()[:1])
    result = _search(engine, query=query, top_n=10, explain=True)
    assert result.rows.size > 3  # a ranked head of 3, then the unranked tail
    _assert_parts_sum_to_scores(result)
    assert (result.parts["relevance"][:3] > 0).all()
    assert (np.diff(result.scores) <= 0).all()


def test_a_recommendation_with_a_backfill_explains_it(parts: tuple[Catalog, PairTokenizer]
                                                      ) -> None:
    result = _search(_engine(parts, None, None), query="", top_n=5, explain=True)
    assert [blend.Source(int(s)).names() for s in result.sources] == [["popular"]] * 5
    _assert_parts_sum_to_scores(result)
    explained = json.dumps({name: float(v[0]) for name, v in result.parts.items()})
    assert "popularity" in explained


def test_without_a_sequence_model_recent_items_are_only_left_out(
        parts: tuple[Catalog, PairTokenizer]) -> None:
    catalog, _ = parts
    popular = catalog.popular(3, None)
    result = _search(_engine(parts, None, None), query="", top_n=5,
                     recent=tuple(int(r) for r in popular))
    assert result.degraded == []
    assert not set(result.rows.tolist()) & set(popular.tolist())
    assert result.rows.tolist() == catalog.popular(8, None)[3:].tolist()


def test_a_failing_sequence_model_degrades_to_popularity_or_fails_a_strict_request(
        parts: tuple[Catalog, PairTokenizer], session_model: SessionModel) -> None:
    catalog, _ = parts
    error = UpstreamTimeout("sequence gave no answer")
    engine = _engine(parts, session_model, Sequence(session_model.embeddings, error))
    recent = tuple(int(r) for r in session_model.row_of_index[[4, 6]])
    result = _search(engine, query="", top_n=5, recent=recent)
    assert result.degraded == [Dependency.SEQUENCE]
    assert result.failures == {Dependency.SEQUENCE: error}
    expected = [r for r in catalog.popular(7, None).tolist() if r not in recent][:5]
    assert result.rows.tolist() == expected
    with pytest.raises(UpstreamTimeout):
        _search(engine, query="", top_n=5, recent=recent, allow_degraded=False)


def test_recent_items_the_model_does_not_know_do_not_call_it(
        parts: tuple[Catalog, PairTokenizer], session_model: SessionModel) -> None:
    sequence = Sequence(session_model.embeddings)
    engine = _engine(parts, session_model, sequence)
    unknown = len(session_model.index_of_row) - 1
    result = _search(engine, query="", top_n=5, recent=(unknown,))
    assert sequence.sequences == [] and result.degraded == []
    assert unknown not in result.rows.tolist()
