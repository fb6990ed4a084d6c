"""Record a bundle's drift reference: the ``drift`` component the search transformer compares with.

:func:`record_reference` is the package step's call (``build_demo_bundle`` makes it last, and
``shopserve monitor reference --bundle DIR`` adds a reference to an existing bundle). It needs the
bundle's ``catalog`` (the query log), ``ranker`` (ONNX graph and tokenizer) and ``recall``
components, and writes ``<bundle>/drift/reference.json`` with its own ``manifest.json``.

Why a component of its own, not a file of ``catalog``: the reference depends on two components
(the query log of ``catalog`` and the scores of ``ranker``), so it belongs to neither; it can be
re-recorded (a new ranker, an older bundle) without changing another component's checksums or
version; ``bundles verify`` checks it like the others; and the transformer already mounts the
bundle root, so no chart change is needed to ship it.

How it is computed, so that the live window sees the same thing when nothing drifted:

* the query signals and the known-user share come from ``samples`` rows drawn from the query log
  by each query's traffic share (the same law ``loadtest.traffic`` draws from);
* the ranker scores are those of the results the transformer would return: queries drawn from
  the whole log by traffic share, as live traffic repeats them (training queries included: the
  ranker scores those more confidently, and traffic sends them too), run through the
  transformer's own :class:`~transformers_pre.engine.SearchEngine` in process, with the ranker's
  CPU graph in ONNX Runtime and the recall model in place of their servers, at the default
  search settings.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from predictors.ranker.triton_repo import cpu_graph
from predictors.recall.index import IndexConfig
from predictors.recall.recommender import Recommender
from shopserve.artifacts import (
    CATALOG_COMPONENT,
    DRIFT_COMPONENT,
    DRIFT_REFERENCE_FILE,
    MAX_SEQUENCE_LENGTH,
    RANKER_COMPONENT,
    RANKER_TOKENIZER_DIR,
    RECALL_COMPONENT,
    Manifest,
    load_component,
    write_manifest,
)
from shopserve.catalog_files import CatalogFiles
from shopserve.drift import SCORE_BINS, TOP_TERMS, build_reference
from shopserve.protocol import (
    EXCLUDE_SEEN,
    ITEM_IDS,
    SCORE,
    SCORES,
    TOP_K,
    USER_ID,
)
from shopserve.settings import SearchSettings
from shopserve.text import PairTokenizer, normalise_query
from training.ranker.optimise import OrtScorer
from transformers_pre.catalog import Catalog
from transformers_pre.engine import EngineConfig, SearchEngine, SearchRequest

log = logging.getLogger(__name__)


class _LocalRanker:
    """The ranker's CPU graph in ONNX Runtime, answering like the Triton model."""

    name = "ranker"

    def __init__(self, path: Path, threads: int) -> None:
        self.scorer = OrtScorer(path, threads)

    async def infer(self, inputs: Mapping[str, np.ndarray], parameters: Any = None,
                    request_id: str | None = None) -> dict[str, np.ndarray]:
        return {SCORE: self.scorer(dict(inputs)).reshape(-1, 1)}


class _LocalRecall:
    """The recall model in process, answering like the ``mf-recall`` server."""

    name = "recall"

    def __init__(self, recommender: Recommender) -> None:
        self.recommender = recommender

    async def infer(self, inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any] | None = None,
                    request_id: str | None = None) -> dict[str, np.ndarray]:
        params = dict(parameters or {})
        ids, scores = self.recommender.recommend(inputs[USER_ID], int(params[TOP_K]),
                                                 bool(params.get(EXCLUDE_SEEN, True)))
        return {ITEM_IDS: ids, SCORES: scores}


