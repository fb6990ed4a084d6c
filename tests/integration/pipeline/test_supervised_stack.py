"""The real three servers under the real supervisor (``Stack.supervise``, ``shopserve up``).

One tiny bundle for the module. A recall predictor killed with SIGKILL is restarted while search
keeps answering 200 (degraded meanwhile); ``shopserve up`` stops everything and exits 0 on
SIGTERM, and exits 1 naming the component when one keeps crashing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.local import StackPorts, stack_components
from pipeline.supervisor import Stack
from shopserve.protocol import DEGRADED, QUERY, SEARCH_MODEL, USER_ID
from tests.servers import ROOT

pytestmark = pytest.mark.integration

#: Generous upstream budgets: the test machine is small and shared.
BUDGETS = {"SEARCH_RANKER_TIMEOUT_MS": "5000", "SEARCH_RECALL_TIMEOUT_MS": "2000"}
#: How soon a killed recall answers again (restart delay + its start on a busy 2-core machine).
RECALL_BACK_S = 30.0


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> Path:
    return tiny_bundle


def _search(url: str, user: int = 1) -> httpx.Response:
    body = {"inputs": [
        {"name": QUERY, "shape": [1], "datatype": "BYTES", "data": ["red sneakers"]},
        {"name": USER_ID, "shape": [1], "datatype": "INT64", "data": [user]},
    ], "parameters": {"top_n": 5}}
    return httpx.post(f"{url}/v2/models/{SEARCH_MODEL}/infer", json=body, timeout=30,
                      trust_env=False)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def supervised(bundle: Path, tmp_path: Path) -> Iterator[Stack]:
    components = stack_components(bundle, StackPorts.free(), search_env=BUDGETS)
    with Stack(components, tmp_path / "logs") as stack:
        stack.start(timeout=300)
        stop, raised = threading.Event(), []

        def run() -> None:
            try:
                stack.supervise(stop)
            except BaseException as exc:  # noqa: BLE001 - checked by the test
                raised.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield stack
        finally:
            stop.set()
            thread.join(15)
        assert not raised, raised


def test_a_killed_recall_is_restarted_while_search_keeps_answering(supervised, capfd):
    stack = supervised
    recall, search = (next(c for c in stack.components if c.name == n) for n in ("recall", "search"))
    assert _search(search.url).status_code == 200
    search_pid = stack.processes["search"].pid
    old = stack.processes["recall"].pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    statuses: list[int] = []
    degraded: list[str] = []
    back_after = None
    while time.monotonic() - killed < RECALL_BACK_S:
        response = _search(search.url)
        statuses.append(response.status_code)
        degraded.append((response.json().get("parameters") or {}).get(DEGRADED, ""))
        if stack.processes["recall"].pid != old and _ready(recall.url):
            back_after = time.monotonic() - killed
            break
        time.sleep(0.2)
    assert back_after is not None, stack.tail("recall")
    print(f"recall answered again {back_after:.1f}s after SIGKILL")
    assert set(statuses) == {200}
    assert any("recall" in d for d in degraded), degraded  # degraded while recall was down
    assert stack.processes["search"].pid == search_pid  # the others were left alone
    assert stack.processes["ranker"].starts == 1
    assert stack.restarts["recall"] == 1
    # Search uses the restarted recall again (no recall in `degraded` once its breaker closes).
    deadline = time.monotonic() + 30
    while "recall" in (last := (_search(search.url).json().get("parameters") or {}).get(
            DEGRADED, "")):
        assert time.monotonic() < deadline, last
        time.sleep(0.5)
    assert "restarting recall (signal SIGKILL), attempt 1, in 0.5s" in capfd.readouterr().err


class _Up:
    """``python -m pipeline.cli up`` in a child process, its output collected as it comes."""

    def __init__(self, bundle: Path) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - our own command
            [sys.executable, "-m", "pipeline.cli", "up", "--bundle", str(bundle),
             "--ports", "free"],
            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.proc.poll() is None, self.output
            assert time.monotonic() < deadline, self.output
            time.sleep(0.1)

    def finish(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _search_url(output: str) -> str:
    line = next(x for x in output.splitlines() if x.strip().startswith("search "))
    return line.split()[1]


def test_up_stops_everything_and_exits_0_on_sigterm(bundle):
    up = _Up(bundle)
    try:
        up.wait_for("Press Ctrl-C to stop.", timeout=300)
        url = _search_url(up.output)
        assert _search(url).status_code == 200
        up.proc.send_signal(signal.SIGTERM)
        assert up.finish(60) == 0, up.output
    finally:
        up.kill()
    assert "stopping ..." in up.output
    assert "stopped: SIGTERM received" in up.output
    assert not _ready(url)


def test_up_gives_up_on_a_component_that_keeps_crashing_and_exits_1(bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    up = _Up(copy)
    try:
        up.wait_for("Press Ctrl-C to stop.", timeout=300)
        url = _search_url(up.output)
        # From now on recall cannot start: its bundle is gone.
        shutil.rmtree(copy / "recall")
        os.kill(_recall_pid(copy), signal.SIGKILL)
        code = up.finish(180)
    finally:
        up.kill()
    out = up.output
    assert code == 1, out
    assert "restarting recall (signal SIGKILL), attempt 1, in 0.5s" in out
    assert "restarting recall (exit code" in out
    assert "recall exited again (exit code" in out and "giving up" in out
    assert "[recall] " in out.split("giving up")[1]  # its last log lines
    assert "stopped: recall exited again" in out.splitlines()[-1]
    assert not _ready(url)


def _recall_pid(bundle: Path) -> int:
    """The pid of the recall predictor serving ``bundle`` (found by its environment)."""
    wanted = f"RECALL_BUNDLE_DIR={bundle / 'recall'}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if wanted in environ and b"-m\0predictors.recall" in cmdline:
            return int(entry.name)
    raise AssertionError(f"no recall predictor for {bundle}")
