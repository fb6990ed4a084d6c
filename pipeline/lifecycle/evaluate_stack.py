"""Quality of the whole request path, measured through the running stack over v2.

The held-out queries (never seen by the ranker in training) are sent to the ``search`` transformer
as a shopper would send them, under several configurations of the same servers:

* ``BM25 alone``: plain BM25 only (no query rewriting, ranker off, anonymous requests, no
  popularity prior): the baseline;
* ``BM25 + query rewriting``: the same with spelling correction and mined synonyms;
* ``BM25 + MF``: rewritten BM25 blended with personalisation and popularity (ranker off);
* ``full pipeline``: BM25 and MF candidates, BERT ranker, blend;
* ``full pipeline, no personalisation``: the same with the personalisation weight at 0;
* ``full pipeline, ranker down``: the ranker process stopped, so every answer degrades.

Judgments come from the generator, over the whole catalog (not only judged pools):

* NDCG@10 with graded gains ``2**grade - 1`` (exact 3, substitute 2, complement 1) and log2
  discount (:mod:`shopserve.metrics`);
* MRR and Recall@50 on exact matches (grade 3); Recall's denominator is ``min(#exact, 50)``;
* personalised NDCG@10 for queries issued by users with history: the gain adds one for relevant
  items that the issuing user likes (:meth:`Dataset.personal_gain`), which is what personalisation
  can improve and a query-only ranker cannot.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np

from shopserve.metrics import mean_defined, mrr, ndcg_at_k, recall_at_k
from shopserve.protocol import ANONYMOUS_USER, DEGRADED, ITEM_IDS, QUERY, SEARCH_MODEL, TOP_N, USER_ID
from training.data.generator import Dataset


@dataclass(frozen=True)
class Variant:
    """One configuration of the stack to evaluate.

    Attributes:
        name: Row label.
        search_env: Transformer settings that differ from the defaults.
        anonymous: Send every query without a user.
        ranker_down: Stop the ranker before sending.
    """

    name: str
    search_env: dict[str, str] = field(default_factory=dict)
    anonymous: bool = False
    ranker_down: bool = False


#: Upstream budgets during evaluation: generous, so that only the "ranker down" row degrades.
EVALUATION_BUDGETS = {"SEARCH_RANKER_TIMEOUT_MS": "5000", "SEARCH_RECALL_TIMEOUT_MS": "5000"}

VARIANTS: tuple[Variant, ...] = (
    Variant("BM25 alone", {"SEARCH_RANKER_ENABLED": "false", "SEARCH_WEIGHT_POPULARITY": "0",
                           "SEARCH_QUERY_REWRITE": "false"}, anonymous=True),
    Variant("BM25 + query rewriting", {"SEARCH_RANKER_ENABLED": "false",
                                       "SEARCH_WEIGHT_POPULARITY": "0"}, anonymous=True),
    Variant("BM25 + MF", {"SEARCH_RANKER_ENABLED": "false"}),
    Variant("full pipeline"),
    Variant("full pipeline, no personalisation", {"SEARCH_WEIGHT_PERSONAL": "0"}),
    Variant("full pipeline, ranker down", ranker_down=True),
)


@dataclass
class Answers:
    """What the stack returned for each query."""

    rankings: list[np.ndarray]
    degraded: int
    errors: int
    latency_ms: list[float]


async def send_queries(
    url: str, texts: Sequence[str], users: Sequence[int], top_n: int = 50, concurrency: int = 4,
    timeout: float = 10.0,
) -> Answers:
    """Send one v2 request per query to ``search``; failed requests count as empty rankings."""
    rankings: list[np.ndarray] = [np.empty(0, np.int64)] * len(texts)
    latency: list[float] = []
    counts = {"degraded": 0, "errors": 0}
    gate = asyncio.Semaphore(concurrency)
    endpoint = f"{url}/v2/models/{SEARCH_MODEL}/infer"

    async def one(client: httpx.AsyncClient, i: int) -> None:
        body = {
            "id": f"eval-{i}",
            "inputs": [
                {"name": QUERY, "shape": [1], "datatype": "BYTES", "data": [texts[i]]},
                {"name": USER_ID, "shape": [1], "datatype": "INT64", "data": [int(users[i])]},
            ],
            "parameters": {TOP_N: top_n},
        }
        async with gate:
            loop = asyncio.get_running_loop()
            start = loop.time()
            response = await client.post(endpoint, json=body)
            latency.append((loop.time() - start) * 1000.0)
        if response.status_code != 200:
            counts["errors"] += 1
            return
        payload = response.json()
        if (payload.get("parameters") or {}).get(DEGRADED):
            counts["degraded"] += 1
        out = {o["name"]: o for o in payload["outputs"]}
        ids = np.asarray(out[ITEM_IDS]["data"], dtype=np.int64)
        rankings[i] = ids[ids >= 0]

    async with httpx.AsyncClient(timeout=timeout) as client:
        await asyncio.gather(*(one(client, i) for i in range(len(texts))))
    return Answers(rankings, counts["degraded"], counts["errors"], latency)


@dataclass
class Judged:
    """Metrics of one variant."""

    ndcg_at_10: float
    mrr: float
    recall_at_50: float
    ndcg_synonym: float
    ndcg_personal: float
    degraded_share: float
    errors: int
    p50_ms: float


def judge(
    dataset: Dataset, query_ids: np.ndarray, users: np.ndarray, answers: Answers
) -> Judged:
    """Score rankings against the generator's judgments over the whole catalog."""
    items = dataset.items.item_id
    kinds = dataset.queries.kind[dataset.queries.query_id.searchsorted(query_ids)]
    ndcg, rr, recall, synonym, personal = [], [], [], [], []
    for qid, user, kind, ranked in zip(query_ids, users, kinds, answers.rankings, strict=True):
        grades = dataset.grade(np.full(items.shape, qid), items).astype(np.float32)
        relevance = {int(i): float(g) for i, g in zip(items[grades > 0], grades[grades > 0],
                                                       strict=True)}
        exact = {i: 1.0 for i, g in relevance.items() if g >= 3}
        value = ndcg_at_k(ranked, relevance, 10)
        if np.isnan(value):
            continue
        ndcg.append(value)
        rr.append(mrr(ranked, exact, 10))
        # Denominator min(#exact, 50): a perfect list of 50 scores 1.
        recall.append(recall_at_k(ranked, exact, 50, capped=True))
        if kind == "synonym":
            synonym.append(value)
        if user != ANONYMOUS_USER:
            gains = dataset.personal_gain(np.full(items.shape, qid), np.full(items.shape, user),
                                          items)
            personal.append(ndcg_at_k(ranked, {int(i): float(g) for i, g in
                                               zip(items[gains > 0], gains[gains > 0],
                                                   strict=True)}, 10))

    n = max(len(answers.rankings), 1)
    return Judged(mean_defined(ndcg), mean_defined(rr), mean_defined(recall), mean_defined(synonym),
                  mean_defined(personal),
                  answers.degraded / n, answers.errors,
                  statistics.median(answers.latency_ms) if answers.latency_ms else float("nan"))


def format_table(rows: list[tuple[str, Judged]], n_queries: int, n_personal: int) -> str:
    """The evaluation table as printed."""
    head = (f"| {'pipeline':<35} | NDCG@10 |  MRR  | Recall@50 | NDCG@10 synonym | "
            f"NDCG@10 personal | degraded | p50 ms |")
    lines = [f"{n_queries} held-out queries ({n_personal} from users with history)", head,
             "|" + "-" * 37 + "|---------|-------|-----------|-----------------|"
             "------------------|----------|--------|"]
    for name, j in rows:
        lines.append(
            f"| {name:<35} | {j.ndcg_at_10:7.4f} | {j.mrr:.3f} | {j.recall_at_50:9.4f} | "
            f"{j.ndcg_synonym:15.4f} | {j.ndcg_personal:16.4f} | {j.degraded_share:7.0%} | "
            f"{j.p50_ms:6.1f} |")
    return "\n".join(lines)
