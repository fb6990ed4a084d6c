"""The relevance cache and the ranker's admission limit: what lets the transformer rank under load.

:class:`RelevanceCache` keeps the cross-encoder's raw score of each (query, item) pair it scored.
The score depends on the query as sent to the ranker, the item's title and the ranker's weights,
never on the shopper, so one entry serves every shopper who types the same query. Keys carry the
ranker's bundle version (from its component manifest), so scores of another ranker are never read;
rows are the catalog's rows of the engine that owns the cache (a catalog loaded again comes with a
new engine, and so a new cache). Bounded by entries, least recently used first out.

Each transformer process keeps its own cache: replicas do not share it. A shared store (Redis)
would cost a network round trip per lookup, about what a GPU ranker takes for the whole call, and
add a dependency that can fail; every replica warms on its own traffic within minutes, the head of
the query stream is hot in all of them, and routing by query (consistent hashing at the gateway)
would split the cache across replicas if the long tail ever made that worth it.

No library: ``cachetools`` is not in the serving install, and the cache needs batched look-ups and
eviction counts, both a few lines over an ``OrderedDict``.

:class:`ConcurrencyLimit` admits at most ``limit`` ranker calls at once; a call beyond it is not
queued (the queue would only push it past its budget), the search skips ranking at once.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np


@dataclass
class CacheStats:
    """Counts since the cache was created.

    Attributes:
        hits: Pairs whose score was read from the cache.
        misses: Pairs looked up and not found (sent to the ranker, unless ranking was skipped).
        evictions: Entries dropped to keep the cache within its size.
    """

    hits: int = 0
    misses: int = 0
    evictions: int = 0


class RelevanceCache:
    """Bounded LRU of the ranker's raw scores by (ranker version, query, catalog row).

    Args:
        max_entries: Most entries kept; the least recently used are evicted beyond it.
        version: The ranker's bundle version, part of every key.
    """

    def __init__(self, max_entries: int, version: str) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self.max_entries = max_entries
        self.version = version
        self.stats = CacheStats()
        self._entries: OrderedDict[tuple[str, str, int], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, query: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The cached scores of (``query``, row) for each of ``rows``.

        Returns:
            ``scores`` (float32, NaN where missing) and ``missing`` (bool), both shaped like
            ``rows``. A hit becomes the most recently used entry.
        """
        scores = np.full(rows.shape[0], np.nan, dtype=np.float32)
        missing = np.ones(rows.shape[0], dtype=bool)
        entries = self._entries
        for i, row in enumerate(rows.tolist()):
            key = (self.version, query, row)
            value = entries.get(key)
            if value is not None:
                entries.move_to_end(key)
                scores[i] = value
                missing[i] = False
        hits = int((~missing).sum())
        self.stats.hits += hits
        self.stats.misses += rows.shape[0] - hits
        return scores, missing

    def store(self, query: str, rows: np.ndarray, scores: np.ndarray) -> None:
        """Keep the ranker's ``scores`` of (``query``, row) for ``rows``, evicting the least
        recently used entries beyond ``max_entries``."""
        if rows.shape[0] != scores.shape[0]:
            raise ValueError(f"{rows.shape[0]} rows but {scores.shape[0]} scores")
        entries = self._entries
        for row, score in zip(rows.tolist(), scores.tolist(), strict=True):
            key = (self.version, query, row)
            entries[key] = score
            entries.move_to_end(key)
        overflow = len(entries) - self.max_entries
        for _ in range(max(overflow, 0)):
            entries.popitem(last=False)
        self.stats.evictions += max(overflow, 0)


class ConcurrencyLimit:
    """At most ``limit`` holders at once; 0 admits everything.

    One event loop runs the engine, so a plain counter is enough: no await between the check
    and the increment.

    Args:
        limit: Calls admitted at once; 0 for no limit.
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"limit must be 0 (none) or positive, not {limit}")
        self.limit = limit
        self.in_flight = 0
        self.rejected = 0

    def try_acquire(self) -> bool:
        """Take a slot when one is free; False (and counted) when the limit is reached."""
        if self.limit and self.in_flight >= self.limit:
            self.rejected += 1
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        """Give back a slot taken by :meth:`try_acquire`."""
        if self.in_flight <= 0:
            raise RuntimeError("release() without a matching try_acquire()")
        self.in_flight -= 1
