"""Release metrics: one spelling, one typed reader.

**Spelling.** A metric at a cut-off is ``<metric>_at_<k>`` (:func:`at_k`): ``ndcg_at_10``,
``recall_at_20``, ``reference_ndcg_at_10``, and per query kind ``ndcg_at_10_synonym``. It is a
Python identifier and a plain JSON key, and it is what recall's manifests always wrote. Component
manifests key their ``metrics`` this way. ``bundle.json`` keys the release's key numbers
``<component>.<name>`` (``ranker.ndcg_at_10``): the fields of :class:`ReleaseMetrics` with their
first ``_`` turned into a dot (:data:`KEY_METRICS`).

**Legacy.** Bundles written before spelled the cut-off ``@<k>``. Every reader here turns ``@<k>``
in a key into ``_at_<k>`` (:func:`current_key`), so those bundles read as new ones. Keys that
changed:

| written in                           | legacy key                    | read as                          |
| ------------------------------------ | ----------------------------- | -------------------------------- |
| ``ranker/manifest.json`` ``metrics`` | ``ndcg@10``                   | ``ndcg_at_10``                   |
|                                      | ``reference_ndcg@10``         | ``reference_ndcg_at_10``         |
| ``ranker/manifest.json``             | ``ndcg@10``                   | ``ndcg_at_10``                   |
| ``metrics.evaluation[]`` (each row)  | ``ndcg@10_<kind>``            | ``ndcg_at_10_<kind>``            |
| ``bundle.json`` ``metrics``          | ``ranker.ndcg@10``            | ``ranker.ndcg_at_10``            |
|                                      | ``ranker.reference_ndcg@10``  | ``ranker.reference_ndcg_at_10``  |
|                                      | ``ranker.bm25_ndcg@10``       | ``ranker.bm25_ndcg_at_10``       |
|                                      | ``recall.ndcg@10``            | ``recall.ndcg_at_10``            |
|                                      | ``recall.recall@20``          | ``recall.recall_at_20``          |
|                                      | ``recall.popularity_ndcg@10`` | ``recall.popularity_ndcg_at_10`` |

``recall/manifest.json`` (``metrics.model`` and ``metrics.popularity``: ``recall_at_20``,
``ndcg_at_10``, ``hit_rate_at_10``, ``users``) always had the current spelling.

Where the numbers come from:

* ranker: ``metrics.ndcg_at_10`` (the packaged variant on held-out queries, graded NDCG),
  ``metrics.reference_ndcg_at_10`` (the fine-tuned fp32 6-layer model), ``metrics.ms_per_request_p50``,
  the ``ndcg_at_10`` of the ``bm25`` row of ``metrics.evaluation``, ``params.variant`` and
  ``params.layers``;
* recall: ``metrics.model`` (MF on held-out interactions, binary gains) and
  ``metrics.popularity`` (the popularity baseline on the same users);
* sequence: ``metrics.ndcg_at_10``, ``metrics.hit_rate_at_10``, ``metrics.mrr`` (the sequence
  model on each evaluated shopper's last item, full ranking, binary gain) and
  ``metrics.popularity_ndcg_at_10`` (the popularity baseline on the same items);
* catalog: ``data.items`` and ``data.queries.total``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from shopserve.artifacts import (
    CATALOG_COMPONENT,
    MANIFEST,
    RANKER_COMPONENT,
    RECALL_COMPONENT,
    SEQUENCE_COMPONENT,
    Manifest,
    read_manifest,
)

_LEGACY_CUTOFF = re.compile(r"@(\d+)")


def at_k(metric: str, k: int) -> str:
    """The one spelling of a metric at a cut-off: ``at_k("ndcg", 10) == "ndcg_at_10"``."""
    return f"{metric}_at_{k}"


#: The key of NDCG@10 in a manifest's ``metrics`` (and of each ranker evaluation row).
NDCG_AT_10 = at_k("ndcg", 10)
#: The ranker's reference model (fp32, all layers) NDCG@10.
REFERENCE_NDCG_AT_10 = f"reference_{NDCG_AT_10}"
#: Median ms per request of the packaged ranker variant.
MS_PER_REQUEST_P50 = "ms_per_request_p50"
#: Share of evaluated shoppers whose held-out item is in the top 10 (the sequence manifest).
HIT_RATE_AT_10 = at_k("hit_rate", 10)
#: Mean reciprocal rank of the held-out item, no cut-off (the sequence manifest).
MRR = "mrr"
#: Prefix of the popularity baseline's metrics in the sequence manifest (``popularity_ndcg_at_10``).
POPULARITY_PREFIX = "popularity_"


def current_key(key: str) -> str:
    """A metric key in the current spelling (``ndcg@10_typo`` -> ``ndcg_at_10_typo``)."""
    return _LEGACY_CUTOFF.sub(r"_at_\1", key)


def current_keys(value: Any) -> Any:
    """``value`` with every mapping key, at any depth (lists too), in the current spelling."""
    if isinstance(value, Mapping):
        return {current_key(k) if isinstance(k, str) else k: current_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [current_keys(v) for v in value]
    return value


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class ReleaseMetrics:
    """The key numbers of a release; ``None`` where a bundle does not record one.

    Attributes:
        recall_ndcg_at_10: MF NDCG@10 on held-out interactions (binary gains, log2 discount).
        recall_recall_at_20: MF Recall@20 (denominator ``min(|held out|, 20)``).
        recall_popularity_ndcg_at_10: The popularity baseline's NDCG@10 on the same users.
        ranker_variant: The packaged ranker variant (``onnx-int8``, ``pruned-4l-int8``, ...).
        ranker_layers: Its transformer layers.
        ranker_ndcg_at_10: Its NDCG@10 on held-out candidate lists (gain ``2**grade - 1``).
        ranker_reference_ndcg_at_10: The fine-tuned fp32 model's NDCG@10 on the same lists.
        ranker_ms_p50: Median ms per request (one candidate list) of the packaged variant.
        ranker_bm25_ndcg_at_10: BM25's NDCG@10 on the same lists.
        sequence_ndcg_at_10: The sequence model's NDCG@10 on each evaluated shopper's last item
            (full ranking over the catalog, earlier items excluded, binary gain, log2 discount).
        sequence_hit_rate_at_10: Its HR@10 on the same items.
        sequence_mrr: Its MRR on the same items.
        sequence_popularity_ndcg_at_10: The popularity baseline's NDCG@10 on the same items.
        catalog_items: Items in the catalog.
        catalog_queries: Judged queries.
    """

    recall_ndcg_at_10: float | None = None
    recall_recall_at_20: float | None = None
    recall_popularity_ndcg_at_10: float | None = None
    ranker_variant: str | None = None
    ranker_layers: int | None = None
    ranker_ndcg_at_10: float | None = None
    ranker_reference_ndcg_at_10: float | None = None
    ranker_ms_p50: float | None = None
    ranker_bm25_ndcg_at_10: float | None = None
    sequence_ndcg_at_10: float | None = None
    sequence_hit_rate_at_10: float | None = None
    sequence_mrr: float | None = None
    sequence_popularity_ndcg_at_10: float | None = None
    catalog_items: int | None = None
    catalog_queries: int | None = None

    # ------------------------------------------------------------------------------ readers

    @staticmethod
    def recall_fields(manifest: Manifest) -> dict[str, Any]:
        """The recall component's fields, from its manifest."""
        metrics = current_keys(manifest.metrics)
        model, popularity = _mapping(metrics.get("model")), _mapping(metrics.get("popularity"))
        return {
            "recall_ndcg_at_10": _float(model.get(NDCG_AT_10)),
            "recall_recall_at_20": _float(model.get(at_k("recall", 20))),
            "recall_popularity_ndcg_at_10": _float(popularity.get(NDCG_AT_10)),
        }

    @staticmethod
    def ranker_fields(manifest: Manifest) -> dict[str, Any]:
        """The ranker component's fields, from its manifest (legacy spellings read too)."""
        metrics = current_keys(manifest.metrics)
        rows = metrics.get("evaluation")
        bm25 = next((r for r in rows if isinstance(r, Mapping) and r.get("name") == "bm25"), {}) \
            if isinstance(rows, list) else {}
        return {
            "ranker_variant": _str(manifest.params.get("variant")),
            "ranker_layers": _int(manifest.params.get("layers")),
            "ranker_ndcg_at_10": _float(metrics.get(NDCG_AT_10)),
            "ranker_reference_ndcg_at_10": _float(metrics.get(REFERENCE_NDCG_AT_10)),
            "ranker_ms_p50": _float(metrics.get(MS_PER_REQUEST_P50)),
            "ranker_bm25_ndcg_at_10": _float(bm25.get(NDCG_AT_10)),
        }

    @staticmethod
    def sequence_fields(manifest: Manifest) -> dict[str, Any]:
        """The sequence component's fields, from its manifest."""
        metrics = current_keys(manifest.metrics)
        return {
            "sequence_ndcg_at_10": _float(metrics.get(NDCG_AT_10)),
            "sequence_hit_rate_at_10": _float(metrics.get(HIT_RATE_AT_10)),
            "sequence_mrr": _float(metrics.get(MRR)),
            "sequence_popularity_ndcg_at_10": _float(metrics.get(POPULARITY_PREFIX + NDCG_AT_10)),
        }

    @staticmethod
    def catalog_fields(manifest: Manifest) -> dict[str, Any]:
        """The catalog component's fields (counts from its data summary)."""
        return {
            "catalog_items": _int(manifest.data.get("items")),
            "catalog_queries": _int(_mapping(manifest.data.get("queries")).get("total")),
        }

    @classmethod
    def from_manifests(
        cls,
        *,
        catalog: Manifest | None = None,
        recall: Manifest | None = None,
        ranker: Manifest | None = None,
        sequence: Manifest | None = None,
    ) -> ReleaseMetrics:
        """The key numbers recorded by the given component manifests (others stay ``None``)."""
        values: dict[str, Any] = {}
        if catalog is not None:
            values.update(cls.catalog_fields(catalog))
        if recall is not None:
            values.update(cls.recall_fields(recall))
        if ranker is not None:
            values.update(cls.ranker_fields(ranker))
        if sequence is not None:
            values.update(cls.sequence_fields(sequence))
        return cls(**values)

    @classmethod
    def from_bundle(cls, bundle: Path) -> ReleaseMetrics:
        """The key numbers of a bundle folder, from the manifests of the components it has.

        Raises:
            BundleError: a component's ``manifest.json`` exists but cannot be read.
        """
        found = {}
        for name in (CATALOG_COMPONENT, RECALL_COMPONENT, RANKER_COMPONENT, SEQUENCE_COMPONENT):
            folder = Path(bundle) / name
            if (folder / MANIFEST).is_file():
                found[name] = read_manifest(folder)
        return cls.from_manifests(catalog=found.get(CATALOG_COMPONENT),
                                  recall=found.get(RECALL_COMPONENT),
                                  ranker=found.get(RANKER_COMPONENT),
                                  sequence=found.get(SEQUENCE_COMPONENT))

    @classmethod
    def from_key_metrics(cls, metrics: Mapping[str, Any]) -> ReleaseMetrics:
        """Read back :meth:`key_metrics` (``bundle.json``'s ``metrics``; legacy keys too)."""
        current = current_keys(metrics)
        readers = {"ranker_variant": _str, "ranker_layers": _int, "catalog_items": _int,
                   "catalog_queries": _int}
        return cls(**{name: readers.get(name, _float)(current.get(key))
                      for name, key in KEY_METRICS.items()})

    # ------------------------------------------------------------------------------ writer

    def key_metrics(self) -> dict[str, Any]:
        """``bundle.json``'s ``metrics``: ``{"ranker.ndcg_at_10": 0.91, ...}``, ``None`` left out."""
        return {key: getattr(self, name) for name, key in KEY_METRICS.items()
                if getattr(self, name) is not None}


#: Field of :class:`ReleaseMetrics` -> its key in ``bundle.json`` (``ranker_ndcg_at_10`` ->
#: ``ranker.ndcg_at_10``), in field order.
KEY_METRICS: dict[str, str] = {f.name: f.name.replace("_", ".", 1) for f in fields(ReleaseMetrics)}
