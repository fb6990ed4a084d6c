"""The local stack: start shopserve's servers as child processes, wait until ready, stop cleanly.

Used by ``shopserve up`` (``make up``) and by the load tests. Each component runs exactly as in a
pod (``python -m <package>``), configured by environment variables, bound to 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass
class Component:
    """One server of the stack.

    Attributes:
        name: Short name for messages (``recall``, ``ranker``, ``search``).
        module: Module run with ``python -m``.
        http_port: REST port (readiness is polled there).
        env: Environment variables that configure it.
        ready_path: Readiness endpoint.
        cpus: CPUs the process (and every thread and child it starts) may run on, as a pod's CPU
            set would; None leaves it on all of ours (Linux only).
    """

    name: str
    module: str
    http_port: int
    env: Mapping[str, str] = field(default_factory=dict)
    ready_path: str = "/v2/health/ready"
    cpus: frozenset[int] | None = None

    @property
    def url(self) -> str:
        """Base REST URL."""
        return f"http://{LOOPBACK}:{self.http_port}"


class Stack:
    """A set of running components; a context manager that always stops them.

    Args:
        components: Servers to start, in order (dependencies first).
        log_dir: Each component's output goes to ``<log_dir>/<name>.log``.
    """

    def __init__(self, components: Sequence[Component], log_dir: Path) -> None:
        self.components = list(components)
        self.log_dir = Path(log_dir)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_path(self, name: str) -> Path:
        """Where a component's output goes."""
        return self.log_dir / f"{name}.log"

    def start(self, timeout: float = 120.0) -> dict[str, float]:
        """Start every component and wait until all report ready.

        Returns:
            Seconds from start to ready per component.

        Raises:
            RuntimeError: a component exited or did not become ready in time (the tail of its log
                is in the message); already started components keep running until :meth:`stop`.
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        started = {}
        for comp in self.components:
            handle = open(self.log_path(comp.name), "wb")  # noqa: SIM115 - child owns it
            self.processes[comp.name] = subprocess.Popen(
                [sys.executable, "-m", comp.module],
                env={**os.environ, "PYTHONUNBUFFERED": "1", **comp.env},
                stdout=handle, stderr=subprocess.STDOUT,
                # Own process group: Ctrl-C in the terminal reaches only us; we stop children.
                start_new_session=True,
            )
            if comp.cpus is not None:
                # Popen returns once the child has exec'd the interpreter, before it starts any
                # thread or child of its own: all of them inherit this CPU set.
                os.sched_setaffinity(self.processes[comp.name].pid, comp.cpus)
            started[comp.name] = time.monotonic()
        ready: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as client:
            while len(ready) < len(self.components):
                for comp in self.components:
                    if comp.name in ready:
                        continue
                    proc = self.processes[comp.name]
                    if proc.poll() is not None:
                        raise RuntimeError(f"{comp.name} exited with {proc.returncode}:\n"
                                           f"{self.tail(comp.name)}")
                    try:
                        if client.get(comp.url + comp.ready_path).status_code == 200:
                            ready[comp.name] = time.monotonic() - started[comp.name]
                    except httpx.HTTPError:
                        pass
                if time.monotonic() > deadline:
                    missing = [c.name for c in self.components if c.name not in ready]
                    raise RuntimeError(f"not ready after {timeout:.0f}s: {', '.join(missing)}\n"
                                       + "\n".join(self.tail(m) for m in missing))
                time.sleep(0.2)
        return ready

    def tail(self, name: str, lines: int = 30) -> str:
        """The last lines a component printed."""
        path = self.log_path(name)
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(f"  [{name}] {line}" for line in text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0, names: Sequence[str] | None = None) -> None:
        """SIGTERM components (all by default, in reverse order), SIGKILL any left after ``timeout``."""
        chosen = [n for n in reversed(list(self.processes)) if names is None or n in names]
        for name in chosen:
            if self.processes[name].poll() is None:
                self.processes[name].send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name in chosen:
            proc = self.processes.pop(name)
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def wait(self) -> None:
        """Block until a component dies or SIGINT/SIGTERM arrives, then return (caller stops)."""
        stop = False

        def _handler(signum: int, frame: object) -> None:
            nonlocal stop
            stop = True

        previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop:
                dead = [n for n, p in self.processes.items() if p.poll() is not None]
                if dead:
                    print(f"{', '.join(dead)} stopped unexpectedly:\n"
                          + "\n".join(self.tail(n) for n in dead), file=sys.stderr)
                    return
                time.sleep(0.5)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
