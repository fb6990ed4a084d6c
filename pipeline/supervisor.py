"""The local stack: start shopserve's servers as child processes, wait until ready, keep them
running as Kubernetes would, stop cleanly.

Used by ``shopserve up`` (``make up``), the tests, the benchmarks and the load tests. Each
component runs exactly as in a pod (``python -m <package>``), configured by environment variables,
bound to 127.0.0.1, as a :class:`shopserve.process.ChildProcess` (own process group, optional CPU
set, log file, readiness URL, SIGTERM then SIGKILL).

:meth:`Stack.supervise` is the restart policy of a pod (``restartPolicy: Always`` with
CrashLoopBackOff): a component that exits is started again after a delay that doubles from
:attr:`Stack.backoff_initial_s` up to :attr:`Stack.backoff_max_s` and falls back to the initial one
once the component has stayed ready for :attr:`Stack.backoff_reset_s`; the others keep running.
After more than :attr:`Stack.max_restarts` restarts of one component within
:attr:`Stack.restart_window_s` it gives up (:class:`CrashLoop`), naming the component with the end
of its log.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shopserve.process import POLL_INTERVAL_S, ChildProcess, describe_exit, read_tail

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


class CrashLoop(RuntimeError):
    """A component kept exiting: :meth:`Stack.supervise` gave up on it.

    Attributes:
        name: The component.
        code: Its last exit code (negative: killed by that signal; None: it could not be started).
        restarts: Its restarts within the window before it exited again.
        window_s: The window, seconds.
        tail: The last lines of its log (prefixed ``  [name] ``).
    """

    def __init__(self, name: str, code: int | None, restarts: int, window_s: float,
                 tail: str, why: str | None = None) -> None:
        why = why or describe_exit(code)
        super().__init__(f"{name} exited again ({why}) after {restarts} restarts within "
                         f"{window_s:.0f}s; giving up" + (f". Its last lines:\n{tail}" if tail else ""))
        self.name = name
        self.code = code
        self.restarts = restarts
        self.window_s = window_s
        self.tail = tail


@dataclass
class _Watch:
    """What the supervisor knows of one component between two looks."""

    #: Consecutive crashes since it last stayed ready a while (the backoff's exponent).
    attempt: int = 0
    #: ``time.monotonic()`` of each restart within the window.
    restarts: deque[float] = field(default_factory=deque)
    #: When an exited component is to be started again (None: it is not waiting).
    restart_at: float | None = None
    #: Started and not yet seen ready.
    starting: bool = False
    #: When it was last seen becoming ready (None: not ready since its latest start).
    ready_since: float | None = None
    #: When readiness was last probed.
    probed_at: float = 0.0


class Stack:
    """A set of running components; a context manager that always stops them.

    Args:
        components: Servers to start, in order (dependencies first).
        log_dir: Each component's output goes to ``<log_dir>/<name>.log``.
        backoff_initial_s, backoff_max_s, backoff_reset_s, max_restarts, restart_window_s,
        ready_timeout_s: Override the restart policy's class attributes of the same names.
    """

    #: Delay before the first restart of a component; doubles with each consecutive crash.
    backoff_initial_s: float = 0.5
    #: The longest delay before a restart.
    backoff_max_s: float = 10.0
    #: A component ready this long after a restart starts its backoff over.
    backoff_reset_s: float = 30.0
    #: Restarts of one component allowed within :attr:`restart_window_s`; one more crash gives up.
    max_restarts: int = 5
    #: The window restarts are counted in, seconds: long enough that a component which takes a
    #: while to fail (a model load) is still seen crash-looping once its backoff is capped.
    restart_window_s: float = 120.0
    #: A restarted component not ready within this many seconds is killed (and restarted), as a
    #: failing startup probe would have it.
    ready_timeout_s: float = 180.0
    #: Seconds between two readiness probes of a restarted component.
    probe_interval_s: float = 0.25
    #: Lines of a component's log quoted when it exits or the supervisor gives up.
    tail_lines: int = 20

    def __init__(
        self,
        components: Sequence[Component],
        log_dir: Path,
        *,
        backoff_initial_s: float | None = None,
        backoff_max_s: float | None = None,
        backoff_reset_s: float | None = None,
        max_restarts: int | None = None,
        restart_window_s: float | None = None,
        ready_timeout_s: float | None = None,
    ) -> None:
        self.components = list(components)
        self.log_dir = Path(log_dir)
        self.processes: dict[str, ChildProcess] = {}
        #: Restarts per component since :meth:`supervise` began.
        self.restarts: dict[str, int] = {}
        overrides = {
            "backoff_initial_s": backoff_initial_s, "backoff_max_s": backoff_max_s,
            "backoff_reset_s": backoff_reset_s, "max_restarts": max_restarts,
            "restart_window_s": restart_window_s, "ready_timeout_s": ready_timeout_s,
        }
        for name, value in overrides.items():
            if value is not None:
                setattr(self, name, value)

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

    # -------------------------------------------------------------------------- supervision

    def backoff(self, attempt: int) -> float:
        """Seconds before restart number ``attempt`` (1, 2, ...) of a crash loop."""
        return float(min(self.backoff_max_s, self.backoff_initial_s * 2 ** max(0, attempt - 1)))

    def supervise(self, stop: threading.Event | None = None, *, handle_signals: bool = True,
                  tick_s: float = 0.1) -> str:
        """Keep the started components running until asked to stop; the caller stops them.

        A component that exits is restarted after its backoff, each restart reported on stderr
        (``restarting recall (signal SIGKILL), attempt 1, in 0.5s``) with the end of its log, and
        again once it is ready; the others are left alone.

        Args:
            stop: Returns once this is set.
            handle_signals: Also return on SIGINT or SIGTERM (only from the main thread).
            tick_s: Seconds between two looks at the children.

        Returns:
            Why it returned: ``"SIGTERM"``, ``"SIGINT"`` or ``"stop requested"``.

        Raises:
            CrashLoop: a component exited again after :attr:`max_restarts` restarts within
                :attr:`restart_window_s`; the others still run until :meth:`stop`.
        """
        received: list[str] = []

        def _handler(signum: int, frame: object) -> None:
            received.append(signal.Signals(signum).name)

        previous: dict[int, object] = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
        watches = {name: _Watch() for name in self.processes}
        for name in self.processes:
            self.restarts.setdefault(name, 0)
            watches[name].ready_since = time.monotonic()  # start() returned: all were ready
        try:
            while True:
                if received:
                    return received[0]
                if stop is not None and stop.is_set():
                    return "stop requested"
                for name in list(self.processes):
                    if name in watches:
                        self._look_after(name, watches[name])
                if stop is not None:
                    stop.wait(tick_s)
                else:
                    time.sleep(tick_s)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)  # type: ignore[arg-type]

    def _look_after(self, name: str, watch: _Watch) -> None:
        """One look at one component: restart it when due, note when it is ready again."""
        child = self.processes[name]
        now = time.monotonic()
        if watch.restart_at is not None:
            if now >= watch.restart_at:
                watch.restart_at = None
                try:
                    child.start()
                except OSError as exc:
                    self._crashed(name, watch, None, f"could not start: {exc}")
                    return
                watch.starting, watch.ready_since = True, None
            return
        code = child.poll()
        if code is not None:
            self._crashed(name, watch, code, describe_exit(code))
            return
        if watch.starting and now - watch.probed_at >= self.probe_interval_s:
            watch.probed_at = now
            try:
                ready = child.probe()
            except RuntimeError:  # exited between poll and probe: seen at the next look
                return
            if ready:
                watch.starting, watch.ready_since = False, now
                _say(f"{name} is ready again ({now - child.started_at:.1f}s after restart "
                     f"{watch.attempt})")
            elif now - child.started_at > self.ready_timeout_s:
                _say(f"{name} not ready {self.ready_timeout_s:.0f}s after restart "
                     f"{watch.attempt}; killing it")
                child.kill()
        elif (watch.attempt and watch.ready_since is not None
              and now - watch.ready_since >= self.backoff_reset_s):
            watch.attempt = 0  # stayed up: the next crash starts the backoff over

    def _crashed(self, name: str, watch: _Watch, code: int | None, why: str) -> None:
        """A component exited (or could not start): schedule its restart, or give up."""
        now = time.monotonic()
        while watch.restarts and now - watch.restarts[0] > self.restart_window_s:
            watch.restarts.popleft()
        tail = self.tail(name, self.tail_lines)
        if len(watch.restarts) >= self.max_restarts:
            raise CrashLoop(name, code, len(watch.restarts), self.restart_window_s, tail, why)
        watch.attempt += 1
        watch.restarts.append(now)
        self.restarts[name] = self.restarts.get(name, 0) + 1
        delay = self.backoff(watch.attempt)
        watch.restart_at, watch.starting, watch.ready_since = now + delay, False, None
        _say(f"restarting {name} ({why}), attempt {watch.attempt}, in {delay:.1f}s"
             + (f"; its last lines:\n{self.tail(name, 5)}" if tail else ""))


def _say(message: str) -> None:
    """A supervisor's line on stderr."""
    print(f"[supervisor] {message}", file=sys.stderr, flush=True)
