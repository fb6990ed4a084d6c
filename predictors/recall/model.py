"""``mf-recall``: the KServe adapter over :class:`~predictors.recall.recommender.Recommender`.

Thin on purpose: it decodes and validates the v2 request, calls the pure recommender off the event
loop (numpy and FAISS release the GIL), and encodes the response. Errors are the typed errors of
:mod:`shopserve.errors`, so REST and gRPC answer with the same status.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
from kserve.protocol.infer_type import InferRequest, InferResponse
from prometheus_client import Counter, Histogram

from predictors.recall.index import IndexConfig
from predictors.recall.recommender import Recommender
from shopserve import metric_names
from shopserve.errors import BundleError, InvalidInput
from shopserve.protocol import (
    EXCLUDE_SEEN,
    ITEM_ID,
    RECALL,
    TOP_K,
    USER_ID,
    parameter,
)
from shopserve.serving import MODEL_INFO, ContractModel, decode_inputs, encode_response, request_parameters
from shopserve.settings import RecallSettings

log = logging.getLogger(__name__)

REQUESTS = Counter(
    metric_names.RECALL_REQUESTS_TOTAL, "Recall requests answered, by mode.", ["mode"]
)
FALLBACKS = Counter(
    metric_names.RECALL_POPULARITY_FALLBACK_TOTAL,
    "Rows answered with the popularity list because the user or item is unknown.",
    ["mode"],
)
SEARCH_SECONDS = Histogram(
    metric_names.RECALL_SEARCH_SECONDS, "Top-k search time per request.", ["index"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)
BATCH_SIZE = Histogram(
    metric_names.RECALL_BATCH_SIZE, "Users or items per request.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


def index_config(settings: RecallSettings) -> IndexConfig:
    """The top-k index the settings ask for."""
    return IndexConfig(
        kind=settings.index,
        m=settings.hnsw_m,
        ef_construction=settings.hnsw_ef_construction,
        ef_search=settings.hnsw_ef_search,
        nlist=settings.ivf_nlist,
        nprobe=settings.ivf_nprobe,
        mips_to_l2=settings.mips_to_l2,
        threads=settings.search_threads,
    )


class RecallModel(ContractModel):
    """The MF recall predictor as a KServe model."""

    def __init__(self, settings: RecallSettings) -> None:
        super().__init__(RECALL, settings.model_name)
        self.settings = settings
        self.recommender: Recommender | None = None

    def load(self) -> bool:
        """Load and verify the bundle; a corrupt bundle raises instead of serving."""
        try:
            self.recommender = Recommender.load(self.settings.bundle_dir, index_config(self.settings))
        except (BundleError, OSError, KeyError, ValueError) as exc:
            raise BundleError(f"cannot serve recall bundle {self.settings.bundle_dir}: {exc}") from exc
        manifest = self.recommender.manifest
        MODEL_INFO.labels("recall", self.name, manifest.version if manifest else "unknown",
                          self.settings.index).set(1)
        log.info("loaded recall bundle %s: %d users, %d items, index %s",
                 manifest.version if manifest else "?", len(self.recommender.users),
                 self.recommender.n_items, self.settings.index)
        self.ready = True
        return self.ready

    async def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        """Answer one v2 request: top-k items per user (or per item)."""
        payload = self.v2_request(payload, self.recommender is not None)
        inputs = decode_inputs(payload, self.contract)
        params = request_parameters(payload)
        top_k = parameter(params, TOP_K, int, self.settings.top_k, 1, self.settings.max_top_k)
        exclude_seen = parameter(params, EXCLUDE_SEEN, bool, True)
        mode, ids = self._query(inputs)
        recommender = self.recommender
        start = time.perf_counter()
        if mode == USER_ID:
            job = lambda: recommender.recommend(ids, top_k, exclude_seen)  # noqa: E731
            unknown = int((recommender.users.index(ids) < 0).sum())
        else:
            job = lambda: recommender.similar_items(ids, top_k)  # noqa: E731
            unknown = int((recommender.items.index(ids) < 0).sum())
        item_ids, scores = await asyncio.get_running_loop().run_in_executor(None, job)
        SEARCH_SECONDS.labels(self.settings.index).observe(time.perf_counter() - start)
        REQUESTS.labels(mode).inc()
        BATCH_SIZE.observe(ids.shape[0])
        if unknown:
            FALLBACKS.labels(mode).inc(unknown)
        return encode_response(payload, self.contract, {"item_ids": item_ids, "scores": scores})

    def _query(self, inputs: dict[str, np.ndarray]) -> tuple[str, np.ndarray]:
        given = [name for name in (USER_ID, ITEM_ID) if name in inputs]
        if not given:
            raise InvalidInput(f"missing input '{USER_ID}' (or '{ITEM_ID}' for similar items)")
        if len(given) == 2:
            raise InvalidInput(f"give either '{USER_ID}' or '{ITEM_ID}', not both")
        name = given[0]
        ids = inputs[name].astype(np.int64, copy=False)
        if ids.shape[0] == 0:
            raise InvalidInput(f"input '{name}': empty batch")
        if ids.shape[0] > self.settings.max_batch:
            raise InvalidInput(
                f"input '{name}': batch of {ids.shape[0]} exceeds the limit {self.settings.max_batch}"
            )
        return name, ids

