"""The search model's teardown closes its upstream channels (``search_model_stop_checks.py``).

Each check runs in a child pytest: kserve and ``tritonclient.grpc`` register the same protos and
cannot share a process (DESIGN.md), and other tests of this suite import the latter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHECKS = Path(__file__).with_name("search_model_stop_checks.py")
ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("check", [
    "test_kserve_unload_stops_the_model_and_closes_its_channels",
    "test_stop_outside_an_event_loop_closes_the_channels",
    "test_stop_before_load_and_twice_is_harmless",
    "test_stop_waits_for_searches_in_flight",
])
def test_search_model_stop(check: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{CHECKS}::{check}"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