def _draw(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    p = np.asarray(weights, dtype=np.float64)
    p = p / p.sum() if p.sum() > 0 else np.full(p.shape, 1.0 / p.size)
    return rng.choice(p.size, size=n, replace=True, p=p)


def record_reference(
    bundle: Path,
    *,
    version: str | None = None,
    samples: int = 5000,
    score_queries: int = 400,
    score_bins: int = SCORE_BINS,
    top_terms: int = TOP_TERMS,
    settings: SearchSettings | None = None,
    seed: int = 0,
    threads: int = 2,
) -> Manifest:
    """Compute the drift reference of ``bundle`` and write it as its ``drift`` component.

    Args:
        bundle: Bundle root with ``catalog``, ``ranker`` and ``recall`` components.
        version: Version of the component (default: the catalog's version).
        samples: Query-log rows drawn by traffic share for the query and user signals.
        score_queries: Held-out queries drawn by traffic share for the ranker scores (each
            distinct (query, user) runs once; its scores count as often as it was drawn).
        score_bins: Quantile bins of the ranker scores.
        top_terms: Query terms kept by name (the rest: ``other``).
        settings: Search settings the engine runs with (default: the defaults, as deployed).
        seed: Seed of the draws.
        threads: ONNX Runtime threads.

    Returns:
        The ``drift`` component's manifest.

    Raises:
        BundleError: a component the reference needs is missing or corrupt.
    """
    bundle = Path(bundle)
    settings = settings or SearchSettings()
    ranker_manifest = load_component(bundle / RANKER_COMPONENT, RANKER_COMPONENT)
    # Loaded as serving loads it (synonyms included): the reference must see what serving returns.
    catalog = Catalog.load(bundle / CATALOG_COMPONENT)  # reads its files once
    catalog_manifest = catalog.manifest
    assert catalog_manifest is not None  # Catalog.load always sets it
    queries = CatalogFiles.open(bundle / CATALOG_COMPONENT).queries
    rng = np.random.default_rng(seed)

    # Query and user signals: the query log as traffic draws it.
    rows = _draw(queries["frequency"], samples, rng)
    texts = [normalise_query(str(t)) for t in queries["text"][rows].tolist()]
    known = (catalog.users.index(queries["user_id"][rows]) >= 0).tolist()

    # Ranker scores: the query log as traffic draws it, through the transformer's engine. Live
    # traffic repeats queries the ranker was trained on (it scores those more confidently), so
    # the reference draws from the whole log, as traffic does, not from the held-out split.
    drawn = Counter(_draw(queries["frequency"], score_queries, rng).tolist())
    onnx_file = cpu_graph(bundle / RANKER_COMPONENT).onnx_file
    # Read as the transformer reads it (tokenizers alone), so the pairs are the ones it sends.
    tokenizer = PairTokenizer.from_dir(bundle / RANKER_COMPONENT / RANKER_TOKENIZER_DIR)
    engine = SearchEngine(
        catalog, tokenizer,
        _LocalRecall(Recommender.load(bundle / RECALL_COMPONENT, IndexConfig(kind="exact"))),
        _LocalRanker(onnx_file, threads),
        # As the transformer builds it: the reference must see what serving returns.
        EngineConfig.from_settings(settings, int(ranker_manifest.params[MAX_SEQUENCE_LENGTH]),
                                   ranker_enabled=True),
    )

    async def scores() -> list[float]:
        out: list[float] = []
        for row, count in sorted(drawn.items()):
            request = SearchRequest(query=normalise_query(str(queries["text"][row])),
                                    user_id=int(queries["user_id"][row]), top_n=settings.default_top_n)
            result = await engine.search(request)
            if result.relevance is not None:
                out.extend(result.relevance.astype(float).tolist() * count)
        return out

    ranker_scores = asyncio.run(scores())
    if not ranker_scores:
        raise ValueError("no query returned ranked results; cannot record ranker scores")
    source = {
        "catalog_version": catalog_manifest.version,
        "ranker_version": ranker_manifest.version,
        "ranker_variant": ranker_manifest.params.get("variant"),
        "ranker_graph": onnx_file.name,
        "query_rows": samples,
        "score_queries": score_queries,
        "distinct_score_queries": len(drawn),
        "top_n": settings.default_top_n,
        "seed": seed,
    }
    reference = build_reference(texts, known, ranker_scores, score_bins=score_bins,
                                top_terms=top_terms, source=source)
    folder = bundle / DRIFT_COMPONENT
    folder.mkdir(parents=True, exist_ok=True)
    reference.save(folder / DRIFT_REFERENCE_FILE)
    manifest = write_manifest(
        folder, DRIFT_COMPONENT, version or catalog_manifest.version,
        data={k: source[k] for k in ("query_rows", "score_queries", "distinct_score_queries",
                                     )},
        params={"score_bins": score_bins, "top_terms": top_terms, "seed": seed,
                "signals": {name: len(s.labels) for name, s in reference.signals.items()}},
        metrics={"ranker_score_mean": float(np.mean(ranker_scores)),
                 "unknown_user_share": reference.signals["unknown_user"].shares[1]},
    )
    log.info("recorded drift reference %s in %s", manifest.version, folder)
    return manifest
