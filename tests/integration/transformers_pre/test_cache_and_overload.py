"""The relevance cache, the ranker's admission limit and quiet logs, with the real servers.

The real recall, ranker (Triton) and search servers on loopback, on the session's tiny bundle;
search with its relevance cache on and ``ranker_max_concurrency`` 1:

* a repeated query is answered from the cache: the same items and scores, no ranker call (no
  ``tokenise`` or ``rank`` stage), and the hit counter rises by the shortlist;
* concurrent searches of new queries beyond the limit answer at once, degraded with the reason
  ``overload`` (counted under that reason), none fails, and the breaker stays closed: the next
  search is ranked; a request that takes no degraded answer gets 503 instead;
* the log holds no line per request and nothing a shopper typed.

This process never imports kserve (it cannot share one with ``tritonclient.grpc``, DESIGN.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shopserve import metric_names
from shopserve.catalog_files import CatalogFiles
from shopserve.protocol import (
    ALLOW_DEGRADED,
    DEGRADED,
    DEGRADED_REASONS,
    ITEM_IDS,
    QUERY,
    SCORES,
    SEARCH_MODEL,
    STAGE_MS,
    USER_ID,
)
from tests.servers import Server, free_port, start_ranker, start_recall, start_search

pytestmark = pytest.mark.integration

#: Generous budgets: the tiny ranker on a small shared CPU must never time out here, so that every
#: degraded answer is the admission limit's doing.
RANKER_TIMEOUT_MS = 5000
#: Concurrent searches per round, against one admitted ranker call.
CONCURRENT = 8
#: The shortlist sent to the ranker (SEARCH_RANK_CANDIDATES).
RANK_CANDIDATES = 20
#: Series names (to move into shopserve.metric_names with the code's constants).
HITS = "shopserve_search_relevance_cache_hits_total"
MISSES = "shopserve_search_relevance_cache_misses_total"


@pytest.fixture(scope="module")
def queries(tiny_bundle: Path) -> list[str]:
    """Distinct queries that find items (the first words of the catalog's titles, lower case);
    each test uses its own."""
    titles = CatalogFiles.open(tiny_bundle / "catalog").items["title"].tolist()
    return list(dict.fromkeys(" ".join(str(t).lower().split()[:3]) for t in titles))


@pytest.fixture(scope="module")
def search(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    logs = tmp_path_factory.mktemp("cache-overload-logs")
    recall = start_recall(tiny_bundle, logs, free_port(), free_port())
    started = [recall]
    try:
        ranker = start_ranker(tiny_bundle, logs, free_port(), free_port())
        started.append(ranker)
        server = start_search(tiny_bundle, logs / "search.log", recall.grpc_address,
                              ranker.grpc_address, {
                                  "SEARCH_RANKER_TIMEOUT_MS": str(RANKER_TIMEOUT_MS),
                                  "SEARCH_RECALL_TIMEOUT_MS": str(RANKER_TIMEOUT_MS),
                                  "SEARCH_RANK_CANDIDATES": str(RANK_CANDIDATES),
                                  "SEARCH_RELEVANCE_CACHE_ENABLED": "true",
                                  "SEARCH_RANKER_MAX_CONCURRENCY": "1",
                                  # The ranker's admission alone: a strict request beyond the
                                  # limit is a 503, never the query encoder's late 504 (the
                                  # local Triton serves both on these 2 cores).
                                  "SEARCH_SEMANTIC_ENABLED": "false"})
        started.append(server)
        yield server
    finally:
        for child in reversed(started):
            child.stop()


def _post(server: Server, query: str, allow_degraded: bool = True) -> httpx.Response:
    body = {"inputs": [{"name": QUERY, "shape": [1], "datatype": "BYTES", "data": [query]},
                       {"name": USER_ID, "shape": [1], "datatype": "INT64", "data": [-1]}],
            "parameters": {"top_n": 5, **({} if allow_degraded else {ALLOW_DEGRADED: False})}}
    return httpx.post(f"{server.http_url}/v2/models/{SEARCH_MODEL}/infer", json=body, timeout=30)


def _answer(response: httpx.Response) -> dict[str, object]:
    assert response.status_code == 200, response.text
    body = response.json()
    outputs = {o["name"]: o["data"] for o in body["outputs"]}
    params = body["parameters"]
    return {"ids": outputs[ITEM_IDS], "scores": outputs[SCORES], "degraded": params[DEGRADED],
            "reasons": json.loads(params[DEGRADED_REASONS]),
            "stages": json.loads(params[STAGE_MS])}


def _metric(server: Server, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.http_url}/metrics").text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v
                                              for k, v in labels.items()))


def test_a_repeated_query_is_answered_from_the_cache_with_the_same_answer(
        search: Server, queries: list[str]) -> None:
    query = queries[0]
    first = _answer(_post(search, query))
    assert first["degraded"] == "" and "rank" in first["stages"]  # type: ignore[operator]
    hits, misses = _metric(search, HITS), _metric(search, MISSES)
    again = _answer(_post(search, query))
    assert again["ids"] == first["ids"] and again["scores"] == first["scores"]
    assert again["degraded"] == ""
    # No ranker call: nothing tokenised or sent.
    assert "rank" not in again["stages"] and "tokenise" not in again["stages"]  # type: ignore[operator]
    shortlist = _metric(search, HITS) - hits
    assert 0 < shortlist <= RANK_CANDIDATES
    assert _metric(search, MISSES) == misses
    assert _metric(search, "shopserve_search_relevance_cache_entries") >= shortlist


def test_searches_beyond_the_limit_degrade_with_reason_overload_and_none_fails(
        search: Server, queries: list[str]) -> None:
    before = _metric(search, metric_names.SEARCH_DEGRADED_TOTAL, stage="ranker",
                     reason="overload")
    fresh = iter(queries[1:])
    answers: list[dict[str, object]] = []
    with ThreadPoolExecutor(CONCURRENT) as pool:
        for _ in range(5):  # rounds of new (uncached) queries, until one overlapped
            batch = [next(fresh) for _ in range(CONCURRENT)]
            answers += [_answer(r) for r in pool.map(lambda q: _post(search, q), batch)]
            if any(a["degraded"] for a in answers):
                break
    shed = [a for a in answers if a["degraded"]]
    assert shed, "no search was turned away: the searches never overlapped"
    assert all(a["degraded"] == "ranker" and a["reasons"] == {"ranker": "overload"}
               for a in shed), shed
    assert all(len([i for i in a["ids"] if i >= 0]) == 5 for a in answers)  # type: ignore[attr-defined]
    assert any(not a["degraded"] for a in answers)  # the admitted ones were ranked
    assert _metric(search, metric_names.SEARCH_DEGRADED_TOTAL, stage="ranker",
                   reason="overload") == before + len(shed)
    # Shedding is no failure of the ranker: its breaker stays closed, the next search is ranked.
    assert _answer(_post(search, next(fresh)))["degraded"] == ""
    assert _metric(search, metric_names.SEARCH_DEGRADED_TOTAL, stage="ranker",
                   reason="circuit_open") == 0


def test_a_strict_request_beyond_the_limit_gets_503(search: Server, queries: list[str]) -> None:
    fresh = iter(queries[200:])
    codes: list[int] = []
    errors: list[str] = []
    with ThreadPoolExecutor(CONCURRENT) as pool:
        for _ in range(5):
            batch = [next(fresh) for _ in range(CONCURRENT)]
            for response in pool.map(lambda q: _post(search, q, allow_degraded=False), batch):
                codes.append(response.status_code)
                if response.status_code != 200:
                    errors.append(response.json()["error"])
            if 503 in codes:
                break
    assert set(codes) == {200, 503}, codes
    assert all("ranker_max_concurrency" in e for e in errors), errors


def test_the_log_has_no_line_per_request_and_nothing_a_shopper_typed(
        search: Server, queries: list[str]) -> None:
    marker = "zqxj-private-typed-words"
    assert _answer(_post(search, marker))["ids"] is not None
    text = search.log()
    assert marker not in text
    assert "/v2/models/search/infer" not in text  # uvicorn's access log
    assert "kserve.trace" not in text and "requestId:" not in text  # KServe's timing lines
    # The overload of the earlier tests: the first in full, the rest counted, not one line each.
    assert text.count("degraded: ranker:") <= 2
