"""Input and output drift: reference distributions, a live window and the population stability index.

Pure: no I/O besides :meth:`DriftReference.save` / :meth:`DriftReference.load` (JSON, never pickle).

**Signals** (:data:`SIGNALS`), each a distribution over fixed bins stored in the reference:

* ``ranker_score``: the ranker's relevance (sigmoid of its logit) of every result returned after
  ranking; bins are the reference's deciles (quantile edges), so each holds a tenth of it;
* ``query_length``: query length in terms (:func:`query_terms`), bins 1, 2, 3, 4, 5, 6-7, 8+;
* ``query_terms``: every term of every query, binned as one of the reference's top-N terms or
  ``other`` (new vocabulary, typos and the long tail land there);
* ``unknown_user``: whether a row's user is anonymous or not in the catalog's user table (``known``
  / ``unknown``), over every row, search and recommendation alike.

Query signals count search rows only (a non-empty query): recommendation traffic changes the mix of
requests, not the distribution of what shoppers type.

**PSI** (population stability index) of a live distribution ``a`` against the expected ``e``, both
as shares per bin::

    PSI = sum over bins of (a_i - e_i) * ln(a_i / e_i)

A share of 0 is replaced by ``eps`` first (the logarithm is undefined there). PSI is 0 for
identical distributions, never negative, and symmetric in ``a`` and ``e`` (it is the sum of the
two Kullback-Leibler divergences). The usual reading: below 0.1 stable, 0.1 to 0.25 a moderate
shift worth a look, above 0.25 drift. A finite sample has a positive PSI even without drift,
roughly ``(bins - 1) * (1/n_live + 1/n_reference)``, hence the minimum sample count of the window.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import threading
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shopserve.text import tokens

RANKER_SCORE = "ranker_score"
QUERY_LENGTH = "query_length"
QUERY_TERMS = "query_terms"
UNKNOWN_USER = "unknown_user"
#: Every drift signal, in display order (the chart's per-signal alert thresholds use these names).
SIGNALS: tuple[str, ...] = (RANKER_SCORE, QUERY_LENGTH, QUERY_TERMS, UNKNOWN_USER)

#: Label of the catch-all bin of a categorical signal.
OTHER = "other"
KNOWN, UNKNOWN = "known", "unknown"
#: Interior edges of the query-length bins: 1, 2, 3, 4, 5, 6-7, 8+ terms.
QUERY_LENGTH_EDGES: tuple[float, ...] = (1.5, 2.5, 3.5, 4.5, 5.5, 7.5)
QUERY_LENGTH_LABELS: tuple[str, ...] = ("1", "2", "3", "4", "5", "6-7", "8+")
#: Default number of ranker-score bins (deciles) and of top query terms kept by name.
SCORE_BINS = 10
TOP_TERMS = 20
#: Default floor of a bin's share inside :func:`psi`.
EPS = 1e-4
#: PSI below this is read as stable, above :data:`DRIFT` as drift, in between as moderate.
STABLE, DRIFT = 0.1, 0.25
FORMAT_VERSION = 1

#: The terms of a normalised query: lower-case alphanumeric runs (the generator's tokens).
query_terms = tokens


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray,
        eps: float = EPS) -> float:
    """Population stability index of ``actual`` against ``expected`` (see module docstring).

    Args:
        expected: Counts or shares per bin of the reference.
        actual: Counts or shares per bin of the live sample, same bins.
        eps: Share that replaces an empty bin's 0 on either side.

    Returns:
        PSI >= 0; 0 when the two distributions are equal.

    Raises:
        ValueError: different numbers of bins, negative counts, or an empty side.
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1 or e.size == 0:
        raise ValueError(f"expected and actual need the same bins, got {e.shape} and {a.shape}")
    if (e < 0).any() or (a < 0).any() or e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("counts must be non-negative with a positive total")
    e = np.maximum(e / e.sum(), eps)
    a = np.maximum(a / a.sum(), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def status(value: float | None) -> str:
    """The usual reading of a PSI: ``stable``, ``moderate``, ``drift`` (``n/a`` for None)."""
    if value is None or math.isnan(value):
        return "n/a"
    return "stable" if value < STABLE else "moderate" if value <= DRIFT else "drift"


@dataclass(frozen=True)
class SignalReference:
    """The reference distribution of one signal over fixed bins.

    Attributes:
        labels: Display name of each bin.
        shares: Share of the reference per bin (sums to 1).
        samples: Observations the reference was computed from.
        edges: Numeric signals: the interior bin edges (``len(labels) - 1`` of them, ascending);
            value ``x`` falls into bin ``searchsorted(edges, x, side="right")``. Empty for
            categorical signals, whose values are the labels themselves (unlisted values go to
            the :data:`OTHER` bin when there is one).
    """

    labels: tuple[str, ...]
    shares: tuple[float, ...]
    samples: int
    edges: tuple[float, ...] = ()
    _index: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.shares) or not self.labels:
            raise ValueError("a signal needs one share per bin label")
        if self.edges and len(self.edges) != len(self.labels) - 1:
            raise ValueError(f"{len(self.labels)} bins need {len(self.labels) - 1} edges")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("bin edges must ascend strictly")
        self._index.update({label: i for i, label in enumerate(self.labels)})

    @property
    def numeric(self) -> bool:
        """Whether values are numbers binned by edges (else labels)."""
        return bool(self.edges)

    def bins(self, values: Iterable[Any]) -> list[int]:
        """Bin index of each value.

        Raises:
            KeyError: a categorical value with no bin and no :data:`OTHER` bin.
        """
        if self.numeric:
            # bisect over a handful of edges beats a numpy call for the few values of one request.
            return [bisect_right(self.edges, float(v)) for v in values]
        other = self._index.get(OTHER)
        out = []
        for value in values:
            index = self._index.get(str(value), other)
            if index is None:
                raise KeyError(f"value {value!r} has no bin among {self.labels}")
            out.append(index)
        return out

    @classmethod
    def from_numeric(cls, values: Sequence[float] | np.ndarray, edges: Sequence[float],
                     labels: Sequence[str] | None = None) -> SignalReference:
        """Bin numeric ``values`` by ``edges`` (interior edges, ascending)."""
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0:
            raise ValueError("no values to build a reference from")
        edges = tuple(float(e) for e in edges)
        index = np.searchsorted(np.asarray(edges), values, side="right")
        counts = np.bincount(index, minlength=len(edges) + 1)
        if labels is None:
            bounds = ["-inf", *(f"{e:.3g}" for e in edges), "inf"]
            labels = [f"[{lo},{hi})" for lo, hi in zip(bounds, bounds[1:], strict=False)]
        return cls(tuple(labels), tuple((counts / counts.sum()).tolist()), int(values.size), edges)

    @classmethod
    def from_quantiles(cls, values: Sequence[float] | np.ndarray, bins: int = SCORE_BINS
                       ) -> SignalReference:
        """Bin numeric ``values`` at their own quantiles: about ``1/bins`` of them per bin.

        Ties (e.g. saturated scores) merge edges, so there may be fewer bins than asked.
        """
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0:
            raise ValueError("no values to build a reference from")
        edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])).tolist()
        # A bin the reference leaves empty would weigh every live value in it by ln(share / eps):
        # merge it into its neighbour instead.
        while edges:
            counts = np.bincount(np.searchsorted(edges, values, side="right"),
                                 minlength=len(edges) + 1)
            empty = np.flatnonzero(counts == 0)
            if not empty.size:
                break
            del edges[max(int(empty[0]) - 1, 0)]
        return cls.from_numeric(values, edges)

    @classmethod
    def from_categories(cls, values: Iterable[str], labels: Sequence[str] | None = None,
                        top: int = TOP_TERMS) -> SignalReference:
        """Share of each category; ``labels`` fixes the bins, else the ``top`` most frequent plus
        :data:`OTHER`."""
        counts = Counter(str(v) for v in values)
        total = sum(counts.values())
        if total == 0:
            raise ValueError("no values to build a reference from")
        if labels is None:
            kept = [term for term, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]
            labels = [*kept, OTHER]
        labels = tuple(labels)
        shares = [counts.get(label, 0) / total for label in labels]
        if OTHER in labels:
            shares[labels.index(OTHER)] = sum(n for v, n in counts.items()
                                              if v not in labels or v == OTHER) / total
        return cls(labels, tuple(shares), total)


