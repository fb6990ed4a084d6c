"""Bundles: checksums verified on load, corrupt or incomplete bundles refused, no pickle."""

import json

import numpy as np
import pytest

from shopserve.artifacts import (
    load_component,
    load_npz,
    read_manifest,
    save_npz,
    verify,
    write_manifest,
)
from shopserve.errors import BundleError


@pytest.fixture()
def component(tmp_path):
    folder = tmp_path / "recall"
    folder.mkdir()
    save_npz(folder / "factors.npz", a=np.arange(4, dtype=np.float32))
    (folder / "sub").mkdir()
    (folder / "sub" / "ids.json").write_text("[1, 2]")
    write_manifest(folder, "recall", "v1", data={"users": 3}, metrics={"ndcg": np.float32(0.5)},
                   parent="v0")
    return folder


def test_manifest_lists_every_file_with_sha256(component):
    manifest = load_component(component, "recall")
    assert set(manifest.files) == {"factors.npz", "sub/ids.json"}
    assert all(len(d) == 64 for d in manifest.files.values())
    assert manifest.parent == "v0" and manifest.metrics == {"ndcg": 0.5}
    assert manifest.created.endswith("+00:00")


def test_changed_file_is_refused(component):
    (component / "sub" / "ids.json").write_text("[1, 3]")
    assert verify(component) == ["sub/ids.json: sha256 mismatch"]
    with pytest.raises(BundleError, match="ids.json: sha256 mismatch"):
        load_component(component)


def test_missing_file_is_refused(component):
    (component / "factors.npz").unlink()
    with pytest.raises(BundleError, match="factors.npz: missing"):
        load_component(component)


def test_only_checks_the_files_a_reader_uses(component):
    (component / "factors.npz").write_bytes(b"changed")  # not under sub/: not checked
    assert load_component(component, "recall", only="sub/").version == "v1"
    (component / "sub" / "ids.json").write_text("[1, 3]")
    with pytest.raises(BundleError, match="ids.json: sha256 mismatch"):
        load_component(component, "recall", only="sub/")
    with pytest.raises(BundleError, match="no file under 'tokenizer/'"):
        load_component(component, "recall", only="tokenizer/")


def test_missing_or_broken_manifest_is_refused(tmp_path, component):
    with pytest.raises(BundleError, match="no manifest.json"):
        load_component(tmp_path)
    (component / "manifest.json").write_text("{")
    with pytest.raises(BundleError, match="unreadable"):
        read_manifest(component)
    (component / "manifest.json").write_text(json.dumps({"version": "1"}))
    with pytest.raises(BundleError, match="lacks component"):
        read_manifest(component)


def test_wrong_component_is_refused(component):
    with pytest.raises(BundleError, match="expected 'ranker'"):
        load_component(component, "ranker")


def test_npz_never_pickles(tmp_path):
    with pytest.raises(TypeError, match="object"):
        save_npz(tmp_path / "x.npz", bad=np.array([{"a": 1}], dtype=object))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "obj.npz", bad=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_npz(tmp_path / "obj.npz")
