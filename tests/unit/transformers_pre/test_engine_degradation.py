"""How the search engine works around a failing dependency, and when it fails instead.

The engine runs on the tiny bundle's real catalog and tokenizer; the two upstreams are clients
that raise the errors :class:`transformers_pre.upstream.Upstream` raises (the integration tests in
``tests/integration/transformers_pre/test_degradation.py`` cause them with real servers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shopserve.artifacts import CATALOG_COMPONENT, RANKER_COMPONENT, RANKER_TOKENIZER_DIR
from shopserve.errors import (
    CircuitOpen,
    InferenceFailed,
    ShopserveError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from shopserve.text import PairTokenizer
from transformers_pre.catalog import Catalog
from transformers_pre.engine import (
    DegradationReason,
    Dependency,
    EngineConfig,
    SearchEngine,
    SearchRequest,
)


class Failing:
    """An upstream client whose every call raises ``error``."""

    def __init__(self, name: str, error: ShopserveError) -> None:
        self.name = name
        self.error = error
        self.calls = 0

    async def infer(self, inputs: Mapping[str, np.ndarray],
                    parameters: Mapping[str, Any] | None = None,
                    request_id: str | None = None) -> dict[str, np.ndarray]:
        self.calls += 1
        raise self.error


@pytest.fixture(scope="module")
def parts(tiny_bundle: Path) -> tuple[Catalog, PairTokenizer]:
    catalog = Catalog.load(tiny_bundle / CATALOG_COMPONENT)
    tokenizer = PairTokenizer.from_dir(tiny_bundle / RANKER_COMPONENT / RANKER_TOKENIZER_DIR)
    return catalog, tokenizer


def _engine(parts: tuple[Catalog, PairTokenizer], recall: ShopserveError,
            ranker: ShopserveError) -> SearchEngine:
    catalog, tokenizer = parts
    return SearchEngine(catalog, tokenizer, Failing(Dependency.RECALL, recall),
                        Failing(Dependency.RANKER, ranker), EngineConfig(max_length=32))


def _query(catalog: Catalog) -> str:
    return " ".join(str(catalog.titles[0]).split()[:2])


def _known_user(catalog: Catalog) -> int:
    return int(catalog.users.ids[0])


@pytest.mark.parametrize(("error", "reason"), [
    (UpstreamTimeout("ranker gave no answer"), DegradationReason.TIMEOUT),
    (UpstreamUnavailable("ranker failed: UNAVAILABLE"), DegradationReason.UNAVAILABLE),
    (CircuitOpen("ranker skipped: circuit open"), DegradationReason.CIRCUIT_OPEN),
    (InferenceFailed("something else"), DegradationReason.UNAVAILABLE),
])
def test_each_error_has_its_reason(error: ShopserveError, reason: DegradationReason) -> None:
    assert DegradationReason.of(error) is reason


def test_a_failing_ranker_and_recall_degrade_the_answer_with_each_error(
        parts: tuple[Catalog, PairTokenizer]) -> None:
    catalog, _ = parts
    timeout, refused = UpstreamTimeout("ranker late"), UpstreamUnavailable("recall refused")
    engine = _engine(parts, recall=refused, ranker=timeout)
    result = asyncio.run(engine.search(SearchRequest(_query(catalog), _known_user(catalog),
                                                     top_n=5)))
    assert result.degraded == [Dependency.RECALL, Dependency.RANKER]
    assert result.failures == {Dependency.RECALL: refused, Dependency.RANKER: timeout}
    assert 0 < result.rows.size <= 5  # BM25's answer


@pytest.mark.parametrize("error", [UpstreamTimeout("ranker late"), CircuitOpen("ranker skipped")])
def test_a_request_that_allows_no_degradation_fails_with_the_rankers_error(
        parts: tuple[Catalog, PairTokenizer], error: ShopserveError) -> None:
    catalog, _ = parts
    engine = _engine(parts, recall=UpstreamUnavailable("unused"), ranker=error)
    request = SearchRequest(_query(catalog), top_n=5, allow_degraded=False)
    with pytest.raises(type(error)) as info:
        asyncio.run(engine.search(request))
    assert info.value is error


def test_a_recommendation_that_allows_no_degradation_fails_when_recall_does(
        parts: tuple[Catalog, PairTokenizer]) -> None:
    catalog, _ = parts
    engine = _engine(parts, recall=UpstreamUnavailable("recall refused"),
                     ranker=UpstreamTimeout("unused"))
    with pytest.raises(UpstreamUnavailable, match="recall refused"):
        asyncio.run(engine.search(SearchRequest("", _known_user(catalog), allow_degraded=False)))
    # Anonymous: recall is never asked, so nothing can fail.
    result = asyncio.run(engine.search(SearchRequest("", top_n=5, allow_degraded=False)))
    assert result.degraded == [] and result.rows.size == 5
    assert engine.recall.calls == 1  # type: ignore[attr-defined]
