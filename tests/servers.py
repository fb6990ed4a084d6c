"""Start the project's real servers as child processes on free loopback ports, for tests.

Servers run in their own processes: the test process never imports kserve, so it may use
``tritonclient.grpc`` freely (the two register the same protos, see DESIGN.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from pipeline.supervisor import LOOPBACK, free_port

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Server:
    """A running server process and its addresses."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log_path: Path

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
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return int(self.process.returncode)


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
        RuntimeError: the process exited or never became ready (with its log).
    """
    http_port = http_port or free_port()
    grpc_port = grpc_port or free_port()
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    handle = open(log_path, "wb")  # noqa: SIM115 - owned by the process for its lifetime
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=full_env,
        stdout=handle, stderr=subprocess.STDOUT,
    )
    server = Server(process, http_port, grpc_port, log_path)
    deadline = time.monotonic() + timeout
    url = f"{server.http_url}{ready_path}"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{module} exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{module} not ready after {timeout:.0f}s:\n{server.log()}")
