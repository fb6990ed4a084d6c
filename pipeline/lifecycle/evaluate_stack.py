"""Quality of the whole request path, measured through the running stack over v2.

The held-out queries (never seen by the ranker in training) are sent to the ``search`` transformer
as a shopper would send them, under several configurations of the same servers:

* ``BM25 alone``: plain BM25 only (no query rewriting or negation reading, no semantic path,
  ranker off, anonymous requests, no popularity prior): the baseline;
* ``BM25 + query rewriting``: the same with spelling correction, mined synonyms and negations
  read (:func:`transformers_pre.rewrite.split_negation`);
* ``BM25 + rewriting + semantic``: the same with the semantic path's candidates and similarity
  (what the semantic path alone adds to lexical retrieval);
* ``BM25 + rewriting + MF``: rewritten BM25 blended with personalisation and popularity (ranker
  and semantic path off: the stack before the semantic path, without its ranker);
* ``BM25 + rewriting + MF + semantic``: the same with the semantic path;
* ``full pipeline before issue 14``: the default configuration before the semantic path, the
  cascade and negation reading (BM25 and MF candidates, BERT ranker on 50, BM25 over the
  request's best score): the figure the goals compare with, on today's queries;
* ``full pipeline, no semantic``: BM25 and MF candidates, BERT ranker, blend;
* ``full pipeline``: BM25, semantic and MF candidates, pre-ranking, BERT ranker on the best K,
  blend (the default configuration);
* ``full pipeline, no personalisation``: the same with the personalisation weight at 0;
* ``full pipeline, ranker down``: the ranker process stopped, so every answer degrades;
* ``full pipeline, K=k``: the cascade's K sweep (:data:`K_SWEEP`), from which :func:`choose_k`
  picks the default.

Every metric is printed over all classes, over the lexical classes (exact, synonym, typo) and
over the classes that need understanding (described needs, paraphrased attributes, negations,
misspellings of more than one edit), and per class.

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
from prometheus_client.parser import text_string_to_metric_families

from shopserve import metric_names
from shopserve.metrics import mean_defined, mrr, ndcg_at_k, recall_at_k
from shopserve.protocol import ANONYMOUS_USER, DEGRADED, ITEM_IDS, QUERY, SEARCH_MODEL, TOP_N, USER_ID
from training.data.generator import Dataset

try:  # the generator's query classes (the harder ones are new: read them where they exist)
    from training.data.generator import LEXICAL_KINDS, UNDERSTANDING_KINDS
except ImportError:  # pragma: no cover - a generator without the harder classes
    from training.data.generator import QUERY_KINDS as LEXICAL_KINDS

    UNDERSTANDING_KINDS: tuple[str, ...] = ()


@dataclass(frozen=True)
class Variant:
    """One configuration of the stack to evaluate.

    Attributes:
        name: Row label.
        search_env: Transformer settings that differ from the defaults.
        anonymous: Send every query without a user.
        ranker_down: Stop the ranker before sending.
        rank_candidates: The cascade's K of a row of the K sweep (None: not a sweep row).
    """

    name: str
    search_env: dict[str, str] = field(default_factory=dict)
    anonymous: bool = False
    ranker_down: bool = False
    rank_candidates: int | None = None


#: Upstream budgets during evaluation: generous, so that only the "ranker down" row degrades.
EVALUATION_BUDGETS = {"SEARCH_RANKER_TIMEOUT_MS": "5000", "SEARCH_RECALL_TIMEOUT_MS": "5000",
                      "SEARCH_SEMANTIC_TIMEOUT_MS": "5000"}

_NO_SEMANTIC = {"SEARCH_SEMANTIC_ENABLED": "false"}
_SEMANTIC = {"SEARCH_SEMANTIC_ENABLED": "true"}
_NO_RANKER = {"SEARCH_RANKER_ENABLED": "false"}
#: The full pipeline as it was before the semantic path and the cascade: BM25 and MF candidates,
#: BM25 over the request's best score, negations searched as words, the ranker on 50 candidates.
_BEFORE = {**_NO_SEMANTIC, "SEARCH_RANK_CANDIDATES": "50", "SEARCH_LEXICAL_SCALE": "best",
           "SEARCH_QUERY_NEGATION": "false"}

VARIANTS: tuple[Variant, ...] = (
    Variant("BM25 alone", {**_NO_RANKER, **_NO_SEMANTIC, "SEARCH_WEIGHT_POPULARITY": "0",
                           "SEARCH_QUERY_REWRITE": "false", "SEARCH_QUERY_NEGATION": "false"},
            anonymous=True),
    Variant("BM25 + query rewriting", {**_NO_RANKER, **_NO_SEMANTIC,
                                       "SEARCH_WEIGHT_POPULARITY": "0"}, anonymous=True),
    Variant("BM25 + rewriting + semantic", {**_NO_RANKER, **_SEMANTIC,
                                            "SEARCH_WEIGHT_POPULARITY": "0"}, anonymous=True),
    Variant("BM25 + rewriting + MF", {**_NO_RANKER, **_NO_SEMANTIC}),
    Variant("BM25 + rewriting + MF + semantic", {**_NO_RANKER, **_SEMANTIC}),
    Variant("full pipeline before issue 14", _BEFORE),
    Variant("full pipeline, no semantic", _NO_SEMANTIC),
    Variant("full pipeline", _SEMANTIC),
    Variant("full pipeline, no personalisation", {**_SEMANTIC, "SEARCH_WEIGHT_PERSONAL": "0"}),
    Variant("full pipeline, ranker down", _SEMANTIC, ranker_down=True),
)
"""The configurations of the quality table. "BM25 + rewriting + MF" is what the stack answered
before the semantic path; "full pipeline" is the default configuration."""

#: The cascade's K values of the sweep (rows ``full pipeline, K=k``): the ranker scores the best K
#: of the candidate union by pre-ranking score.
K_SWEEP: tuple[int, ...] = (10, 20, 30, 50)

#: The default K is the smallest of the sweep whose NDCG@10 over all classes is within this of
#: the largest K's.
K_TOLERANCE = 0.005


def sweep_variants(ks: Sequence[int] = K_SWEEP) -> tuple[Variant, ...]:
    """The rows of the K sweep: the full pipeline with ``SEARCH_RANK_CANDIDATES`` = K."""
    return tuple(Variant(f"full pipeline, K={k}", {**_SEMANTIC, "SEARCH_RANK_CANDIDATES": str(k)},
                         rank_candidates=k) for k in ks)


def choose_k(ndcg_by_k: dict[int, float], tolerance: float = K_TOLERANCE) -> int:
    """The smallest K whose NDCG@10 is within ``tolerance`` of the largest K's."""
    largest = max(ndcg_by_k)
    return min(k for k, v in ndcg_by_k.items() if v >= ndcg_by_k[largest] - tolerance)


