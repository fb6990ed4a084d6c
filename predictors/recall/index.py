"""Exact and approximate top-k inner-product indexes over the MF item factors.

Every index answers the same question: for each query (user factor) the ``k`` item rows with the
largest inner product, best first, minus the items that query must not get (already seen). Indexes
return item ROW indices; the predictor maps rows to external item ids.

Result contract, shared by all kinds:

* ``indices`` int64 ``[B, k]`` and ``scores`` float32 ``[B, k]``, sorted by descending score; among
  equal scores the exact index puts the lower row first.
* When fewer than ``k`` items are eligible (``k`` larger than the catalog, or too many excluded, or
  an approximate index that found fewer), the tail is padded with index ``-1`` and score ``-inf``.
  Callers drop ``indices < 0``.
* Scores are the inner products ``query . item`` in float32 (for the L2-reduced FAISS variants they
  are recovered from the L2 distance, equal to the exact product up to float32 rounding).

Kinds (:class:`IndexConfig`):

* ``exact``: brute force. At batch 1 it is one matrix-vector product over the whole item matrix,
  which is bound by memory bandwidth (sharded over the cores, see :class:`ExactIndex`); the top-k
  selection is made cheap by a group-maximum threshold (see :func:`topk_rows`) so that the matvec
  dominates. Larger batches use a BLAS gemm.
* ``hnsw``: ``faiss.IndexHNSWFlat`` (``M``, ``efConstruction``, ``efSearch``).
* ``ivf``: ``faiss.IndexIVFFlat`` (``nlist``, ``nprobe``).

Both FAISS kinds can either search the inner product directly (``METRIC_INNER_PRODUCT``) or use the
standard reduction of maximum inner product search to L2 search (``mips_to_l2=True``): every item
gets one extra coordinate ``sqrt(max_norm^2 - |x|^2)`` so that all items have the same norm, the
query gets ``0``, and the nearest item in L2 is then the one with the largest inner product. Which
one is better depends on the data, so ``bench/recall_index.py`` measures both. On MF-like clustered
factors (norms growing with popularity) it measured: HNSW on the inner product plateaus (recall@100
about 0.8 at 100k items, 0.7 at 1M) however large ``efSearch`` is; the L2-reduced HNSW keeps
improving with ``efSearch`` (0.97 at 100k, ef=1024) but at 1M reached only 0.87 at ef=2048 (about
4 ms a query) after an 8-minute build; IVF works well: on 1M items with 4096 lists, ``nprobe=32``
reaches 0.96 on the inner product and 0.99 L2-reduced (whose lists are more balanced, so it is
also faster) in 0.1-0.2 ms. The L2-reduced IVF is the recommended ANN kind for these factors.

Threads. FAISS parallelises a search over the queries of a batch with OpenMP; a single query always
runs on one thread. ``omp_set_num_threads`` is per calling thread in libgomp (a new Python thread
starts from the process default), so the index sets it at the start of every search from
``IndexConfig.threads``. The FAISS default is 1: the server answers many small concurrent
requests, and on a 2-core machine eight concurrent requests each opening a 2-thread OpenMP team
oversubscribe the cores and spin-wait, which costs tail latency without helping batch-1 latency.
Offline batch jobs (evaluating every user) should pass ``threads`` equal to the core count.
The exact index shards a batch-1 query over its own small pool (``ExactIndex(threads=...)``); its
batch gemm uses numpy's BLAS, whose thread count is process-wide (``OPENBLAS_NUM_THREADS`` or
threadpoolctl at start-up) and is deliberately not changed per call because that is not
thread-safe.

Exclusion in FAISS: each query over-fetches ``k + |exclude[i]|`` results (rounded up to a power of
two so queries share one FAISS call) and drops the excluded rows, which is exact with respect to the
approximate search because at most ``|exclude[i]|`` fetched rows can be dropped. Queries that
exclude more than ``IndexConfig.max_overfetch`` rows are searched one by one with an ``IDSelector``
instead, so a heavy user cannot blow up the fetch size. A query's result never depends on the other
queries in its batch.

Persistence never pickles: ``index.json`` (kind, sizes, the L2-reduction norm) plus either
``items.npz`` (exact) or ``index.faiss`` (``faiss.write_index``).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import faiss
import numpy as np

from shopserve.artifacts import load_npz, save_npz

IndexKind = Literal["exact", "hnsw", "ivf"]
#: Rows a query must not get: a CSR-like object (``indptr``/``indices``: :class:`RowSets`, a scipy
#: sparse matrix or array), a list of integer arrays, or None.
Exclusion = Any

META_FILE = "index.json"
ITEMS_FILE = "items.npz"
FAISS_FILE = "index.faiss"

#: Fewest item rows per shard of a batch-1 exact query.
MIN_SHARD_ROWS = 16_384

#: Upper bound on the bytes of one chunk of the exact score matrix ``[rows, n_items]`` float32.
EXACT_CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class IndexConfig:
    """Which index to build and how to search it.

    Attributes:
        kind: ``exact`` (brute force), ``hnsw`` or ``ivf`` (FAISS).
        m: HNSW graph degree ``M`` (build time).
        ef_construction: HNSW candidate list size while building.
        ef_search: HNSW candidate list size while searching; the effective value is
            ``max(ef_search, fetch size)``. Changeable at load time without a rebuild.
        nlist: IVF number of inverted lists (build time).
        nprobe: IVF lists visited per query. Changeable at load time without a rebuild.
        mips_to_l2: Reduce inner-product search to L2 search by one extra dimension (FAISS only).
        threads: Threads one search call may use; None for the kind's default: the exact index
            shards a batch-1 query over every core (lowest latency), FAISS runs 1 OpenMP thread
            per call (a batch-1 FAISS query cannot use more; see the module docstring).
        max_overfetch: Largest exclusion list handled by over-fetching; longer ones are searched
            one query at a time with an ``IDSelector``.
        train_size: Most items sampled to train the IVF coarse quantiser.
        seed: Seed of the IVF training sample and k-means.
    """

    kind: IndexKind = "exact"
    m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    nlist: int = 1024
    nprobe: int = 32
    mips_to_l2: bool = False
    threads: int | None = None
    max_overfetch: int = 1024
    train_size: int = 131_072
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("exact", "hnsw", "ivf"):
            raise ValueError(f"kind must be exact, hnsw or ivf, got {self.kind!r}")
        for name in ("m", "ef_construction", "ef_search", "nlist", "nprobe", "threads",
                     "train_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_overfetch < 0:
            raise ValueError(f"max_overfetch must be >= 0, got {self.max_overfetch}")

    def build_key(self) -> str:
        """A short name of the build-time parameters (for caches), e.g. ``hnsw-M32-efc80-l2``."""
        if self.kind == "exact":
            return "exact"
        body = (f"M{self.m}-efc{self.ef_construction}" if self.kind == "hnsw"
                else f"nlist{self.nlist}-train{self.train_size}-seed{self.seed}")
        return f"{self.kind}-{body}-{'l2' if self.mips_to_l2 else 'ip'}"


@runtime_checkable
class TopKIndex(Protocol):
    """The contract every top-k inner-product index meets (see the module docstring)."""

    @property
    def size(self) -> int:
        """Number of items (rows) indexed."""
        ...

    @property
    def dim(self) -> int:
        """Dimension of the item and query vectors."""
        ...

    def search(
        self, queries: np.ndarray, k: int, exclude: Exclusion = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item rows by inner product for each query.

        Args:
            queries: float32 ``[B, d]`` (a ``[d]`` vector is taken as one query).
            k: Results per query, ``>= 1``.
            exclude: Item rows query ``i`` must not get: row ``i`` of a CSR matrix ``[B, n]``
                (its column indices) or ``exclude[i]`` of a list of integer arrays; None for none.

        Returns:
            ``(indices, scores)``: int64 ``[B, k]`` item rows and float32 ``[B, k]`` inner
            products, by descending score, padded with ``-1`` / ``-inf``.

        Raises:
            ValueError: On a wrong shape, ``k < 1`` or an excluded row outside ``[0, n)``.
        """
        ...

    def save(self, folder: Path) -> None:
        """Write the index into ``folder`` (created if missing), without pickle."""
        ...