@dataclass
class DriftReference:
    """Reference distributions of every signal, recorded at package time.

    Attributes:
        signals: Signal name -> its reference.
        source: Where it came from (queries used, ranker version, settings), for humans.
        created: ISO-8601 UTC time it was recorded.
        format_version: Schema version of the JSON.
    """

    signals: dict[str, SignalReference]
    source: dict[str, Any] = field(default_factory=dict)
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "format_version": self.format_version,
            "created": self.created,
            "source": self.source,
            "signals": {
                name: {"labels": list(s.labels), "shares": list(s.shares), "samples": s.samples,
                       "edges": list(s.edges)}
                for name, s in self.signals.items()
            },
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DriftReference:
        """Parse :meth:`to_dict`'s form.

        Raises:
            ValueError: unknown format version or malformed signals.
        """
        if raw.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"drift reference format {raw.get('format_version')!r} is not "
                             f"{FORMAT_VERSION}")
        try:
            signals = {
                name: SignalReference(tuple(s["labels"]), tuple(float(x) for x in s["shares"]),
                                      int(s["samples"]), tuple(float(x) for x in s.get("edges", ())))
                for name, s in raw["signals"].items()
            }
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed drift reference: {exc}") from exc
        return cls(signals, dict(raw.get("source", {})), str(raw.get("created", "")))

    def save(self, path: Path) -> None:
        """Write as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> DriftReference:
        """Read :meth:`save`'s JSON."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def build_reference(
    queries: Sequence[str],
    users_known: Sequence[bool],
    ranker_scores: Sequence[float] | np.ndarray,
    *,
    score_bins: int = SCORE_BINS,
    top_terms: int = TOP_TERMS,
    source: Mapping[str, Any] | None = None,
) -> DriftReference:
    """The reference of every signal from a sample of traffic.

    Args:
        queries: Normalised query texts (empty ones are recommendation rows: skipped).
        users_known: Per row of ``queries``: whether its user is a known shopper.
        ranker_scores: Ranker relevance of the returned results of those rows.
        score_bins: Quantile bins of the ranker scores.
        top_terms: Query terms kept by name; the rest are :data:`OTHER`.
        source: Provenance recorded with it.
    """
    texts = [q for q in queries if q]
    terms = [query_terms(q) for q in texts]
    signals = {
        RANKER_SCORE: SignalReference.from_quantiles(ranker_scores, score_bins),
        QUERY_LENGTH: SignalReference.from_numeric([len(t) for t in terms], QUERY_LENGTH_EDGES,
                                                   QUERY_LENGTH_LABELS),
        QUERY_TERMS: SignalReference.from_categories((w for t in terms for w in t), top=top_terms),
        UNKNOWN_USER: SignalReference.from_categories(
            (KNOWN if k else UNKNOWN for k in users_known), labels=(KNOWN, UNKNOWN)),
    }
    return DriftReference(signals, dict(source or {}))


