"""The local supervisor's components: CPU sets per component, as a pod's CPU set would bind them."""

from __future__ import annotations

import os

import httpx
import pytest

from pipeline.supervisor import Component, Stack
from tests.servers import free_port


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
