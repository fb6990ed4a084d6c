"""The traffic mix of a load test, drawn from a bundle's generated query log.

Each call is a v2 ``search`` request for one shopper:

* a search (``query`` set) with probability ``1 - recommend_share``, or a recommendation (empty
  query). A search's query is, with probability ``tail_share``, the long tail: a query composed
  fresh from the catalog's vocabulary that the stream has not sent before (:mod:`loadtest.tail`);
  otherwise the head: a query drawn from the generated log by its traffic share (the generator
  draws those shares from a Zipf law, so a few head queries dominate, as in a real shop);
* an anonymous visitor (``user_id`` -1) with probability ``anonymous_share``, else a known shopper
  drawn in proportion to their activity;
* with probability ``filter_share``, a filter: the query's own category (so answers stay
  non-empty), a price ceiling at that category's upper quartile, or both.

A :class:`TrafficStream` is one seeded stream of calls: the same seed gives the same calls, and
the composed queries of one stream never repeat. With the default ``tail_share`` of 0.4, at least a
third of the search requests of a run carry a query that occurs exactly once in it (the composed
ones, less the rare text two worker processes both compose, plus the logged queries drawn once).

Names, tensor names and parameters come from :mod:`shopserve.protocol`. No locust here.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.tail import QueryComposer
from shopserve.artifacts import CATALOG_COMPONENT
from shopserve.catalog_files import CatalogFiles
from shopserve.protocol import ANONYMOUS_USER, CATEGORY, MAX_PRICE, QUERY, SEARCH_MODEL, TOP_N, USER_ID

#: The v2 inference path of the search model.
INFER_PATH = f"/v2/models/{SEARCH_MODEL}/infer"
SEARCH_KIND = "search"
RECOMMEND_KIND = "recommend"


@dataclass(frozen=True)
class MixConfig:
    """Shares of the traffic mix.

    Attributes:
        recommend_share: Share of requests with an empty query (recommendations).
        anonymous_share: Share of requests from anonymous visitors.
        filter_share: Share of requests with a category and/or price filter.
        top_n: Results asked for.
        tail_share: Share of search requests whose query is composed fresh from the catalog's
            vocabulary (the long tail, each new to its stream); the rest are drawn from the
            logged queries by traffic share. The default 0.4 makes at least a third of a run's
            searches queries that occur once in it. A mix built without a catalog
            (:class:`TrafficMix` from bare lists) has nothing to compose from and draws every
            search from its queries.
    """

    recommend_share: float = 0.2
    anonymous_share: float = 0.3
    filter_share: float = 0.15
    top_n: int = 10
    tail_share: float = 0.4

    def __post_init__(self) -> None:
        for name in ("recommend_share", "anonymous_share", "filter_share", "tail_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.top_n < 1:
            raise ValueError("top_n must be >= 1")


@dataclass(frozen=True)
class Call:
    """One request of the mix.

    Attributes:
        kind: ``search`` or ``recommend`` (the locust request name).
        body: The v2 JSON request body.
        user_id: The shopper, -1 for anonymous.
        filtered: Whether a filter parameter is set.
        composed: Whether the query was composed for the tail (not drawn from the log).
    """

    kind: str
    body: dict[str, Any]
    user_id: int
    filtered: bool
    composed: bool = False

    @property
    def query(self) -> str:
        """The query text (empty for a recommendation)."""
        return str(self.body["inputs"][0]["data"][0])


class TrafficMix:
    """Samples :class:`Call` s from a generated dataset's queries, users and prices.

    Args:
        queries: Query texts.
        query_shares: Traffic share of each query (need not sum to 1).
        query_categories: The category each query targets.
        users: Known shopper ids.
        user_weights: Relative activity of each shopper.
        price_ceilings: Upper-quartile price per category.
        config: Shares of the mix.
        composer: Writes the tail's queries; None: no tail (every search from ``queries``).
    """

    def __init__(self, queries: list[str], query_shares: list[float], query_categories: list[str],
                 users: list[int], user_weights: list[float], price_ceilings: dict[str, float],
                 config: MixConfig | None = None, composer: QueryComposer | None = None) -> None:
        if not queries or len(queries) != len(query_shares) or len(queries) != len(query_categories):
            raise ValueError("queries, their shares and categories must be non-empty and equally long")
        self.config = config or MixConfig()
        self.queries = queries
        self.query_categories = query_categories
        self._query_cum = list(accumulate(query_shares))
        self.users = users or [ANONYMOUS_USER]
        self._user_cum = list(accumulate(user_weights or [1.0]))
        self.price_ceilings = price_ceilings
        self.categories = sorted(price_ceilings)
        self.composer = composer

    @property
    def tail_share(self) -> float:
        """The share of searches composed for the tail: the configured one, 0 without a composer."""
        return self.config.tail_share if self.composer is not None else 0.0

    @classmethod
    def from_files(cls, files: CatalogFiles, config: MixConfig | None = None) -> TrafficMix:
        """The mix of a bundle's ``catalog`` component: its logged queries and shoppers."""
        q = files.queries
        items = files.items
        user_ids, counts = np.unique(files.events().user_ids, return_counts=True)
        ceilings = {
            str(c): float(np.percentile(items["price"][items["category"] == c], 75))
            for c in np.unique(items["category"])
        }
        return cls(q["text"].tolist(), q["frequency"].astype(float).tolist(),
                   q["category"].tolist(), user_ids.tolist(), counts.astype(float).tolist(),
                   ceilings, config, QueryComposer.from_files(files))

    @classmethod
    def from_bundle(cls, bundle: Path | str, config: MixConfig | None = None) -> TrafficMix:
        """The mix of a bundle's ``catalog`` component (its generated query log)."""
        return cls.from_files(CatalogFiles.open(Path(bundle) / CATALOG_COMPONENT), config)

    def stream(self, seed: int | str = 0, *keys: int | str) -> TrafficStream:
        """A seeded stream of this mix's calls; ``keys`` (worker, user, ...) make streams apart."""
        return TrafficStream(self, stream_rng(seed, *keys))

    def sample(self, rng: random.Random, seen: set[str] | None = None) -> Call:
        """One request of the mix.

        Args:
            rng: The random stream.
            seen: Composed queries already sent by this stream; a tail query is new to it (and
                added). None: tail queries are only kept apart from the logged ones.
        """
        c = self.config
        recommend = rng.random() < c.recommend_share
        composed = False
        if recommend:
            query, category = "", self.categories[rng.randrange(len(self.categories))]
        elif self.composer is not None and rng.random() < c.tail_share:
            fresh = self.composer.compose(rng, seen)
            query, category, composed = fresh.text, fresh.category, True
        else:
            row = rng.choices(range(len(self.queries)), cum_weights=self._query_cum)[0]
            query, category = self.queries[row], self.query_categories[row]
        anonymous = rng.random() < c.anonymous_share
        user = (ANONYMOUS_USER if anonymous
                else self.users[rng.choices(range(len(self.users)), cum_weights=self._user_cum)[0]])
        parameters: dict[str, Any] = {TOP_N: c.top_n}
        filtered = rng.random() < c.filter_share
        if filtered:
            which = rng.randrange(3)
            if which in (0, 2):
                parameters[CATEGORY] = category
            if which in (1, 2):
                parameters[MAX_PRICE] = round(self.price_ceilings[category], 2)
        body = {
            "inputs": [
                {"name": QUERY, "shape": [1], "datatype": "BYTES", "data": [query]},
                {"name": USER_ID, "shape": [1], "datatype": "INT64", "data": [user]},
            ],
            "parameters": parameters,
        }
        return Call(RECOMMEND_KIND if recommend else SEARCH_KIND, body, user, filtered, composed)


def stream_rng(seed: int | str, *keys: int | str) -> random.Random:
    """A random stream determined by ``seed`` and ``keys`` alone (not by ``PYTHONHASHSEED``)."""
    material = "/".join(str(part) for part in (seed, *keys)).encode()
    return random.Random(int.from_bytes(hashlib.sha256(material).digest()[:8], "big"))


@dataclass
class TrafficStream:
    """One seeded stream of calls; its tail queries never repeat.

    Attributes:
        mix: The traffic mix.
        rng: The stream's random state.
        seen: Tail queries sent so far.
    """

    mix: TrafficMix
    rng: random.Random
    seen: set[str] = field(default_factory=set)

    def next(self) -> Call:
        """The stream's next call."""
        return self.mix.sample(self.rng, self.seen)