@dataclass
class Answers:
    """What the stack returned for each query."""

    rankings: list[np.ndarray]
    degraded: int
    errors: int
    latency_ms: list[float]
    ranker_pairs: float = float("nan")
    """(query, title) pairs the ranker scored per query (from the transformer's metrics)."""


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
        before = await _ranker_pairs(client, url)
        await asyncio.gather(*(one(client, i) for i in range(len(texts))))
        pairs = (await _ranker_pairs(client, url) - before) / max(len(texts), 1)
    return Answers(rankings, counts["degraded"], counts["errors"], latency, pairs)


async def _ranker_pairs(client: httpx.AsyncClient, url: str) -> float:
    """Pairs sent to the ranker so far by the transformer at ``url`` (its batch-size histogram's
    sum), NaN when its metrics cannot be read."""
    try:
        response = await client.get(f"{url}/metrics")
        response.raise_for_status()
    except httpx.HTTPError:
        return float("nan")
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == f"{metric_names.SEARCH_RANKER_BATCH_SIZE}_sum":
                return float(sample.value)
    return 0.0


@dataclass
class Judged:
    """Metrics of one variant.

    Attributes:
        by_kind: NDCG@10 and Recall@50 per query class (the generator's query kinds).
    """

    ndcg_at_10: float
    mrr: float
    recall_at_50: float
    ndcg_personal: float
    degraded_share: float
    errors: int
    p50_ms: float
    ranker_pairs: float = float("nan")
    by_kind: dict[str, tuple[float, float]] = field(default_factory=dict)
    lexical: tuple[float, float] = (float("nan"), float("nan"))
    understanding: tuple[float, float] = (float("nan"), float("nan"))


