"""The semantic path's side in the transformer: the bundle's ``semantic`` component read once.

A query that describes a need in other words ("shoes for running in the rain") shares no term
with the titles it wants, so BM25 finds nothing for it. The semantic path finds candidates by
meaning instead: the bi-encoder's item embeddings are computed at package time
(``training.semantic``) and indexed with FAISS; at request time the transformer tokenises the
query here, the ``query-encoder`` model on Triton embeds it (in a cluster its own InferenceService
on a GPU; locally the ranker's Triton on the CPU, beside ``bert-ranker``), and
:meth:`SemanticIndex.search` finds the nearest items in-process.

Why Triton embeds the query and the transformer searches: the encoder is a transformer network
(the expensive part, and what a GPU does best), served by the runtime that already batches the
ranker's calls, and it fails, scales and degrades on its own; the index search is a fraction of a
millisecond on a CPU and needs the catalog rows the transformer holds. The transformer imports
neither torch nor ONNX Runtime for it. The encoder and the index must come from the same bundle
(one vector space): the chart never gives the encoder a canary of another bundle.

Component files (written by ``training.semantic``, checksummed by its manifest):

* ``item_embeddings.npz``: ``item_id`` int64 ``[N]``, ``vectors`` float32 ``[N, D]``
  (L2-normalised);
* ``index.faiss``: a FAISS index over ``vectors`` (inner product), label ``i`` is ``item_id[i]``;
* ``tokenizer.json``: the bi-encoder's tokenizer;
* manifest params: ``dim``, ``max_query_length`` (tokens), ``index`` (with ``ef_search``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tokenizers import Tokenizer

from shopserve.artifacts import (
    SEMANTIC_COMPONENT,
    SEMANTIC_DIM,
    SEMANTIC_EMBEDDINGS_FILE,
    SEMANTIC_INDEX_FILE,
    SEMANTIC_ITEM_IDS,
    SEMANTIC_MAX_QUERY_LENGTH,
    SEMANTIC_TOKENIZER_FILE,
    SEMANTIC_VECTORS,
    Manifest,
    load_component,
    load_npz,
)
from shopserve.errors import BundleError
from shopserve.interactions import IdMap
from shopserve.protocol import ATTENTION_MASK, INPUT_IDS

log = logging.getLogger(__name__)


@dataclass
class SemanticIndex:
    """The item embeddings' ANN index, the query tokenizer, and index labels -> catalog rows.

    Attributes:
        index: FAISS index over the item embeddings (inner product of L2-normalised vectors: the
            cosine similarity).
        row_of_label: Catalog row of each index label (-1 for items the catalog does not have).
        vectors: Embedding of each catalog row, float32 ``[n_catalog, dim]`` (zeros for items
            without one): the similarity of any candidate, whichever source found it. At a
            million items this is 1.5 GB beside the index's own copy; a catalog that large would
            score candidates from the index's storage instead.
        tokenizer: The bi-encoder's tokenizer, truncating to ``max_query_length``.
        dim: Embedding dimension.
        manifest: The component's manifest.
    """

    index: Any
    row_of_label: np.ndarray
    vectors: np.ndarray
    tokenizer: Tokenizer
    dim: int
    manifest: Manifest | None = None

    @classmethod
    def load(cls, folder: Path, items: IdMap) -> SemanticIndex:
        """Verify and read a bundle's ``semantic`` component against the catalog's ``items``.

        Raises:
            BundleError: the component is missing, corrupt, or inconsistent.
        """
        manifest = load_component(folder, SEMANTIC_COMPONENT)
        try:
            arrays = load_npz(folder / SEMANTIC_EMBEDDINGS_FILE)
            item_ids = arrays[SEMANTIC_ITEM_IDS].astype(np.int64)
            vectors = arrays[SEMANTIC_VECTORS].astype(np.float32, copy=False)
            index = faiss.read_index(str(folder / SEMANTIC_INDEX_FILE))
            tokenizer = Tokenizer.from_file(str(folder / SEMANTIC_TOKENIZER_FILE))
            params = manifest.params
            dim = int(params[SEMANTIC_DIM])
            max_length = int(params[SEMANTIC_MAX_QUERY_LENGTH])
            ef_search = int((params.get("index") or {}).get("ef_search", 0))
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise BundleError(f"semantic component {folder}: {exc}") from exc
        if (index.ntotal != item_ids.shape[0] or index.d != dim
                or vectors.shape != (item_ids.shape[0], dim)):
            raise BundleError(f"semantic component {folder}: index of {index.ntotal} x {index.d} "
                              f"for {item_ids.shape[0]} items of dimension {dim}")
        if ef_search and hasattr(index, "hnsw"):
            index.hnsw.efSearch = ef_search
        tokenizer.enable_truncation(max_length)
        tokenizer.no_padding()
        rows = items.index(item_ids)
        if (rows < 0).any():
            log.warning("semantic component: %d of %d items are not in the catalog (never "
                        "returned)", int((rows < 0).sum()), rows.size)
        by_row = np.zeros((len(items), dim), dtype=np.float32)
        by_row[rows[rows >= 0]] = vectors[rows >= 0]
        return cls(index, rows, by_row, tokenizer, dim, manifest)

    def encode(self, query: str) -> dict[str, np.ndarray]:
        """The ``query-encoder`` inputs of one query: ``input_ids`` and ``attention_mask``,
        int64 ``[1, tokens]``."""
        ids = np.asarray(self.tokenizer.encode(query).ids, dtype=np.int64)[None, :]
        return {INPUT_IDS: ids, ATTENTION_MASK: np.ones_like(ids)}

    def similarity(self, vector: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Cosine similarity of one query embedding to the items of catalog ``rows`` (0 for items
        without an embedding)."""
        # einsum, not ``@``: a matrix-vector product goes to numpy's BLAS, whose threads then
        # spin-wait on the cores the ranker's Triton shares (on the 2-core machine the rank stage
        # took 92 ms at p50 after it, 33 ms with one BLAS thread); einsum's own loop takes
        # microseconds for a few hundred candidates.
        return np.einsum("ij,j->i", self.vectors[rows],
                         np.asarray(vector, dtype=np.float32).reshape(-1))

    def search(self, vector: np.ndarray, k: int, mask: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items nearest to one query embedding: catalog rows and cosine similarities,
        best first, without items the catalog lacks or ``mask`` (when given) leaves out.

        Raises:
            ValueError: ``vector`` is not one embedding of this index's dimension (a mismatched
                encoder: the caller degrades).
        """
        query = np.ascontiguousarray(np.asarray(vector, dtype=np.float32).reshape(1, -1))
        if query.shape[1] != self.dim:
            raise ValueError(f"query embedding of dimension {query.shape[1]}, the index has "
                             f"{self.dim}")
        # A filtered request looks further, so that filters leave about k candidates.
        wanted = k if mask is None else min(self.index.ntotal, 4 * k)
        scores, labels = self.index.search(query, wanted)
        labels, scores = labels[0], scores[0]
        found = labels >= 0
        rows = self.row_of_label[labels[found]]
        sims = scores[found].astype(np.float32)
        keep = rows >= 0
        if mask is not None:
            keep &= mask[np.maximum(rows, 0)]
        return rows[keep][:k], sims[keep][:k]