# --------------------------------------------------------------------------- shared helpers


def _as_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    q = np.asarray(queries)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"queries must have shape [B, {dim}], got {np.shape(queries)}")
    return np.ascontiguousarray(q, dtype=np.float32)


def _check_k(k: int) -> int:
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def exclusion_csr(exclude: Exclusion, n_queries: int, n_items: int
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """Normalise an exclusion argument to CSR ``(indptr, indices)`` arrays.

    Args:
        exclude: CSR matrix ``[B, n]``, list of ``B`` integer arrays, or None.
        n_queries: ``B``.
        n_items: ``n``; every excluded row must lie in ``[0, n)``.

    Returns:
        ``(indptr int64 [B+1], indices int64)``, or None when nothing is excluded.

    Raises:
        ValueError: On a length mismatch or an out-of-range row.
    """
    if exclude is None:
        return None
    if hasattr(exclude, "tocsr"):  # any scipy sparse format, without importing scipy here
        exclude = exclude.tocsr()
    if hasattr(exclude, "indptr") and hasattr(exclude, "indices"):
        indptr = np.asarray(exclude.indptr).astype(np.int64, copy=False)
        indices = np.asarray(exclude.indices).astype(np.int64, copy=False)
        if indptr.shape[0] - 1 != n_queries:
            raise ValueError(f"exclude has {indptr.shape[0] - 1} rows for {n_queries} queries")
    else:
        rows = list(exclude)
        if len(rows) != n_queries:
            raise ValueError(f"exclude has {len(rows)} entries for {n_queries} queries")
        arrays = [np.asarray(r, dtype=np.int64).reshape(-1) for r in rows]
        indptr = np.zeros(n_queries + 1, dtype=np.int64)
        np.cumsum([a.size for a in arrays], out=indptr[1:])
        indices = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
    if indices.size == 0:
        return None
    if indices.min() < 0 or indices.max() >= n_items:
        raise ValueError(f"exclude holds item rows outside [0, {n_items})")
    return indptr, indices


def _padded(indices: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad ``[B, m<k]`` results to ``[B, k]`` with -1 / -inf."""
    b, m = indices.shape
    if m >= k:
        return indices[:, :k], scores[:, :k]
    out_i = np.full((b, k), -1, dtype=np.int64)
    out_s = np.full((b, k), -np.inf, dtype=np.float32)
    out_i[:, :m] = indices
    out_s[:, :m] = scores
    return out_i, out_s


def _group_size(n: int, k: int) -> int:
    """Elements per group for the group-maximum threshold, or 0 to select without it.

    At least ``8 k`` groups keep the selected groups few; at most 64 elements a group keep the
    gathered candidates (about ``k x`` group size) few. Below 8 the trick does not pay.
    """
    target = n // (8 * k)
    if target < 8:
        return 0
    return min(64, 1 << (target.bit_length() - 1))


def _topk_1d(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of one score row: ``(columns, scores)`` of at most ``k`` non ``-inf`` entries."""
    n = s.size
    kk = min(k, n)
    size = _group_size(n, kk)
    if size:
        g = n // size
        main = g * size
        # Group j holds columns j, j + g, j + 2g, ...: a max over axis 0 of a [size, g] view
        # is one vectorised streaming pass.
        maxima = s[:main].reshape(size, g).max(axis=0)
        t = np.partition(maxima, g - kk)[g - kk]
        if t > -np.inf:
            groups = np.flatnonzero(maxima >= t)
            if groups.size <= 4 * kk:  # else many ties at t: the plain path is cheaper
                cols = (groups[None, :] + np.arange(0, main, g)[:, None]).reshape(-1)
                if main < n:
                    cols = np.concatenate([cols, np.arange(main, n)])
                vals = s[cols]
                keep = vals >= t
                cand, cand_s = cols[keep], vals[keep]
                order = np.lexsort((cand, -cand_s))[:kk]
                return cand[order], cand_s[order]
    kth = np.partition(s, n - kk)[n - kk] if kk < n else s.min()
    cand = np.flatnonzero((s >= kth) & (s > -np.inf))
    cand_s = s[cand]
    order = np.lexsort((cand, -cand_s))[:kk]
    return cand[order], cand_s[order]


def topk_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row of a score matrix, best first, ties by lower column.

    The threshold trick: split a row into ``G`` groups (group ``j`` holds columns ``j, j + G,
    j + 2G, ...``, so one vectorised ``max`` over a ``[group size, G]`` view finds every group's
    maximum in one streaming pass). The k-th largest group maximum ``t`` is a lower bound of the
    row's k-th largest score (k groups each hold an element ``>= t``), so the top k all lie in the
    groups whose maximum is ``>= t`` (plus the few tail columns that fit no group): a few ``k``
    groups, gathered, filtered by ``>= t`` and sorted by (score descending, column). Every entry
    tied with the k-th score is among them, so ties resolve by the lower column. One pass over the
    row instead of ``argpartition``'s several: several times cheaper. Rows with many ties at ``t``
    (e.g. a mostly excluded catalog) take a plain ``partition`` path with the same result.
    ``-inf`` scores (excluded items) are never selected; they leave -1 / ``-inf`` padding.

    Args:
        scores: float32 ``[B, n]``; not modified.
        k: Results per row, ``>= 1``.

    Returns:
        ``(indices int64 [B, k], scores float32 [B, k])`` padded with -1 / -inf.
    """
    b = scores.shape[0]
    out_i = np.full((b, k), -1, dtype=np.int64)
    out_s = np.full((b, k), -np.inf, dtype=np.float32)
    for row in range(b):  # ~30 us of Python per row: small beside the scoring of a row
        cols, vals = _topk_1d(scores[row], k)
        out_i[row, : cols.size] = cols
        out_s[row, : cols.size] = vals
    return out_i, out_s


def _write_meta(folder: Path, meta: dict[str, object]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- exact


class _Progress:
    """Counts finished shards of one query; the caller waits for the last one."""

    def __init__(self, total: int) -> None:
        self._left = total
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._error: BaseException | None = None

    def fail(self, exc: BaseException) -> None:
        self._error = exc

    def finish(self) -> None:
        with self._lock:
            self._left -= 1
            if self._left == 0:
                self._done.set()

    def wait(self) -> None:
        self._done.wait()
        if self._error is not None:
            raise self._error


class ExactIndex:
    """Brute-force inner-product top-k.

    At batch 1 the scores are one matrix-vector product over the whole item matrix, bound by
    memory bandwidth. It is computed with FAISS's single-threaded SIMD kernel
    (``fvec_inner_products_ny``, which releases the GIL) over ``threads`` contiguous shards of the
    items: the calling thread scores one shard and a small pool owned by the index the others. Not
    with numpy's multi-threaded BLAS gemv: it is as fast alone, but eight concurrent callers make
    OpenBLAS's threads fight (measured: 3-10x fewer queries per second than one thread each), and
    its thread count is process-wide. Larger batches use a BLAS gemm (compute-bound; each item row
    is read once for the whole chunk of queries).

    Args:
        item_vectors: ``[n, d]`` item factors; kept as one C-contiguous float32 array (copied
            only if it is not one already).
        threads: Shards per batch-1 query: the number of cores for the lowest latency when
            requests are few; 1 to score in the calling thread only, the best throughput when
            many requests run concurrently. None: the cores this process may use.
    """

    kind: IndexKind = "exact"

    def __init__(self, item_vectors: np.ndarray, threads: int | None = None) -> None:
        items = np.ascontiguousarray(item_vectors, dtype=np.float32)
        if items.ndim != 2 or items.shape[0] == 0:
            raise ValueError(f"item_vectors must be a non-empty [n, d] matrix, got {items.shape}")
        self.items = items
        cores = len(os.sched_getaffinity(0))
        # Tiny shards cost more in hand-off (tens of microseconds) than they save.
        self.threads = max(1, min(threads or cores, items.shape[0] // MIN_SHARD_ROWS))
        # A few shards per thread balance the load when one core is busy with something else.
        n_shards = max(1, min(4 * self.threads, items.shape[0] // MIN_SHARD_ROWS))
        bounds = np.linspace(0, items.shape[0], n_shards + 1).astype(np.int64)
        self._shards = list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))
        self._pool = (ThreadPoolExecutor(self.threads - 1, thread_name_prefix="exact-index")
                      if self.threads > 1 else None)

    @property
    def size(self) -> int:
        """Number of items."""
        return int(self.items.shape[0])

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self.items.shape[1])

    def _score_shard(self, out: np.ndarray, q: np.ndarray, lo: int, hi: int) -> None:
        faiss.fvec_inner_products_ny(faiss.swig_ptr(out[lo:hi]), faiss.swig_ptr(q),
                                     faiss.swig_ptr(self.items[lo:hi]), self.dim, hi - lo)

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """All inner products ``[B, n]`` (float32): sharded matvec at batch 1, a gemm otherwise."""
        q = _as_queries(queries, self.dim)
        if q.shape[0] > 1:
            return q @ self.items.T
        out = np.empty(self.size, dtype=np.float32)
        if self._pool is None:
            self._score_shard(out, q[0], 0, self.size)
            return out[None, :]
        # Work claiming: the caller and threads-1 helpers take shards from one counter until none
        # is left. Idle, a helper scores half the items; when concurrent requests keep the pool
        # busy, a helper starts late, finds nothing left and each caller has scored its own
        # query alone -- throughput of one thread per request, without queueing behind others.
        claim = itertools.count()
        progress = _Progress(len(self._shards))

        def work() -> None:
            while (i := next(claim)) < len(self._shards):
                try:
                    self._score_shard(out, q[0], *self._shards[i])
                except BaseException as exc:  # noqa: B036 - handed to the caller below
                    progress.fail(exc)
                finally:
                    progress.finish()

        for _ in range(self.threads - 1):
            self._pool.submit(work)
        work()
        progress.wait()
        return out[None, :]

    def search(
        self, queries: np.ndarray, k: int, exclude: Exclusion = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k; see :meth:`TopKIndex.search`."""
        q = _as_queries(queries, self.dim)
        k = _check_k(k)
        b, n = q.shape[0], self.size
        excl = exclusion_csr(exclude, b, n)
        chunk = max(1, EXACT_CHUNK_BYTES // (4 * n))
        out_i = np.empty((b, k), dtype=np.int64)
        out_s = np.empty((b, k), dtype=np.float32)
        for lo in range(0, b, chunk):
            hi = min(b, lo + chunk)
            s = self.scores(q[lo:hi])
            if excl is not None:
                indptr, indices = excl
                start, stop = indptr[lo], indptr[hi]
                if stop > start:
                    rows = np.repeat(np.arange(hi - lo), np.diff(indptr[lo: hi + 1]))
                    s[rows, indices[start:stop]] = -np.inf
            out_i[lo:hi], out_s[lo:hi] = topk_rows(s, k)
        return out_i, out_s

    def save(self, folder: Path) -> None:
        """Write ``items.npz`` and ``index.json`` into ``folder``."""
        folder = Path(folder)
        _write_meta(folder, {"kind": "exact", "dim": self.dim, "size": self.size})
        save_npz(folder / ITEMS_FILE, items=self.items)


# --------------------------------------------------------------------------- faiss


def _augment(items: np.ndarray) -> tuple[np.ndarray, float]:
    """MIPS -> L2: append ``sqrt(M^2 - |x|^2)`` so every item has norm ``M``."""
    norms_sq = np.einsum("ij,ij->i", items, items, dtype=np.float64)
    max_sq = float(norms_sq.max())
    extra = np.sqrt(np.maximum(max_sq - norms_sq, 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.hstack([items, extra[:, None]])), max_sq


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


class FaissIndex:
    """Approximate inner-product top-k over a FAISS HNSW or IVF index.

    Build it with :func:`build_index`; the constructor wraps an already built FAISS index.

    Args:
        index: A built ``faiss.IndexHNSWFlat`` or ``faiss.IndexIVFFlat``.
        config: The config it was built with; its search-time fields (``ef_search``, ``nprobe``,
            ``threads``, ``max_overfetch``) are applied here.
        dim: Dimension of the (un-augmented) item vectors.
        mips_norm_sq: The squared maximum item norm when ``config.mips_to_l2``, else None.
    """

    def __init__(self, index: faiss.Index, config: IndexConfig, dim: int,
                 mips_norm_sq: float | None = None) -> None:
        if config.kind not in ("hnsw", "ivf"):
            raise ValueError(f"FaissIndex needs kind hnsw or ivf, got {config.kind!r}")
        if config.mips_to_l2 != (mips_norm_sq is not None):
            raise ValueError("mips_norm_sq must be given exactly when config.mips_to_l2")
        self.index = index
        self.config = config
        self.kind: IndexKind = config.kind
        self._dim = dim
        self.mips_norm_sq = mips_norm_sq
        # Every search passes these explicitly, so wrappers with different settings may share one
        # FAISS index; the index's own defaults are set too, for whoever saves and reloads it.
        self._params: faiss.SearchParameters
        if config.kind == "hnsw":
            faiss.downcast_index(index).hnsw.efSearch = config.ef_search
            self._params = faiss.SearchParametersHNSW(efSearch=config.ef_search)
        else:
            faiss.extract_index_ivf(index).nprobe = config.nprobe
            self._params = faiss.SearchParametersIVF(nprobe=config.nprobe)

    @property
    def size(self) -> int:
        """Number of items."""
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        """Vector dimension (without the L2-reduction coordinate)."""
        return self._dim

    def _faiss_query(self, q: np.ndarray) -> np.ndarray:
        if self.mips_norm_sq is None:
            return q
        return np.ascontiguousarray(np.hstack([q, np.zeros((q.shape[0], 1), np.float32)]))

    def _raw_search(self, q: np.ndarray, fetch: int, params: faiss.SearchParameters | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search returning ``(rows, inner products)``, -1 / -inf where nothing was found."""
        dist, labels = self.index.search(q, fetch, params=params or self._params)
        labels = labels.astype(np.int64, copy=False)
        if self.mips_norm_sq is not None:
            # |q' - x'|^2 = |q|^2 + M^2 - 2 q.x  (the query's extra coordinate is 0)
            qn = np.einsum("ij,ij->i", q[:, : self._dim], q[:, : self._dim])
            ip = (qn[:, None] + np.float32(self.mips_norm_sq) - dist) * np.float32(0.5)
        else:
            ip = dist
        ip = np.where(labels < 0, np.float32(-np.inf), ip).astype(np.float32, copy=False)
        if self.mips_norm_sq is not None:
            # Ascending L2 is descending inner product, but the recovery rounds: re-sort so that
            # the scores returned are monotonic.
            order = np.argsort(-ip, axis=1, kind="stable")
            labels = np.take_along_axis(labels, order, axis=1)
            ip = np.take_along_axis(ip, order, axis=1)
        return labels, ip

    def _selector_params(self, rows: np.ndarray) -> faiss.SearchParameters:
        inner = faiss.IDSelectorBatch(rows)
        sel = faiss.IDSelectorNot(inner)
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=self.config.ef_search)
        else:
            params = faiss.SearchParametersIVF(sel=sel, nprobe=self.config.nprobe)
        params._keep = (inner, sel)  # SWIG does not own the selectors: keep them alive
        return params

    def search(
        self, queries: np.ndarray, k: int, exclude: Exclusion = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k; see :meth:`TopKIndex.search` and the module docstring."""
        q = self._faiss_query(_as_queries(queries, self.dim))
        k = _check_k(k)
        b = q.shape[0]
        excl = exclusion_csr(exclude, b, self.size)
        faiss.omp_set_num_threads(self.config.threads or 1)  # per calling thread in libgomp
        if excl is None:
            labels, ip = self._raw_search(q, k)
            return _padded(labels, ip, k)

        indptr, indices = excl
        n_excl = np.diff(indptr)
        out_i = np.full((b, k), -1, dtype=np.int64)
        out_s = np.full((b, k), -np.inf, dtype=np.float32)
        # Group queries by fetch size, so a query's result does not depend on its batch.
        fetch = np.array([k if e == 0 else _next_pow2(k + int(e)) for e in n_excl])
        heavy = n_excl > self.config.max_overfetch
        for size in np.unique(fetch[~heavy]):
            members = np.flatnonzero((fetch == size) & ~heavy)
            labels, ip = self._raw_search(q[members], int(size))
            for row, lab, sc in zip(members, labels, ip, strict=True):
                seen = indices[indptr[row]: indptr[row + 1]]
                keep = (lab >= 0) & ~np.isin(lab, seen)
                lab, sc = lab[keep][:k], sc[keep][:k]
                out_i[row, : lab.size], out_s[row, : lab.size] = lab, sc
        for row in np.flatnonzero(heavy):
            params = self._selector_params(indices[indptr[row]: indptr[row + 1]])
            labels, ip = self._raw_search(q[row: row + 1], k, params)
            out_i[row], out_s[row] = labels[0], ip[0]
        return out_i, out_s

    def save(self, folder: Path) -> None:
        """Write ``index.faiss`` (``faiss.write_index``) and ``index.json`` into ``folder``."""
        folder = Path(folder)
        _write_meta(folder, {
            "kind": self.kind, "dim": self.dim, "size": self.size,
            "mips_norm_sq": self.mips_norm_sq, "build": asdict(self.config),
        })
        faiss.write_index(self.index, str(folder / FAISS_FILE))


# --------------------------------------------------------------------------- factory and I/O


def build_index(item_vectors: np.ndarray, config: IndexConfig) -> ExactIndex | FaissIndex:
    """Build the index that ``config`` describes over ``item_vectors`` ``[n, d]``.

    Args:
        item_vectors: Item factors, one row per item (row = the index's item id).
        config: Kind and parameters.

    Returns:
        An :class:`ExactIndex` or a :class:`FaissIndex`.

    Raises:
        ValueError: On an empty matrix, or fewer items than IVF lists.
    """
    items = np.ascontiguousarray(item_vectors, dtype=np.float32)
    if items.ndim != 2 or items.shape[0] == 0:
        raise ValueError(f"item_vectors must be a non-empty [n, d] matrix, got {items.shape}")
    if config.kind == "exact":
        return ExactIndex(items, config.threads)
    n, d = items.shape
    norm_sq: float | None = None
    data = items
    if config.mips_to_l2:
        data, norm_sq = _augment(items)
    dd = data.shape[1]
    metric = faiss.METRIC_L2 if config.mips_to_l2 else faiss.METRIC_INNER_PRODUCT
    # Building parallelises over items: use every core whatever the search setting is.
    faiss.omp_set_num_threads(max(1, len(os.sched_getaffinity(0))))
    if config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dd, config.m, metric)
        index.hnsw.efConstruction = config.ef_construction
        index.add(data)
    else:
        if n < config.nlist:
            raise ValueError(f"ivf needs at least nlist={config.nlist} items, got {n}")
        quantizer = faiss.IndexFlatL2(dd) if config.mips_to_l2 else faiss.IndexFlatIP(dd)
        index = faiss.IndexIVFFlat(quantizer, dd, config.nlist, metric)
        rng = np.random.default_rng(config.seed)
        train = data if n <= config.train_size else data[
            np.sort(rng.choice(n, config.train_size, replace=False))]
        index.cp.seed = config.seed
        index.cp.min_points_per_centroid = 1  # small catalogs in tests: no warning spam
        index.train(train)
        index.add(data)
    return FaissIndex(index, config, d, norm_sq)


def load_index(folder: Path, config: IndexConfig) -> ExactIndex | FaissIndex:
    """Load an index written by ``save``; search-time fields of ``config`` apply.

    Args:
        folder: The folder ``save`` wrote.
        config: Its ``kind`` must match the saved one; ``ef_search``, ``nprobe``, ``threads`` and
            ``max_overfetch`` are taken from it (no rebuild needed to change them), the build-time
            fields from the file.

    Returns:
        The loaded index.

    Raises:
        ValueError: When the saved kind differs from ``config.kind`` or the files disagree.
    """
    folder = Path(folder)
    meta = json.loads((folder / META_FILE).read_text())
    if meta["kind"] != config.kind:
        raise ValueError(f"{folder} holds a {meta['kind']} index, config asks for {config.kind}")
    if config.kind == "exact":
        items = load_npz(folder / ITEMS_FILE)["items"]
        index: ExactIndex | FaissIndex = ExactIndex(items, config.threads)
    else:
        raw = faiss.read_index(str(folder / FAISS_FILE))
        built = meta.get("build", {})
        merged = IndexConfig(**{
            **asdict(config),
            **{k: built[k] for k in ("m", "ef_construction", "nlist", "mips_to_l2", "train_size",
                                     "seed") if k in built},
        })
        norm_sq = meta.get("mips_norm_sq")
        index = FaissIndex(raw, merged, int(meta["dim"]),
                           None if norm_sq is None else float(norm_sq))
    if index.size != meta["size"] or index.dim != meta["dim"]:
        raise ValueError(f"{folder}: index files disagree with {META_FILE}")
    return index


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact top-k rows an approximate result found (range 0..1).

    Padding (-1) in ``exact`` is not counted; a query with no exact results counts as 1.

    Args:
        approx: int ``[B, k]`` rows from the approximate index.
        exact: int ``[B, k]`` rows from the exact index.

    Returns:
        Recall@k averaged over queries.
    """
    total = 0.0
    for a, e in zip(approx, exact, strict=True):
        e = e[e >= 0]
        total += 1.0 if e.size == 0 else np.isin(e, a[a >= 0]).sum() / e.size
    return total / max(1, len(exact))


__all__ = [
    "EXACT_CHUNK_BYTES",
    "ExactIndex",
    "Exclusion",
    "FaissIndex",
    "IndexConfig",
    "IndexKind",
    "TopKIndex",
    "build_index",
    "exclusion_csr",
    "load_index",
    "recall_at_k",
    "topk_rows",
]
