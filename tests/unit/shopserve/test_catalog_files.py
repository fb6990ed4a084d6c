"""The catalog component's file format: what the generator writes, the serving reader reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shopserve.catalog_files import (
    EVENT_TYPES,
    FORMAT_VERSION,
    ITEM_COLUMNS,
    META_FILE,
    QUERIES_FILE,
    CatalogFiles,
)
from shopserve.errors import BundleError
from training.data.generator import GeneratorConfig, generate


@pytest.fixture(scope="module")
def world():
    return generate(GeneratorConfig.tiny())


@pytest.fixture()
def folder(world, tmp_path: Path) -> Path:
    world.save(tmp_path)
    return tmp_path


def test_reads_what_the_generator_writes(world, folder: Path) -> None:
    files = CatalogFiles.open(folder)
    assert tuple(files.items) == ITEM_COLUMNS
    np.testing.assert_array_equal(files.items["item_id"], world.items.item_id)
    np.testing.assert_array_equal(files.item_text(), world.item_text())
    np.testing.assert_array_equal(files.user_ids, world.users.user_id)
    np.testing.assert_array_equal(files.queries["text"], world.queries.text)
    np.testing.assert_array_equal(files.item_map.index(world.items.item_id[:5]), np.arange(5))


@pytest.mark.parametrize("kind", EVENT_TYPES)
def test_events_by_type_equal_the_generators(world, folder: Path, kind: str) -> None:
    got, want = CatalogFiles.open(folder).events(kind), world.events.of_type(kind)
    np.testing.assert_array_equal(got.user_ids, want.user_ids)
    np.testing.assert_array_equal(got.item_ids, want.item_ids)
    assert len(CatalogFiles.open(folder).events()) == len(world.events)


def test_unknown_event_type_is_refused(folder: Path) -> None:
    with pytest.raises(ValueError, match="event_type"):
        CatalogFiles.open(folder).events("click")


def test_missing_file_is_a_bundle_error(folder: Path) -> None:
    (folder / QUERIES_FILE).unlink()
    with pytest.raises(BundleError, match="queries.npz"):
        CatalogFiles.open(folder)


def test_other_format_version_is_a_bundle_error(folder: Path) -> None:
    meta = json.loads((folder / META_FILE).read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="format"):
        CatalogFiles.open(folder)
