"""The request size limit of the KServe servers (``request_limit_checks.py``), each check in a
child pytest: ``shopserve.serving`` imports kserve, which cannot share a process with
``tritonclient.grpc`` (DESIGN.md), and other tests of this suite import the latter."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shopserve.settings import DEFAULT_MAX_REQUEST_BYTES, RecallSettings, SearchSettings

CHECKS = Path(__file__).with_name("request_limit_checks.py")
ROOT = Path(__file__).resolve().parents[3]


def _checks() -> list[str]:
    tree = ast.parse(CHECKS.read_text())
    return [node.name for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]


def test_checks_are_found() -> None:
    assert len(_checks()) >= 8


def test_request_limits() -> None:
    # One child for all checks: they are fast, and kserve's import is the slow part.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CHECKS)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b(\d+) passed", done.stdout), done.stdout


def test_both_servers_have_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SearchSettings().max_request_bytes == DEFAULT_MAX_REQUEST_BYTES == 1 << 20
    assert RecallSettings().max_request_bytes == DEFAULT_MAX_REQUEST_BYTES
    monkeypatch.setenv("SEARCH_MAX_REQUEST_BYTES", "4096")
    monkeypatch.setenv("RECALL_MAX_REQUEST_BYTES", "8192")
    assert SearchSettings().max_request_bytes == 4096
    assert RecallSettings().max_request_bytes == 8192