class _Ring:
    """The last ``size`` bin indices of one signal and their counts per bin."""

    __slots__ = ("buffer", "counts", "filled", "pos", "size")

    def __init__(self, size: int, bins: int) -> None:
        self.size = size
        self.buffer = [0] * size
        self.counts = [0] * bins
        self.filled = 0
        self.pos = 0

    def add(self, index: int) -> None:
        if self.filled == self.size:
            self.counts[self.buffer[self.pos]] -= 1
        else:
            self.filled += 1
        self.buffer[self.pos] = index
        self.counts[index] += 1
        self.pos = (self.pos + 1) % self.size


class DriftWindow:
    """The last ``size`` observations of every signal, compared with a reference by PSI.

    Recording costs a few microseconds per request row (bins are looked up, counts kept
    incrementally); PSI is computed only when asked (on a metrics scrape). A lock makes it safe to
    record from the event loop while a scrape reads from another thread.

    Args:
        reference: The bundle's reference distributions.
        size: Observations kept per signal (a row adds one query length, one user, each of its
            query terms and each returned result's ranker score).
        min_samples: Observations a signal needs before its PSI is reported.
        eps: Floor of a bin's share in :func:`psi`.
    """

    def __init__(self, reference: DriftReference, size: int = 2000, min_samples: int = 200,
                 eps: float = EPS) -> None:
        if size < 1 or min_samples < 1:
            raise ValueError("size and min_samples must be positive")
        self.reference = reference
        self.size = size
        self.min_samples = min_samples
        self.eps = eps
        self._rings = {name: _Ring(size, len(s.labels)) for name, s in reference.signals.items()}
        self._lock = threading.Lock()

    def observe(self, signal: str, values: Iterable[Any]) -> None:
        """Add raw values of one signal (ignored when the reference lacks the signal)."""
        ring = self._rings.get(signal)
        if ring is None:
            return
        bins = self.reference.signals[signal].bins(values)
        with self._lock:
            for index in bins:
                ring.add(index)

    def record(self, query: str, known_user: bool,
               ranker_scores: Sequence[float] | np.ndarray | None) -> None:
        """Add one request row: its normalised query (empty when recommending), whether its user is
        known, and the ranker scores of its returned results (None when it was not ranked)."""
        self.observe(UNKNOWN_USER, (KNOWN if known_user else UNKNOWN,))
        if query:
            terms = query_terms(query)
            self.observe(QUERY_LENGTH, (len(terms),))
            self.observe(QUERY_TERMS, terms)
        if ranker_scores is not None and len(ranker_scores):
            # Plain floats: iterating a numpy array yields slow numpy scalars.
            values = ranker_scores.tolist() if isinstance(ranker_scores, np.ndarray) else ranker_scores
            self.observe(RANKER_SCORE, values)

    def samples(self) -> dict[str, int]:
        """Observations in the window per signal."""
        with self._lock:
            return {name: ring.filled for name, ring in self._rings.items()}

    def counts(self, signal: str) -> list[int]:
        """Window counts per bin of one signal."""
        with self._lock:
            return list(self._rings[signal].counts)

    def psi(self) -> dict[str, float | None]:
        """PSI per signal; None for a signal with fewer than ``min_samples`` observations."""
        with self._lock:
            snapshot = {name: (ring.filled, list(ring.counts)) for name, ring in self._rings.items()}
        out: dict[str, float | None] = {}
        for name, (filled, counts) in snapshot.items():
            if filled < self.min_samples:
                out[name] = None
            else:
                out[name] = psi(self.reference.signals[name].shares, counts, self.eps)
        return out

