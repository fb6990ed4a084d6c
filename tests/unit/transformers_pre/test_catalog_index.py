"""The catalog's prebuilt lexical index: packaged with the component, loaded instead of built, the
same index and the same answers either way; a component without a usable one is indexed at load."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipeline.lifecycle.demo import save_catalog
from shopserve.artifacts import MANIFEST, read_manifest, write_manifest
from shopserve.catalog_files import LEXICAL_INDEX_DIR, LEXICAL_INDEX_META, CatalogFiles
from shopserve.errors import BundleError
from training.data.generator import Dataset, GeneratorConfig, generate
from transformers_pre.catalog import Catalog
from transformers_pre.rewrite import load_synonyms

INDEX_FILES = ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy",
               "vocab.index.json", "params.index.json", LEXICAL_INDEX_META)


@pytest.fixture(scope="module")
def world() -> Dataset:
    return generate(GeneratorConfig.tiny())


@pytest.fixture(scope="module")
def component(world: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle's catalog component (``tests.bundles`` writes it with the same call), with
    mined synonyms so that query rewriting is part of what is compared. Read only."""
    folder = tmp_path_factory.mktemp("bundle") / "catalog"
    save_catalog(world, folder, "test-1", world.queries.query_id)
    return folder


@pytest.fixture(scope="module")
def queries(world: Dataset) -> list[str]:
    """Logged queries (typos and synonyms among them), titles, and words of titles."""
    titles = [str(t).lower() for t in world.items.title[:40]]
    words = sorted({w for t in titles for w in t.split()})
    return [*map(str, world.queries.text[:300]), *titles, *words]


def _repackaged(component: Path, tmp_path: Path, change: Callable[[Path], None]) -> Path:
    """A copy of the component changed by ``change``, then packaged again (a new manifest)."""
    folder = tmp_path / "catalog"
    shutil.copytree(component, folder)
    change(folder)
    old = read_manifest(folder)
    (folder / MANIFEST).unlink()
    write_manifest(folder, old.component, old.version, data=old.data, params=old.params)
    return folder


def _without_index(folder: Path) -> None:
    shutil.rmtree(folder / LEXICAL_INDEX_DIR)


def _assert_same_answers(loaded: Catalog, built: Catalog, queries: list[str]) -> None:
    masks = [None, built.filter_mask(str(built.categories[0]), None, None)]
    for mask in masks:
        for query in queries:
            for rewrite in (True, False):
                rows, scores = loaded.lexical(query, 50, mask, rewrite)
                want_rows, want_scores = built.lexical(query, 50, mask, rewrite)
                np.testing.assert_array_equal(rows, want_rows, err_msg=query)
                np.testing.assert_array_equal(scores, want_scores, err_msg=query)


def test_package_lists_the_index_in_the_manifest(component: Path) -> None:
    listed = set(read_manifest(component).files)
    assert {f"{LEXICAL_INDEX_DIR}/{name}" for name in INDEX_FILES} <= listed
    assert Catalog.load(component).prebuilt_index


def test_loaded_index_equals_the_built_one(component: Path, queries: list[str]) -> None:
    loaded = Catalog.load(component)
    # No manifest, so nothing verified to trust: the index is built from the items.
    built = Catalog.from_files(CatalogFiles.open(component), synonyms=load_synonyms(component))
    assert loaded.prebuilt_index and not built.prebuilt_index
    for name in ("data", "indices", "indptr", "num_docs"):
        np.testing.assert_array_equal(loaded.bm25.scores[name], built.bm25.scores[name])
    assert loaded.bm25.vocab_dict == built.bm25.vocab_dict
    assert dict(loaded.rewriter.document_frequency) == dict(built.rewriter.document_frequency)
    assert dict(loaded.rewriter.synonyms) == dict(built.rewriter.synonyms)
    assert loaded.rewriter.synonyms  # the rewriting stage is exercised below
    _assert_same_answers(loaded, built, queries)


def test_component_without_index_is_indexed_at_load(component: Path, tmp_path: Path,
                                                    queries: list[str]) -> None:
    older = Catalog.load(_repackaged(component, tmp_path, _without_index))
    assert not older.prebuilt_index
    _assert_same_answers(Catalog.load(component), older, queries)


def _meta(**change: object) -> Callable[[Path], None]:
    def rewrite(folder: Path) -> None:
        path = folder / LEXICAL_INDEX_DIR / LEXICAL_INDEX_META
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    return rewrite


def _unlisted(folder: Path) -> None:
    """The index is there but the manifest does not checksum it (copied in after packaging)."""
    shutil.move(folder / LEXICAL_INDEX_DIR, folder.parent / "index")


@pytest.mark.parametrize(("change", "reason"), [
    (_meta(format_version=0), "recipe 0"),
    (_meta(items_sha256="0" * 64), "another items.npz"),
])
def test_index_that_does_not_fit_is_not_used(component: Path, tmp_path: Path,
                                             change: Callable[[Path], None], reason: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    catalog = Catalog.load(_repackaged(component, tmp_path, change))
    assert not catalog.prebuilt_index
    assert reason in caplog.text


def test_unlisted_index_is_not_used(component: Path, tmp_path: Path,
                                    caplog: pytest.LogCaptureFixture) -> None:
    folder = _repackaged(component, tmp_path, _unlisted)
    shutil.move(folder.parent / "index", folder / LEXICAL_INDEX_DIR)
    assert not Catalog.load(folder).prebuilt_index
    assert "files the manifest does not list" in caplog.text


def test_changed_index_file_is_refused(component: Path, tmp_path: Path) -> None:
    folder = tmp_path / "catalog"
    shutil.copytree(component, folder)
    path = folder / LEXICAL_INDEX_DIR / "data.csc.index.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        Catalog.load(folder)
