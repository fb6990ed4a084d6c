"""The local supervisor's components: CPU sets per component, as a pod's CPU set would bind them."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from pipeline.supervisor import Component, CrashLoop, Stack
from shopserve.process import describe_exit
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


# ------------------------------------------------------------------------------- supervision

# A component for the supervisor: answers /v2/health/ready on $PORT. With $CRASH_AFTER_FIRST set
# to a marker file, every run after the first prints a line and exits 3 at once.
SERVER = """
import os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
marker = os.environ.get("CRASH_AFTER_FIRST")
if marker:
    if os.path.exists(marker):
        print("boom: no model here", flush=True)
        sys.exit(3)
    open(marker, "w").close()
print("serving", os.getpid(), flush=True)

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = str(os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def _component(tmp_path: Path, name: str, **env: str) -> Component:
    (tmp_path / "sup_server.py").write_text(SERVER)
    port = free_port()
    return Component(name, "sup_server", port, {
        "PORT": str(port), "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), **env})


def _supervise(stack: Stack) -> tuple[threading.Thread, threading.Event, list[BaseException]]:
    """Run ``stack.supervise`` in a thread; what it raises lands in the list."""
    stop, raised = threading.Event(), []

    def run() -> None:
        try:
            stack.supervise(stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, stop, raised


def _until(check, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _answer(comp: Component) -> int | None:
    try:
        return int(httpx.get(comp.url + "/v2/health/ready", timeout=1, trust_env=False).text)
    except httpx.HTTPError:
        return None


def test_exits_are_described_with_their_code_or_signal():
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"
    assert describe_exit(-signal.SIGTERM) == "signal SIGTERM"
    assert describe_exit(None) == "still running"


def test_backoff_doubles_from_the_initial_delay_up_to_the_cap(tmp_path):
    stack = Stack([], tmp_path, backoff_initial_s=0.5, backoff_max_s=10)
    assert [stack.backoff(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert Stack([], tmp_path).max_restarts == 5
    assert Stack([], tmp_path).restart_window_s == 120


def test_a_crashing_component_is_restarted_with_growing_delays_then_given_up(tmp_path, capsys):
    crashy = _component(tmp_path, "crashy", CRASH_AFTER_FIRST=str(tmp_path / "ran"))
    with Stack([crashy], tmp_path / "logs", backoff_initial_s=0.1, backoff_max_s=0.4,
               max_restarts=4, restart_window_s=60) as stack:
        stack.start(timeout=30)
        stack.processes["crashy"].kill()
        began = time.monotonic()
        with pytest.raises(CrashLoop) as raised:
            stack.supervise(handle_signals=False)
        took = time.monotonic() - began
    err = capsys.readouterr().err
    assert "restarting crashy (signal SIGKILL), attempt 1, in 0.1s" in err
    assert "restarting crashy (exit code 3), attempt 2, in 0.2s" in err
    assert "restarting crashy (exit code 3), attempt 3, in 0.4s" in err
    assert "restarting crashy (exit code 3), attempt 4, in 0.4s" in err
    assert "attempt 5" not in err
    assert took >= 0.1 + 0.2 + 0.4 + 0.4
    crash = raised.value
    assert (crash.name, crash.code, crash.restarts) == ("crashy", 3, 4)
    assert "crashy exited again (exit code 3) after 4 restarts within 60s; giving up" in str(crash)
    assert "[crashy] boom: no model here" in crash.tail
    assert stack.restarts == {"crashy": 4}


def test_a_killed_component_is_restarted_and_ready_again_while_the_others_keep_serving(
        tmp_path, capsys):
    one, other = _component(tmp_path, "one"), _component(tmp_path, "other")
    with Stack([one, other], tmp_path / "logs", backoff_initial_s=0.2) as stack:
        stack.start(timeout=30)
        first, other_pid = _answer(one), _answer(other)
        assert first is not None and other_pid is not None
        thread, stop, raised = _supervise(stack)
        try:
            os.kill(first, signal.SIGKILL)
            answers: list[int | None] = []

            def one_is_back() -> bool:
                answers.append(_answer(other))
                pid = _answer(one)
                return pid is not None and pid != first

            _until(one_is_back)
            _until(lambda: stack.processes["one"].starts == 2)
        finally:
            stop.set()
            thread.join(10)
        assert not raised
        assert set(answers) == {other_pid}  # the other one answered, the same process, throughout
        assert stack.processes["other"].starts == 1
        assert stack.restarts == {"one": 1, "other": 0}
        assert stack.tail("one").count("[one] serving") == 2
    err = capsys.readouterr().err
    assert "restarting one (signal SIGKILL), attempt 1, in 0.2s" in err


def test_a_component_that_stays_up_starts_its_backoff_over(tmp_path, capsys):
    one = _component(tmp_path, "one")
    with Stack([one], tmp_path / "logs", backoff_initial_s=0.2, backoff_reset_s=0.5) as stack:
        stack.start(timeout=30)
        thread, stop, raised = _supervise(stack)
        try:
            for starts in (2, 3):
                pid = _answer(one)
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                _until(lambda s=starts, p=pid: stack.processes["one"].starts == s
                       and _answer(one) not in (None, p))
                time.sleep(1.5)  # ready longer than backoff_reset_s
        finally:
            stop.set()
            thread.join(10)
    err = capsys.readouterr().err
    assert not raised
    assert err.count("restarting one (signal SIGKILL), attempt 1, in 0.2s") == 2
    assert "one is ready again" in err


def test_supervise_returns_the_signal_that_stopped_it(tmp_path):
    one = _component(tmp_path, "one")
    original = signal.getsignal(signal.SIGTERM)

    def send_once_handled() -> None:
        _until(lambda: signal.getsignal(signal.SIGTERM) is not original, within=30)
        os.kill(os.getpid(), signal.SIGTERM)

    with Stack([one], tmp_path / "logs") as stack:
        stack.start(timeout=30)
        sender = threading.Thread(target=send_once_handled, daemon=True)
        sender.start()
        assert stack.supervise() == "SIGTERM"
        sender.join(5)
        assert stack.processes["one"].running  # the caller stops them
    assert signal.getsignal(signal.SIGTERM) is original
