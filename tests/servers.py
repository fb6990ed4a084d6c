"""Start the project's real servers as child processes on free loopback ports, for tests.

Servers run in their own processes (:class:`shopserve.process.ChildProcess`, as in the local
stack): the test process never imports kserve, so it may use ``tritonclient.grpc`` freely (the two
register the same protos, see DESIGN.md).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil

from pipeline.supervisor import LOOPBACK, free_port
from shopserve.process import ChildProcess
from shopserve.protocol import SEARCH_MODEL

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["LOOPBACK", "ROOT", "Server", "free_port", "start_server"]


@dataclass
class Server:
    """A running server process and its addresses."""

    child: ChildProcess
    http_port: int
    grpc_port: int

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The server's ``Popen``."""
        assert self.child.popen is not None
        return self.child.popen

    @property
    def log_path(self) -> Path:
        """File that receives the server's stdout and stderr."""
        assert self.child.log_path is not None
        return self.child.log_path

    @property
    def http_url(self) -> str:
        """Base URL of the REST endpoints."""
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def http_address(self) -> str:
        """``host:port`` of REST, as tritonclient wants it."""
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        """``host:port`` of gRPC."""
        return f"{LOOPBACK}:{self.grpc_port}"

    def log(self) -> str:
        """What the server printed so far."""
        return self.child.log()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        return int(self.child.stop(timeout) or 0)


def start_server(
    module: str,
    env: Mapping[str, str],
    log_path: Path,
    *,
    args: Sequence[str] = (),
    http_port: int | None = None,
    grpc_port: int | None = None,
    ready_path: str = "/v2/health/ready",
    timeout: float = 90.0,
) -> Server:
    """Run ``python -m module`` and wait until ``ready_path`` answers 200.

    Args:
        module: Module to run.
        env: Extra environment (ports can be passed here or as flags in ``args``).
        log_path: File that receives the server's stdout and stderr.
        args: Command-line flags.
        http_port, grpc_port: Ports the server was told to use.
        ready_path: Readiness endpoint to poll.
        timeout: Seconds to wait for readiness.

    Raises:
        RuntimeError: the process exited or never became ready (with its whole log); it is
            stopped first.
    """
    http_port = http_port or free_port()
    grpc_port = grpc_port or free_port()
    child = ChildProcess(
        module, [sys.executable, "-m", module, *args], env={"PYTHONUNBUFFERED": "1", **env},
        cwd=ROOT, log_path=log_path, ready=f"http://{LOOPBACK}:{http_port}{ready_path}",
        tail_lines=None,
    )
    child.start()
    try:
        child.wait_ready(timeout)
    except BaseException:
        child.stop()
        raise
    return Server(child, http_port, grpc_port)


def start_recall(bundle: Path, logs: Path, http_port: int, grpc_port: int) -> Server:
    """The recall predictor on a bundle's ``recall`` component (a fresh log per start)."""
    return start_server(
        "predictors.recall",
        {"RECALL_BUNDLE_DIR": str(bundle / "recall"), "RECALL_HTTP_PORT": str(http_port),
         "RECALL_GRPC_PORT": str(grpc_port)},
        logs / f"recall-{time.monotonic_ns()}.log", http_port=http_port, grpc_port=grpc_port,
    )


def start_ranker(bundle: Path, logs: Path, http_port: int, grpc_port: int) -> Server:
    """The local Triton ranker on a bundle's ``ranker`` component (a fresh log per start)."""
    return start_server(
        "predictors.ranker",
        {"RANKER_BUNDLE": str(bundle / "ranker"), "RANKER_HTTP_PORT": str(http_port),
         "RANKER_GRPC_PORT": str(grpc_port), "RANKER_METRICS_PORT": str(free_port())},
        logs / f"ranker-{time.monotonic_ns()}.log", http_port=http_port, grpc_port=grpc_port,
        timeout=180,
    )


def start_search(bundle: Path, log: Path, recall_host: str, ranker_host: str,
                 env: Mapping[str, str] | None = None) -> Server:
    """The search transformer on a bundle, its recall and ranker at the given gRPC addresses, as
    KServe starts it (flags ``--predictor_host`` and ``--model_name``); ``env`` adds settings.

    The query encoder is asked at the ranker's address: the ranker launcher's Triton serves it
    beside the ranker, as the local stack's does.
    """
    http_port, grpc_port = free_port(), free_port()
    return start_server(
        "transformers_pre",
        {"SEARCH_BUNDLE_DIR": str(bundle), "SEARCH_RECALL_HOST": recall_host,
         "SEARCH_SEMANTIC_HOST": ranker_host, **(env or {})},
        log,
        args=["--http_port", str(http_port), "--grpc_port", str(grpc_port),
              "--predictor_host", ranker_host, "--model_name", SEARCH_MODEL],
        http_port=http_port, grpc_port=grpc_port,
    )


def eventually(check: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    """Whether ``check`` holds within ``timeout_s`` (asked every half second, and once more at
    the end)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return check()


# ------------------------------------------------------------------ a Triton launcher's models

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_call(url: str, data: bytes | None = None) -> tuple[int | None, bytes]:
    """A v2 call with urllib (no client library): status and body; None when nothing answers."""
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with _NO_PROXY.open(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return None, b""


def model_stubs(server: Server, model: str) -> list[psutil.Process]:
    """The live Python-backend stub processes of ``model`` under a ranker launcher's tritonserver
    (each served model has its own: ``bert-ranker``, ``seq-recommender``)."""
    found = []
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if (child.name().startswith("triton_python") and child.status() != psutil.STATUS_ZOMBIE
                    and any(f"/{model}/" in arg for arg in child.cmdline())):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def call_until_recovered(call: Callable[[], tuple[int | None, T]], deadline_s: float
                         ) -> tuple[int | None, T, bool]:
    """Call every 20 ms until a call answers 200 after one did not, or ``deadline_s`` passes (a
    killed model process recovering): the last status and body, and whether a call failed."""
    started = time.monotonic()
    failed = False
    while True:
        status, body = call()
        if status == 200 and failed or time.monotonic() - started >= deadline_s:
            return status, body, failed
        failed = failed or status != 200
        time.sleep(0.02)


class ReadinessWatch:
    """Polls a model's and its server's readiness on a thread; records each status seen."""

    def __init__(self, server: Server, model: str) -> None:
        self.server = server
        self.model = model
        self.seen: set[tuple[str, int | None]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for path in (f"/v2/models/{self.model}/ready", "/v2/health/ready"):
                self.seen.add((path, http_call(f"{self.server.http_url}{path}")[0]))
            time.sleep(0.005)

    def __enter__(self) -> ReadinessWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def went_not_ready(self, path: str) -> bool:
        """Whether ``path`` answered anything but 200 while watched."""
        return any(p == path and status != 200 for p, status in self.seen)