def judge(
    dataset: Dataset, query_ids: np.ndarray, users: np.ndarray, answers: Answers
) -> Judged:
    """Score rankings against the generator's judgments over the whole catalog."""
    items = dataset.items.item_id
    kinds = dataset.queries.kind[dataset.queries.query_id.searchsorted(query_ids)]
    ndcg, rr, recall, personal = [], [], [], []
    per_kind: dict[str, tuple[list[float], list[float]]] = {}
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
        of_kind = per_kind.setdefault(str(kind), ([], []))
        of_kind[0].append(value)
        of_kind[1].append(recall[-1])
        if user != ANONYMOUS_USER:
            gains = dataset.personal_gain(np.full(items.shape, qid), np.full(items.shape, user),
                                          items)
            personal.append(ndcg_at_k(ranked, {int(i): float(g) for i, g in
                                               zip(items[gains > 0], gains[gains > 0],
                                                   strict=True)}, 10))

    def pooled(group: Sequence[str]) -> tuple[float, float]:
        values = [per_kind[k] for k in group if k in per_kind]
        return (mean_defined([v for n, _ in values for v in n]),
                mean_defined([v for _, r in values for v in r]))

    n = max(len(answers.rankings), 1)
    return Judged(mean_defined(ndcg), mean_defined(rr), mean_defined(recall),
                  mean_defined(personal), answers.degraded / n, answers.errors,
                  statistics.median(answers.latency_ms) if answers.latency_ms else float("nan"),
                  answers.ranker_pairs,
                  {k: (mean_defined(v[0]), mean_defined(v[1])) for k, v in per_kind.items()},
                  pooled(LEXICAL_KINDS), pooled(UNDERSTANDING_KINDS))


def format_table(rows: list[tuple[str, Judged]], n_queries: int, n_personal: int) -> str:
    """The quality table as printed: all classes, the lexical and the understanding classes."""
    head = (f"| {'pipeline':<35} | NDCG@10 |  MRR  | Recall@50 | NDCG@10 lexical | "
            f"NDCG@10 understanding | Recall@50 understanding | NDCG@10 personal | degraded | p50 ms |")
    lines = [f"{n_queries} held-out queries ({n_personal} from users with history); lexical "
             f"classes: {', '.join(LEXICAL_KINDS)}; understanding classes: "
             f"{', '.join(UNDERSTANDING_KINDS)}", head,
             "|" + "-" * 37 + "|---------|-------|-----------|-----------------|"
             "-----------------------|-------------------------|------------------|----------|"
             "--------|"]
    for name, j in rows:
        lines.append(
            f"| {name:<35} | {j.ndcg_at_10:7.4f} | {j.mrr:.3f} | {j.recall_at_50:9.4f} | "
            f"{j.lexical[0]:15.4f} | {j.understanding[0]:21.4f} | {j.understanding[1]:23.4f} | "
            f"{j.ndcg_personal:16.4f} | "
            f"{j.degraded_share:7.0%} | {j.p50_ms:6.1f} |")
    return "\n".join(lines)


def format_classes(rows: list[tuple[str, Judged]], counts: dict[str, int]) -> str:
    """NDCG@10 / Recall@50 of each variant per query class (``n`` queries each)."""
    kinds = [k for k in (*LEXICAL_KINDS, *UNDERSTANDING_KINDS) if k in counts]
    head = "| " + f"{'pipeline':<35}" + " | " + " | ".join(
        f"{k} (n={counts[k]})".center(17) for k in kinds) + " |"
    lines = ["NDCG@10 / Recall@50 per query class", head,
             "|" + "-" * 37 + "|" + "|".join("-" * 19 for _ in kinds) + "|"]
    for name, j in rows:
        cells = []
        for k in kinds:
            n10, r50 = j.by_kind.get(k, (float("nan"), float("nan")))
            cells.append(f"{n10:.4f} / {r50:.4f}".center(17))
        lines.append(f"| {name:<35} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_sweep(rows: list[tuple[int, Judged]], chosen: int) -> str:
    """The cascade's K sweep: quality and speed per K, and the K chosen by :func:`choose_k`."""
    head = ("|   K | NDCG@10 | NDCG@10 lexical | NDCG@10 understanding | Recall@50 | "
            "pairs scored | p50 ms |")
    lines = [f"Cascade: the ranker scores the best K of the candidate union by pre-ranking score; "
             f"default K = {chosen} (the smallest within {K_TOLERANCE} NDCG@10 of K = "
             f"{max(k for k, _ in rows)} on all classes)", head,
             "|-----|---------|-----------------|-----------------------|-----------|"
             "--------------|--------|"]
    for k, j in rows:
        mark = " *" if k == chosen else "  "
        lines.append(f"| {k:3d} | {j.ndcg_at_10:7.4f} | {j.lexical[0]:15.4f} | "
                     f"{j.understanding[0]:21.4f} | {j.recall_at_50:9.4f} | "
                     f"{j.ranker_pairs:12.1f} | "
                     f"{j.p50_ms:6.1f} |{mark}")
    return "\n".join(lines)
