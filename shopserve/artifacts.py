"""Versioned artifact bundles: one folder per component, each with a checksummed ``manifest.json``.

A release bundle looks like::

    <bundle>/recall/manifest.json   item/user factors (.npz), id maps, ANN index
    <bundle>/ranker/manifest.json   Triton model repository and tokenizer files
    <bundle>/catalog/manifest.json  items with titles, attributes, prices
    <bundle>/sequence/manifest.json the sequence recommender's Triton repository (optional)
    <bundle>/semantic/manifest.json bi-encoder item embeddings, their ANN index, the query
                                    encoder's Triton repository and tokenizer (optional)
    <bundle>/drift/manifest.json    reference distributions for drift monitoring (optional)

Every file of a component is listed in its manifest with its sha256. Loading verifies each one and
refuses a component with a missing, extra-unlisted-is-fine, changed or truncated file. Arrays are
``.npz`` read with ``allow_pickle=False``; nothing is ever unpickled.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shopserve.errors import BundleError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1

# Component folders of a release bundle, and what other components read from them.
CATALOG_COMPONENT = "catalog"
RECALL_COMPONENT = "recall"
RANKER_COMPONENT = "ranker"
#: The sequential recommender (``seq-recommender``): a Triton repository like the ranker's, the
#: catalog item id of each model index, and the item embeddings; optional: a bundle without it
#: serves recommendations from MF and popularity.
SEQUENCE_COMPONENT = "sequence"
#: Inside the sequence component: catalog item id per model index (int64; index 0, the padding,
#: holds -1) and the model's item embeddings (float32 [n_items + 1, dim], row 0 the padding).
SEQUENCE_ITEM_IDS_FILE = "item_ids.npy"
SEQUENCE_EMBEDDINGS_FILE = "item_embeddings.npy"
#: The SASRec weights (safetensors, fp32) in the sequence component: what the GPU rows of
#: ``bench/gpu_ranker.py --sequence`` rebuild the model from (Triton serves the ONNX graph).
SEQUENCE_WEIGHTS_FILE = "weights.safetensors"
#: Sequence manifest parameters: the fixed input length, and K of the model's top-K output.
SEQUENCE_LENGTH = "sequence_length"
SEQUENCE_TOP_K = "top_k"
#: Semantic retrieval: the bi-encoder's item embeddings, their FAISS index and the query
#: tokenizer (``transformers_pre.semantic`` reads them), beside a Triton repository for the
#: ``query-encoder`` model like the sequence component's; optional: a bundle without it searches
#: with BM25 and MF only.
SEMANTIC_COMPONENT = "semantic"
#: Inside the semantic component: ``item_id`` int64 [N] and ``vectors`` float32 [N, D]
#: (L2-normalised, ``save_npz``); the FAISS index over them (label i is ``item_id[i]``); the
#: tokenizer (``tokenizers`` JSON).
SEMANTIC_EMBEDDINGS_FILE = "item_embeddings.npz"
SEMANTIC_INDEX_FILE = "index.faiss"
SEMANTIC_TOKENIZER_FILE = "tokenizer.json"
#: The arrays of ``item_embeddings.npz``: catalog item id per row, and the row's embedding.
SEMANTIC_ITEM_IDS = "item_id"
SEMANTIC_VECTORS = "vectors"
#: Semantic manifest parameters: the embedding size and the longest query in tokens (special
#: tokens included) the encoder takes; the tokenizer.json truncates there.
SEMANTIC_DIM = "dim"
SEMANTIC_MAX_QUERY_LENGTH = "max_query_length"
#: Drift reference distributions (``shopserve.drift``), recorded from the catalog's queries and
#: the ranker's scores; optional: a bundle without it serves with drift reported as unavailable.
DRIFT_COMPONENT = "drift"
#: The reference JSON inside the drift component.
DRIFT_REFERENCE_FILE = "reference.json"
#: Hugging Face tokenizer files inside the ranker component.
RANKER_TOKENIZER_DIR = "tokenizer"
#: Ranker manifest parameter: the longest (query, title) sequence the model takes.
MAX_SEQUENCE_LENGTH = "max_sequence_length"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def git_revision(cwd: Path | None = None) -> str | None:
    """The current git commit of the code, or None outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent,
            capture_output=True, text=True, timeout=5, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@dataclass
