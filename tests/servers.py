"""Start the project's real servers as child processes on free loopback ports, for tests.

Servers run in their own processes (:class:`shopserve.process.ChildProcess`, as in the local
stack): the test process never imports kserve, so it may use ``tritonclient.grpc`` freely (the two
register the same protos, see DESIGN.md).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.supervisor import LOOPBACK, free_port
from shopserve.process import ChildProcess

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
