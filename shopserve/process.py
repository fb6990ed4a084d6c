"""One child process of ours: start it, wait until it is ready, stop it with all it started.

The one place shopserve runs a server as a child process: the local stack
(:mod:`pipeline.supervisor`: ``shopserve up``, the benchmarks), the test servers
(``tests/servers.py``) and the ranker's launchers of ``tritonserver`` and TorchServe
(:mod:`predictors.ranker.server`) all go through :class:`ChildProcess`.

A child's life, as Kubernetes runs a container:

* it runs in a session of its own, so its own process group: a Ctrl-C in our terminal reaches only
  us, and whatever it starts (Triton's Python stubs, TorchServe's workers, uvicorn's workers) is
  in that group;
* optionally on a CPU set, as a pod's CPU limit would pin it (Linux);
* its output goes to a log file (or stays ours); errors quote the end of it;
* readiness: a URL polled until it answers 200 (or any check), failing at once if the child exits;
* stop: SIGTERM to the child alone (it drains and stops its own children, as a container's main
  process does), SIGKILL to the whole group when it is still there after a timeout, and SIGKILL to
  whatever is left in the group once it exited; the exit code is returned.

The child is reaped only by :meth:`ChildProcess.stop` (or the next start): until then an exited
child is a zombie, so its pid, which is also its group's id, is never reused by a stranger before
the group has been killed.

:meth:`ChildProcess.start` may be called again once the child has exited, on the same object (the
log is appended to, ``starts`` counts the runs): what a supervisor that restarts needs.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx

log = logging.getLogger(__name__)

#: Seconds between two readiness probes.
POLL_INTERVAL_S = 0.05
#: Bytes read from the end of a log for its tail (the tail of a multi-GB log stays cheap).
_TAIL_BYTES = 64 * 1024


class ChildExited(RuntimeError):
    """The child exited while we waited for it (its exit code and log tail are in the message).

    Attributes:
        name: The child's name.
        code: Its exit code (negative: killed by that signal).
    """

    def __init__(self, name: str, code: int | None, tail: str = "") -> None:
        super().__init__(f"{name} exited with {code}" + (f":\n{tail}" if tail else ""))
        self.name = name
        self.code = code


class NotReady(RuntimeError):
    """The child did not become ready in time (it is still running)."""


def read_tail(path: Path | None, label: str, lines: int | None = 30) -> str:
    """The last ``lines`` lines of a log (all of it for None), each prefixed ``  [label] ``."""
    if path is None or not path.is_file():
        return ""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        start = 0 if lines is None else max(0, size - _TAIL_BYTES)
        handle.seek(start)
        text = handle.read().decode(errors="replace").splitlines()
    if start > 0:
        text = text[1:]  # the first line read is cut
    chosen = text if lines is None else text[-lines:]
    return "\n".join(f"  [{label}] {line}" for line in chosen)


class ChildProcess:
    """A command run as a child process in its own session; a context manager that stops it.

    Args:
        name: Short name for messages and log tails (``recall``, ``tritonserver``).
        argv: The command line.
        env: Variables set over this process's environment.
        cwd: Working directory (ours when None).
        log_path: File that receives the child's stdout and stderr (replaced at the first start,
            appended to at later ones); None: they stay ours.
        quiet: Discard stdout (stderr still goes to ``log_path`` or ours): for chatty servers
            that keep a log file of their own.
        tail_path: File whose end errors quote; ``log_path`` when None.
        ready: When the child is ready: a URL that answers 200, a check that returns True, or
            None for as soon as it runs.
        cpus: CPUs the child (and every thread and child it starts) may run on, as a pod's CPU
            set would; None leaves it on all of ours (Linux only).
        stop_timeout: Seconds :meth:`stop` waits after SIGTERM before SIGKILL.
        tail_lines: Lines of the log quoted in errors (None: all of it).

    Example:
        >>> with ChildProcess("probe", ["python", "-m", "http.server", "8123"],
        ...                   ready="http://127.0.0.1:8123/") as child:
        ...     child.wait_ready(10)
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log_path: Path | None = None,
        quiet: bool = False,
        tail_path: Path | None = None,
        ready: str | Callable[[], bool] | None = None,
        cpus: frozenset[int] | None = None,
        stop_timeout: float = 15.0,
        tail_lines: int | None = 30,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.env = dict(env or {})
        self.cwd = cwd
        self.log_path = None if log_path is None else Path(log_path)
        self.quiet = quiet
        self.tail_path = tail_path
        self.ready = ready
        self.cpus = cpus
        self.stop_timeout = stop_timeout
        self.tail_lines = tail_lines
        #: How many times the child was started.
        self.starts = 0
        #: ``time.monotonic()`` of the latest start.
        self.started_at = 0.0
        self._popen: subprocess.Popen[bytes] | None = None
        self._exit_code: int | None = None
        self._terminated = False

    # ------------------------------------------------------------------------------- state

    @property
    def popen(self) -> subprocess.Popen[bytes] | None:
        """The latest run's ``Popen`` (None before the first start)."""
        return self._popen

    @property
    def pid(self) -> int | None:
        """The latest run's pid, which is also its process group's id."""
        return None if self._popen is None else self._popen.pid

    @property
    def running(self) -> bool:
        """Started and not exited."""
        return self._popen is not None and self.poll() is None

    def poll(self) -> int | None:
        """The exit code once the child has exited, else None; does not reap it."""
        popen = self._popen
        if popen is None:
            return None
        if popen.returncode is not None:
            return popen.returncode
        if self._exit_code is None:
            if not hasattr(os, "waitid"):  # not Linux: reap (a tiny pid-reuse window at stop)
                return popen.poll()
            try:
                info = os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # reaped elsewhere (someone called ``popen.poll()``)
                return popen.poll()
            if info is not None:
                self._exit_code = _exit_code(info)
        return self._exit_code

    def wait(self, timeout: float | None = None) -> int:
        """Block until the child exits (without reaping it); its exit code.

        Raises:
            subprocess.TimeoutExpired: still running after ``timeout`` seconds.
            RuntimeError: never started.
        """
        popen = self._require()
        if timeout is None and hasattr(os, "waitid") and self.poll() is None:
            try:  # a signal handler may run meanwhile: the call resumes after it (PEP 475)
                info = os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:  # reaped elsewhere
                popen.wait()
            else:
                if info is not None:
                    self._exit_code = _exit_code(info)
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.argv, timeout or 0.0)
            time.sleep(0.05)
        return code

    # ----------------------------------------------------------------------------- control

    def start(self) -> None:
        """Start the child (again, if an earlier run has exited).

        Raises:
            RuntimeError: it is running already.
            OSError: the command could not be started, or the CPU set not applied.
        """
        if self.running:
            raise RuntimeError(f"{self.name} is running already (pid {self.pid})")
        if self._popen is not None:
            self.stop(0)  # reap the earlier run and kill what is left of its group
        handle: IO[bytes] | None = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.log_path, "ab" if self.starts else "wb")  # noqa: SIM115
        try:
            self._popen = subprocess.Popen(  # noqa: S603 - our own commands
                self.argv, env={**os.environ, **self.env}, cwd=self.cwd,
                stdout=subprocess.DEVNULL if self.quiet else handle, stderr=handle,
                start_new_session=True,
            )
        finally:
            if handle is not None:
                handle.close()  # the child has its own copy
        self._exit_code = None
        self._terminated = False
        self.starts += 1
        self.started_at = time.monotonic()
        if self.cpus is not None:
            try:
                # Popen returns once the child has exec'd, before it starts any thread or child
                # of its own: all of them inherit this CPU set.
                os.sched_setaffinity(self._popen.pid, self.cpus)
            except OSError:
                self.kill()
                self._popen.wait()
                raise

    def terminate(self) -> None:
        """SIGTERM the child, once, without waiting: safe inside a signal handler."""
        if self._popen is not None and not self._terminated and self.poll() is None:
            self._terminated = True
            os.kill(self._popen.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the child's whole process group."""
        if self._popen is not None:
            try:
                os.killpg(self._popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM the child, SIGKILL its group if it still runs after ``timeout`` (default
        ``stop_timeout``); then kill what is left of the group and reap the child.

        Returns:
            The exit code (negative: killed by that signal); None if it was never started.
        """
        if self._popen is None:
            return None
        timeout = self.stop_timeout if timeout is None else timeout
        if self.poll() is None:
            self.terminate()
            try:
                self.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.0fs; killing it", self.name, timeout)
                self.kill()
                self.wait(5.0)
        # Nothing the child started may outlive it (the child is unreaped: the group id is ours).
        self.kill()
        code = self._popen.wait()
        self._exit_code = code
        return code

    # --------------------------------------------------------------------------- readiness

    def probe(self) -> bool:
        """One readiness check: True when ready.

        Raises:
            ChildExited: the child has exited (or was never started).
        """
        code = self.poll()
        if self._popen is None or code is not None:
            raise ChildExited(self.name, code, self.tail(self.tail_lines))
        if self.ready is None:
            return True
        if callable(self.ready):
            return bool(self.ready())
        try:
            # Loopback: never through a proxy the environment may name.
            return httpx.get(self.ready, timeout=1.0, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float) -> float:
        """Probe until ready.

        Returns:
            Seconds from the start to ready.

        Raises:
            ChildExited: the child exited first (the tail of its log is in the message).
            NotReady: not ready within ``timeout`` seconds; the child keeps running.
        """
        deadline = time.monotonic() + timeout
        while not self.probe():
            if time.monotonic() > deadline:
                tail = self.tail(self.tail_lines)
                raise NotReady(f"{self.name} not ready after {timeout:.0f}s"
                               + (f":\n{tail}" if tail else ""))
            time.sleep(POLL_INTERVAL_S)
        return time.monotonic() - self.started_at

    # --------------------------------------------------------------------------------- logs

    def tail(self, lines: int | None = 30) -> str:
        """The last ``lines`` lines of the log (``tail_path`` or ``log_path``), prefixed."""
        return read_tail(self.tail_path or self.log_path, self.name, lines)

    def log(self) -> str:
        """Everything the child wrote to ``log_path`` so far."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return self.log_path.read_text(errors="replace")

    # ------------------------------------------------------------------------------ helpers

    def _require(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._popen

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "never started" if self._popen is None else (
            "running" if self.running else f"exited {self.poll()}")
        return f"ChildProcess({self.name!r}, pid={self.pid}, {state})"


def describe_exit(code: int | None) -> str:
    """How a child ended, for messages: ``exit code 3``, ``signal SIGKILL`` (from a negative
    ``Popen``-style code), or ``still running`` for None."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _exit_code(info: os.waitid_result) -> int:
    """A ``Popen``-style exit code: the status, or minus the signal that killed the child."""
    if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
        return -info.si_status
    return info.si_status
