"""The ANN index over the item embeddings: FAISS HNSW (inner product) and its recall against exact
search.

The embeddings are unit vectors, so inner product is cosine similarity and the exact nearest
items are a matrix product away; HNSW answers in a fraction of that at large catalogs, at the
price of missing a few. :func:`index_recall` measures the price on real queries (the build uses
the training queries' embeddings), and the manifest records it beside ``efSearch``.

Unlike MF factors (DESIGN.md: HNSW has poor recall on them, hence IVF with the inner-product-to-L2
reduction for the recall predictor), sentence embeddings are well spread on the sphere and HNSW
with ``efSearch`` of a few times ``k`` finds nearly all exact neighbours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np


@dataclass(frozen=True)
class IndexConfig:
    """HNSW parameters.

    Attributes:
        m: Neighbours per node (``HNSW<m>``): more is better recall, more memory.
        ef_construction: Candidate list size while building.
        ef_search: Candidate list size while searching; at least the ``k`` asked for.
    """

    m: int = 32
    ef_construction: int = 200
    ef_search: int = 128

    def __post_init__(self) -> None:
        for name in ("m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise ValueError(f"IndexConfig.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def factory(self) -> str:
        """The index in FAISS's factory notation (``HNSW32,Flat``)."""
        return f"HNSW{self.m},Flat"

    def params(self) -> dict[str, Any]:
        """The manifest's description of the index (``type``, ``m``, ``ef_construction``,
        ``ef_search``, ``metric``)."""
        return {"type": self.factory, **asdict(self), "metric": "inner_product"}


def build_index(vectors: np.ndarray, config: IndexConfig, threads: int = 1) -> faiss.Index:
    """An ``IndexHNSWFlat`` (inner product) over ``vectors`` (row i gets label i), ``efSearch`` set.

    Deterministic for a given input: built with one thread (FAISS's parallel insertion depends on
    the thread schedule); ``threads`` applies to searching afterwards.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    faiss.omp_set_num_threads(1)
    index = faiss.IndexHNSWFlat(vectors.shape[1], config.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = config.ef_construction
    index.hnsw.efSearch = config.ef_search
    index.add(vectors)
    faiss.omp_set_num_threads(max(1, threads))
    return index


def write_index(index: faiss.Index, path: Path) -> Path:
    """``faiss.write_index`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(path))
    return path


def read_index(path: Path, ef_search: int | None = None) -> faiss.Index:
    """``faiss.read_index``, with ``efSearch`` set when given (it is not stored reliably)."""
    index = faiss.read_index(str(path))
    if ef_search is not None and hasattr(index, "hnsw"):
        index.hnsw.efSearch = ef_search
    return index


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top ``k`` rows of ``vectors`` per query by inner product: ``(scores, rows)``,
    best first (ties by row)."""
    scores = np.asarray(queries, np.float32) @ np.asarray(vectors, np.float32).T
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -top), axis=1)
    rows = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(scores, rows, axis=1), rows


def index_recall(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Share of the exact top ``k`` the index returns in its top ``k`` (mean over ``queries``).

    Rows tied with the k-th exact score count as found whichever of them the index returns.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if not len(queries):
        return float("nan")
    k = min(k, index.ntotal)
    exact_scores, exact_rows = exact_top_k(vectors, queries, k)
    _, approx = index.search(queries, k)
    hits = []
    for row in range(len(queries)):
        found = approx[row][approx[row] >= 0]
        wanted = set(exact_rows[row].tolist())
        # A row tied with the exact k-th score is as good an answer as the one exact search kept.
        scores = np.asarray(vectors, np.float32)[found] @ queries[row]
        good = [i in wanted or s >= exact_scores[row, -1] - 1e-6
                for i, s in zip(found.tolist(), scores.tolist(), strict=True)]
        hits.append(sum(good) / k)
    return float(np.mean(hits))
