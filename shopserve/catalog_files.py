"""The bundle's ``catalog`` component as a file format, and its small reader.

A catalog component folder holds (all arrays ``.npz``, read with ``allow_pickle=False``):

* ``dataset.json``: ``format_version`` (:data:`FORMAT_VERSION`), the generator configuration and a
  summary;
* ``items.npz``: one row per item, ascending ``item_id``: :data:`ITEM_COLUMNS`;
* ``users.npz``: registered shoppers, ascending ``user_id`` (and their profile columns);
* ``events.npz``: the behaviour log sorted by time: ``user_id``, ``item_id``, ``timestamp``,
  ``weight``, ``event_type`` (an index into :data:`EVENT_TYPES`);
* ``queries.npz``: the logged search queries (``query_id``, ``text``, ``kind``, ``base_text``,
  ``category``, ``user_id``, ``frequency``, the judged targets and the values a ``negation``
  query excludes, ``exclude_colour`` and ``exclude_material``, ``''`` when none; files written
  before negations lack those two columns, and readers take them as excluding nothing);
* ``qrels.npz``, ``truth.npz``: judgements and hidden tastes, read only by the offline build;
* ``query_rewrites.json``: the mined synonym table (see :mod:`transformers_pre.rewrite`);
* ``lexical_index/`` (optional, :data:`LEXICAL_INDEX_DIR`): the BM25 index over :func:`item_text`,
  built at package time so the search transformer loads it instead of building it at every start
  (see :mod:`transformers_pre.catalog`): ``bm25s``'s own ``BM25.save`` layout (``.npy`` arrays
  read with ``allow_pickle=False``, the vocabulary and parameters as JSON) plus
  :data:`LEXICAL_INDEX_META`, which names the recipe and the ``items.npz`` it was built from.
  Bundles without it still load: the transformer then builds the same index itself.

The build (``training.data.generator.Dataset.save``) writes these files under the names defined
here; serving (the search transformer's catalog, the load test's traffic mix, ``shopserve up``'s
sample request) reads them through :class:`CatalogFiles`, which loads only the columns it is
asked for and never the generator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shopserve.artifacts import load_npz
from shopserve.errors import BundleError
from shopserve.interactions import IdMap, Interactions

#: Version of the layout below; a reader refuses any other.
FORMAT_VERSION = 1
META_FILE = "dataset.json"
ITEMS_FILE = "items.npz"
USERS_FILE = "users.npz"
EVENTS_FILE = "events.npz"
QUERIES_FILE = "queries.npz"
QRELS_FILE = "qrels.npz"
TRUTH_FILE = "truth.npz"
#: The files every catalog component has (``truth.npz`` is optional).
REQUIRED_FILES = (META_FILE, ITEMS_FILE, USERS_FILE, EVENTS_FILE, QUERIES_FILE, QRELS_FILE)
#: Optional folder of the prebuilt lexical (BM25) index.
LEXICAL_INDEX_DIR = "lexical_index"
#: In :data:`LEXICAL_INDEX_DIR`: ``format_version`` (the index recipe's) and ``items_sha256`` (of
#: the ``items.npz`` it indexes); an index whose either differs from the reader's is not used.
LEXICAL_INDEX_META = "source.json"

#: Event types of the behaviour log; ``event_type`` indexes this tuple.
EVENT_TYPES: tuple[str, ...] = ("view", "cart", "purchase")
#: Columns of ``items.npz``.
ITEM_COLUMNS: tuple[str, ...] = (
    "item_id", "title", "category", "brand", "colour", "material", "size", "gender", "price",
    "popularity",
)


def item_text(columns: dict[str, np.ndarray], rows: np.ndarray | None = None) -> np.ndarray:
    """The text a lexical index sees per item: the title, then every attribute.

    The attributes repeat title words on purpose: that is how a catalog search makes ``jackets``
    (the category) match a title that only says ``Jacket``, or ``size l`` match one that says
    ``(L)``.

    Args:
        columns: Item columns (:data:`ITEM_COLUMNS`), row-aligned.
        rows: Rows to describe; every row in order when None.

    Returns:
        A ``'U'`` array aligned with ``rows``.
    """
    rows = np.arange(len(columns["item_id"])) if rows is None else np.asarray(rows)
    text = [
        f"{t} | {c} {b} {co} {m} {g} size {s}"
        for t, c, b, co, m, g, s in zip(
            *(columns[name][rows].tolist()
              for name in ("title", "category", "brand", "colour", "material", "gender", "size")),
            strict=True,
        )
    ]
    return np.array(text, dtype=np.str_) if text else np.zeros(0, dtype="U1")


@dataclass(frozen=True, eq=False)  # array columns: == would be ambiguous
class CatalogFiles:
    """A catalog component folder, read column by column on demand.

    Attributes:
        folder: The component folder.
        meta: ``dataset.json``.
    """

    folder: Path
    meta: dict[str, Any]
    _cache: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, folder: Path | str) -> CatalogFiles:
        """Check the folder's layout and format version (checksums are the manifest's job).

        Raises:
            BundleError: a required file is missing or the format version is not ours.
        """
        folder = Path(folder)
        missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
        if missing:
            raise BundleError(f"{folder}: not a catalog component, missing {missing}")
        meta = json.loads((folder / META_FILE).read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{folder}: catalog format {meta.get('format_version')}, "
                              f"expected {FORMAT_VERSION}")
        return cls(folder, meta)

    def _table(self, name: str) -> dict[str, np.ndarray]:
        if name not in self._cache:
            self._cache[name] = load_npz(self.folder / name)
        return self._cache[name]

    @property
    def items(self) -> dict[str, np.ndarray]:
        """Item columns (:data:`ITEM_COLUMNS`), one row per item, ascending ``item_id``."""
        return self._table(ITEMS_FILE)

    @property
    def item_map(self) -> IdMap:
        """Item id <-> row of :attr:`items`."""
        return IdMap(self.items["item_id"])

    def item_text(self) -> np.ndarray:
        """Every item's lexical text, by row (see :func:`item_text`)."""
        return item_text(self.items)

    @property
    def user_ids(self) -> np.ndarray:
        """Registered shoppers' ids, ascending."""
        return self._table(USERS_FILE)["user_id"]

    @property
    def queries(self) -> dict[str, np.ndarray]:
        """The logged queries' columns, ascending ``query_id``."""
        return self._table(QUERIES_FILE)

    def events(self, event_type: str | None = None) -> Interactions:
        """The behaviour log, or only its events of one type (``view``, ``cart``, ``purchase``)."""
        raw = self._table(EVENTS_FILE)
        log = Interactions(raw["user_id"], raw["item_id"], raw["timestamp"], raw["weight"])
        if event_type is None:
            return log
        if event_type not in EVENT_TYPES:
            raise ValueError(f"event_type must be one of {EVENT_TYPES}, not {event_type!r}")
        return log.take(raw["event_type"] == EVENT_TYPES.index(event_type))
