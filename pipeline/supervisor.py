"""The local stack: start shopserve's servers as child processes, wait until ready, stop cleanly.

Used by ``shopserve up`` (``make up``), the benchmarks and the load tests. Each component runs
exactly as in a pod (``python -m <package>``), configured by environment variables, bound to
127.0.0.1, as a :class:`shopserve.process.ChildProcess` (own process group, optional CPU set, log
file, readiness URL, SIGTERM then SIGKILL).
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shopserve.process import POLL_INTERVAL_S, ChildProcess, read_tail

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

    def process(self, log_path: Path) -> ChildProcess:
        """The child process that runs this component, its output going to ``log_path``."""
        return ChildProcess(
            self.name, [sys.executable, "-m", self.module],
            env={"PYTHONUNBUFFERED": "1", **self.env}, log_path=log_path,
            ready=self.url + self.ready_path, cpus=self.cpus,
        )


class Stack:
    """A set of running components; a context manager that always stops them.

    Args:
        components: Servers to start, in order (dependencies first).
        log_dir: Each component's output goes to ``<log_dir>/<name>.log``.
    """

    def __init__(self, components: Sequence[Component], log_dir: Path) -> None:
        self.components = list(components)
        self.log_dir = Path(log_dir)
        self.processes: dict[str, ChildProcess] = {}

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
        for comp in self.components:
            self.processes[comp.name] = comp.process(self.log_path(comp.name))
            self.processes[comp.name].start()
        # All start at once and are probed in turn, so each one's time to ready is its own.
        ready: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while True:
            for comp in self.components:
                child = self.processes[comp.name]
                if comp.name not in ready and child.probe():  # raises if it exited
                    ready[comp.name] = time.monotonic() - child.started_at
            missing = [c.name for c in self.components if c.name not in ready]
            if not missing:
                return ready
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout:.0f}s: {', '.join(missing)}\n"
                                   + "\n".join(self.tail(m) for m in missing))
            time.sleep(POLL_INTERVAL_S)

    def tail(self, name: str, lines: int = 30) -> str:
        """The last lines a component printed."""
        return read_tail(self.log_path(name), name, lines)

    def stop(self, timeout: float = 15.0, names: Sequence[str] | None = None) -> None:
        """SIGTERM components (all by default, in reverse order), SIGKILL any left after ``timeout``."""
        chosen = [n for n in reversed(list(self.processes)) if names is None or n in names]
        for name in chosen:
            self.processes[name].terminate()
        deadline = time.monotonic() + timeout
        for name in chosen:
            self.processes.pop(name).stop(max(0.1, deadline - time.monotonic()))

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
