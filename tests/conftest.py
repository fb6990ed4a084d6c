"""Fixtures shared by the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny complete bundle (catalog, recall, ranker, sequence; ``tests.bundles``), built once per
    session.

    For tests that only read it: copy it before changing anything in it.
    """
    from tests.bundles import build_tiny_bundle  # the training code: imported only when needed

    path = tmp_path_factory.mktemp("tiny") / "bundle"
    build_tiny_bundle(path)
    return path
