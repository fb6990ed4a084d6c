"""The KServe servers' event loop (``shopserve.serving._install_event_loop``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.servers import ROOT


def _loop_after(choice: str) -> subprocess.CompletedProcess[str]:
    # In a child: kserve must not be imported beside tritonclient.grpc (DESIGN.md).
    code = ("import asyncio; from shopserve.serving import _install_event_loop; "
            f"_install_event_loop({choice!r}); "
            "print(type(asyncio.get_event_loop_policy()).__module__)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


@pytest.mark.parametrize(("choice", "module"), [("auto", "uvloop"), ("uvloop", "uvloop"),
                                                ("asyncio", "asyncio.unix_events")])
def test_kserve_servers_event_loop(choice, module):
    done = _loop_after(choice)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == module


def test_unknown_event_loop_is_refused():
    done = _loop_after("trio")
    assert done.returncode != 0
    assert "event_loop must be auto, uvloop or asyncio" in done.stderr
