"""The local stack's process control: CPU sets per component, the servers' event loop."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from pipeline.supervisor import Component, Stack
from tests.servers import ROOT, free_port


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU sets are Linux only")
def test_component_cpus_bind_the_process_its_threads_and_children(tmp_path):
    cpu = min(os.sched_getaffinity(0))
    port = free_port()
    probe = Component("probe", "tests.affinity_probe", port, {"PROBE_PORT": str(port)},
                      cpus=frozenset({cpu}))
    with Stack([probe], tmp_path) as stack:
        stack.start(timeout=30)
        seen = httpx.get(f"{probe.url}/v2/health/ready").json()
    assert seen == {"main": [cpu], "thread": [cpu], "child": [cpu]}


def test_component_without_cpus_keeps_every_cpu(tmp_path):
    port = free_port()
    probe = Component("probe", "tests.affinity_probe", port, {"PROBE_PORT": str(port)})
    with Stack([probe], tmp_path) as stack:
        stack.start(timeout=30)
        seen = httpx.get(f"{probe.url}/v2/health/ready").json()
    assert seen["main"] == sorted(os.sched_getaffinity(0))


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
