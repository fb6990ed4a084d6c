"""The one child-process runner (``shopserve.process.ChildProcess``) under the supervisor, the test
servers and the ranker's launcher: readiness, exit codes, the group killed at stop, restart."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from pipeline.supervisor import LOOPBACK
from shopserve.process import ChildExited, ChildProcess, NotReady
from tests.servers import free_port


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