class Manifest:
    """What a component folder holds and where it came from.

    Attributes:
        component: ``recall``, ``ranker``, ``catalog``.
        version: Release version of the bundle, e.g. ``2026.11.22-1``.
        created: ISO-8601 UTC time of packaging.
        files: Relative path -> sha256 of every file in the folder but the manifest.
        data: Summary of the training data (counts, time range, source).
        params: Training and serving parameters.
        metrics: Offline evaluation metrics.
        parent: Version this release was derived from, if any.
        git_revision: Commit of the code that built it.
        format_version: Manifest schema version.
    """

    component: str
    version: str
    created: str
    files: dict[str, str]
    data: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    git_revision: str | None = None
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        """Stable, human-readable JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=_json_default)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Manifest:
        """Parse a manifest dict, refusing one without the required keys."""
        missing = [k for k in ("component", "version", "created", "files") if k not in raw]
        if missing:
            raise BundleError(f"manifest lacks {', '.join(missing)}")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _listed_files(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def write_manifest(
    folder: Path,
    component: str,
    version: str,
    *,
    data: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    parent: str | None = None,
) -> Manifest:
    """Checksum every file under ``folder`` and write its ``manifest.json``.

    Call it last, once every file of the component is in place.
    """
    folder = Path(folder)
    manifest = Manifest(
        component=component,
        version=version,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        files=_listed_files(folder),
        data=dict(data or {}),
        params=dict(params or {}),
        metrics=dict(metrics or {}),
        parent=parent,
        git_revision=git_revision(),
    )
    (folder / MANIFEST).write_text(manifest.to_json() + "\n")
    return manifest


def read_manifest(folder: Path) -> Manifest:
    """Read a component's manifest without checking files."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{folder}: no {MANIFEST}; not a packaged component")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable manifest ({exc})") from exc
    return Manifest.from_dict(raw)


def check_files(root: Path, files: Mapping[str, str]) -> list[str]:
    """Problems with ``files`` (relative path -> sha256) under ``root``: missing or mismatched."""
    problems = []
    for rel, digest in sorted(files.items()):
        path = Path(root) / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(path) != digest:
            problems.append(f"{rel}: sha256 mismatch")
    return problems


def verify(folder: Path) -> list[str]:
    """Every problem with a component folder: missing files and checksum mismatches."""
    return check_files(folder, read_manifest(folder).files)


def load_component(folder: Path, component: str | None = None, only: str | None = None
                   ) -> Manifest:
    """Verify a component folder and return its manifest.

    Args:
        folder: The component folder.
        component: The component the manifest must be for.
        only: Verify only the listed files under this relative folder (``"tokenizer/"``): for a
            reader that uses just those (the search transformer reads the ranker's tokenizer, not
            its 100 MB of ONNX graphs, which the ranker's launcher verifies).

    Raises:
        BundleError: no manifest, wrong component, or any missing or changed file (of ``only``).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if component is not None and manifest.component != component:
        raise BundleError(
            f"{folder}: manifest is for component '{manifest.component}', expected '{component}'"
        )
    files = manifest.files
    if only is not None:
        files = {rel: digest for rel, digest in files.items() if rel.startswith(only)}
        if not files:
            raise BundleError(f"{folder}: the manifest lists no file under '{only}'")
    problems = check_files(folder, files)
    if problems:
        raise BundleError(f"{folder}: refusing corrupt bundle: {'; '.join(problems)}")
    return manifest


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write arrays uncompressed (fast to load); object arrays are refused (they would pickle)."""
    for name, array in arrays.items():
        if np.asarray(array).dtype == object:
            raise TypeError(f"array '{name}' has dtype object; store text as a 'U' array")
    np.savez(path, **arrays)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` with pickling disabled."""
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def new_version(now: _dt.datetime | None = None) -> str:
    """A sortable release version from the UTC time: ``YYYYMMDD.HHMMSS``."""
    now = now or _dt.datetime.now(_dt.UTC)
    return now.strftime("%Y%m%d.%H%M%S")
