"""The local stack's process control: CPU sets per component, the child process (readiness, exit
codes, the group killed at stop, restart), the servers' event loop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pipeline.supervisor import LOOPBACK, Component, Stack
from shopserve.process import ChildExited, ChildProcess, NotReady
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


# ------------------------------------------------------------- the child process under the stack


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _gone(pid: int, within: float = 5.0) -> bool:
    """Whether ``pid`` has ended (or is a zombie waiting for init) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


# A child that starts a grandchild in its group, prints its pid, and waits.
WITH_GRANDCHILD = ("import signal, subprocess, sys, time\n"
                   "{before}\n"
                   "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                   "print(p.pid, flush=True)\n"
                   "time.sleep(60)\n")


def _grandchild(child: ChildProcess) -> int:
    deadline = time.monotonic() + 10
    while not child.log().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(child.log().split()[0])


def test_a_child_that_exits_before_ready_is_reported_with_its_code_and_log(tmp_path):
    child = ChildProcess("boom", _python("print('no bundle here'); raise SystemExit(3)"),
                         log_path=tmp_path / "boom.log", ready=f"http://{LOOPBACK}:{free_port()}/")
    with child, pytest.raises(ChildExited, match=r"boom exited with 3:\n  \[boom\] no bundle here"):
        child.wait_ready(30)
    assert child.poll() == 3


def test_a_child_not_ready_in_time_keeps_running_until_stopped(tmp_path):
    child = ChildProcess("slow", _python("import time; time.sleep(60)"),
                         log_path=tmp_path / "slow.log", ready=f"http://{LOOPBACK}:{free_port()}/")
    with child:
        with pytest.raises(NotReady, match="slow not ready after 0s"):
            child.wait_ready(0.3)
        assert child.running
    assert child.poll() == -signal.SIGTERM


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_stop_sigkills_the_group_of_a_child_that_ignores_sigterm(tmp_path):
    code = WITH_GRANDCHILD.format(before="signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    child = ChildProcess("stubborn", _python(code), log_path=tmp_path / "stubborn.log")
    child.start()
    grandchild = _grandchild(child)
    assert child.stop(timeout=0.5) == -signal.SIGKILL
    assert _gone(grandchild)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_nothing_a_child_started_outlives_it(tmp_path):
    child = ChildProcess("parent", _python(WITH_GRANDCHILD.format(before="")),
                         log_path=tmp_path / "parent.log")
    child.start()
    grandchild = _grandchild(child)
    assert child.stop() == -signal.SIGTERM  # SIGTERM to the child alone; the group killed after
    assert _gone(grandchild)


def test_a_child_can_be_started_again_after_it_exited(tmp_path):
    child = ChildProcess("once", _python("print('ran', flush=True)"), log_path=tmp_path / "once.log")
    child.start()
    assert child.wait(30) == 0
    first = child.pid
    child.start()
    assert child.wait(30) == 0 and child.pid != first and child.starts == 2
    assert child.stop() == 0
    assert child.log().split() == ["ran", "ran"]  # appended to, not replaced


def test_a_running_child_cannot_be_started_twice(tmp_path):
    with ChildProcess("busy", _python("import time; time.sleep(60)")) as child:
        with pytest.raises(RuntimeError, match="busy is running already"):
            child.start()
