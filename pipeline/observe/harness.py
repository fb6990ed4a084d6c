"""What ``shopserve drill`` and ``shopserve soak`` share: the supervised local stack, a steady
open-loop load that keeps a record of every request, and the stack's processes.

* :func:`supervised_stack` starts the stack of ``shopserve up`` on free ports and runs
  :meth:`pipeline.supervisor.Stack.supervise` in a background thread, so a component that exits is
  restarted as under ``up``.
* :class:`SteadyLoad` sends the v2 traffic mix (:mod:`loadtest.traffic`) at a fixed rate from an
  asyncio loop in a thread of its own, whether or not earlier answers came back (open loop, as
  shoppers do), on a fresh connection each time: a refused connection is then told apart from a
  request the server accepted and lost. Each request leaves a :class:`Record` (start, latency,
  status, error, the ``degraded`` stages of the answer). locust reports aggregates only; the drill
  needs each request to attribute failures and time recovery.
* :data:`PROCESSES`, :func:`find_process`, :func:`cpu_model`: the serving processes of the stack
  (the ranker's launcher, the ``tritonserver`` it starts and Triton's Python-backend model process)
  and the machine, for the drill's faults, the soak's RSS and ``bench/footprint.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import platform
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from loadtest.traffic import INFER_PATH, TrafficMix
from pipeline.local import DEFAULT_BUNDLE, StackPorts, stack_components
from pipeline.supervisor import Stack
from shopserve.protocol import DEGRADED, RANKER_MODEL, SEQUENCE_MODEL

#: :attr:`Record.error` of a request whose connection was refused (nothing was accepted).
REFUSED = "refused"
#: The upstream whose degradation means an answer was not fully ranked.
RANKER_STAGE = "ranker"

#: Processes of the stack, by how they are found: (row label, component, executable name or None
#: for the component's own process, the served model a stub runs or None). Each model served by the
#: local Triton has a stub of its own.
PROCESSES: tuple[tuple[str, str, str | None, str | None], ...] = (
    ("search (transformers_pre)", "search", None, None),
    ("recall (predictors.recall)", "recall", None, None),
    ("ranker launcher (predictors.ranker)", "ranker", None, None),
    ("tritonserver", "ranker", "tritonserver", None),
    ("Triton Python-backend model (stub)", "ranker", "triton_python_backend_stub", RANKER_MODEL),
    ("Triton Python-backend sequence model (stub)", "ranker", "triton_python_backend_stub",
     SEQUENCE_MODEL),
)
TRITON_EXE = "tritonserver"
STUB_EXE = "triton_python_backend_stub"


# ------------------------------------------------------------------------------ records


def parse_degraded(value: object) -> tuple[str, ...]:
    """The reasons in a response's ``degraded`` parameter.

    The transformer sends a comma-separated list of stage names (``"recall,ranker"``, empty when
    nothing degraded); a reason may carry a detail after a colon (``ranker:timeout``).

    >>> parse_degraded("ranker, recall")
    ('ranker', 'recall')
    """
    if not isinstance(value, str):
        return ()
    return tuple(r for r in (part.strip() for part in value.split(",")) if r)


def stage_of(reason: str) -> str:
    """The stage a degradation reason names (``ranker:timeout`` -> ``ranker``)."""
    return reason.split(":", 1)[0].strip()


@dataclass(frozen=True)
class Record:
    """One request of a :class:`SteadyLoad`.

    Attributes:
        start: ``time.monotonic()`` when it was sent.
        latency_s: Seconds until its answer (or its error).
        status: The HTTP status, None when no answer came.
        error: ``""`` when answered, :data:`REFUSED` when the connection was refused, else the
            exception's class name (a timeout, a connection reset: the request was lost).
        degraded: The answer's ``degraded`` reasons (:func:`parse_degraded`).
    """

    start: float
    latency_s: float
    status: int | None
    error: str = ""
    degraded: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Answered 200."""
        return self.status == 200 and not self.error

    @property
    def refused(self) -> bool:
        """Its connection was refused: the server never accepted it."""
        return self.error == REFUSED

    @property
    def failed(self) -> bool:
        """Accepted (or at least not refused) and not answered 200."""
        return not self.ok and not self.refused

    @property
    def fully_ranked(self) -> bool:
        """Answered 200 and the ranker was not worked around."""
        return self.ok and not any(stage_of(r) == RANKER_STAGE for r in self.degraded)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by the nearest-rank method; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# --------------------------------------------------------------------------------- load


class SteadyLoad:
    """Requests of the traffic mix at a fixed rate, recorded one by one.

    Args:
        url: Base URL of ``search``.
        mix: Where request bodies come from.
        rate: Requests per second.
        timeout_s: A request without an answer after this long counts as lost.
        seed: Seed of the mix's random stream.
    """

    def __init__(self, url: str, mix: TrafficMix, rate: float, timeout_s: float = 10.0,
                 seed: int = 0) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.url = url.rstrip("/") + INFER_PATH
        self.mix = mix
        self.rate = rate
        self.timeout_s = timeout_s
        self.rng = random.Random(seed)
        self.records: list[Record] = []
        # Start times of the requests sent and not answered yet (read from other threads).
        self._in_flight: dict[int, float] = {}
        self._in_flight_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start sending (from a thread of its own)."""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="steady-load",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> list[Record]:
        """Stop sending, wait for the answers still due; every record, in order of sending."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 10)
        return self.snapshot()

    def snapshot(self) -> list[Record]:
        """The records of the requests answered (or failed) so far, in order of sending."""
        return sorted(list(self.records), key=lambda r: r.start)

    async def _run(self) -> None:
        # A fresh connection per request (no keep-alive): a refused connect means the server
        # accepted nothing, and a server restart leaves no stale pooled connection behind.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        timeout = httpx.Timeout(self.timeout_s)
        pending: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
            due = time.monotonic()
            while not self._stop.is_set():
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(self._one(client, self.mix.sample(self.rng).body))
                pending.add(task)
                task.add_done_callback(pending.discard)
                due += 1.0 / self.rate
            if pending:
                await asyncio.gather(*pending)

    def oldest_in_flight(self) -> float | None:
        """When the oldest request still waiting for its answer was sent; None when none is."""
        with self._in_flight_lock:
            return min(self._in_flight.values(), default=None)

    async def _one(self, client: httpx.AsyncClient, body: Mapping[str, object]) -> None:
        start = time.monotonic()
        key = id(asyncio.current_task())
        with self._in_flight_lock:
            self._in_flight[key] = start
        try:
            await self._send(client, body, start)
        finally:
            with self._in_flight_lock:
                self._in_flight.pop(key, None)

    async def _send(self, client: httpx.AsyncClient, body: Mapping[str, object], start: float
                    ) -> None:
        try:
            response = await client.post(self.url, json=body)
        except httpx.ConnectError as exc:
            error = REFUSED if refused_connection(exc) else type(exc).__name__
            self.records.append(Record(start, time.monotonic() - start, None, error))
            return
        except httpx.HTTPError as exc:
            self.records.append(Record(start, time.monotonic() - start, None, type(exc).__name__))
            return
        degraded: tuple[str, ...] = ()
        if response.status_code == 200:
            try:
                degraded = parse_degraded((response.json().get("parameters") or {}).get(DEGRADED))
            except ValueError:
                self.records.append(Record(start, time.monotonic() - start, response.status_code,
                                           "bad body"))
                return
        self.records.append(Record(start, time.monotonic() - start, response.status_code,
                                   "", degraded))


def refused_connection(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a refused TCP connection.

    httpx's ``ConnectError`` says only "All connection attempts failed" (anyio); the
    ``ConnectionRefusedError`` is further down its chain.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ConnectionRefusedError) or "refused" in str(current).lower():
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def highest_rate(meets: Callable[[float], bool], start: float, *, resolution: float,
                 max_probes: int, floor: float = 0.0) -> float | None:
    """The highest rate that ``meets`` accepts, found with at most ``max_probes`` calls.

    The search of ``bench/load.py`` without its fixed list of rates: from ``start`` it doubles
    while rates are met (halves while they are missed), then bisects between the highest rate met
    and the lowest missed, on a grid of ``resolution``, until they are ``resolution`` apart. Each
    call is a real load probe, so the number of calls bounds the time; when every probe met its
    rate, the answer is only a lower bound.

    Args:
        meets: Offers one rate and says whether the objective held.
        start: The first rate offered (> 0).
        resolution: Step of the bisection's grid (> 0).
        max_probes: Most calls of ``meets``.
        floor: No rate below it is offered while halving.

    Returns:
        The highest rate met, or None when none was.
    """
    if start <= 0 or resolution <= 0 or max_probes < 1:
        raise ValueError("start and resolution must be > 0 and max_probes >= 1")
    met: float | None = None
    missed: float | None = None
    rate = start
    for _ in range(max_probes):
        if meets(rate):
            met = rate if met is None else max(met, rate)
        else:
            missed = rate if missed is None else min(missed, rate)
        if missed is None:
            rate *= 2
        elif met is None:
            rate /= 2
            if rate < floor:
                break
        else:
            mid = round((met + missed) / 2 / resolution) * resolution
            if missed - met <= resolution or not met < mid < missed:
                break
            rate = mid
    return met


# -------------------------------------------------------------------------------- stack


@dataclass
class Supervised:
    """A started stack with its supervisor running in a thread.

    Attributes:
        stack: The stack (``stack.processes``, ``stack.restarts``).
        url: Base URL of ``search``.
        errors: What stopped the supervisor early (a :class:`pipeline.supervisor.CrashLoop`).
    """

    stack: Stack
    url: str
    errors: list[BaseException] = field(default_factory=list)

    def ready(self) -> bool:
        """Every component answers ready now."""
        for comp in self.stack.components:
            try:
                if httpx.get(comp.url + comp.ready_path, timeout=2.0,
                             trust_env=False).status_code != 200:
                    return False
            except httpx.HTTPError:
                return False
        return True

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until every component is ready; whether it was within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ready():
                return True
            time.sleep(0.5)
        return False


@contextmanager
def supervised_stack(bundle: Path, log_dir: Path, search_env: dict[str, str] | None = None,
                     start_timeout_s: float = 300.0) -> Iterator[Supervised]:
    """The local stack on free ports, started and supervised until the block ends, then stopped.

    Raises:
        RuntimeError: it did not start.
    """
    components = stack_components(bundle, StackPorts.free(), search_env)
    with Stack(components, log_dir) as stack:
        stack.start(timeout=start_timeout_s)
        supervised = Supervised(stack, components[-1].url)
        stop = threading.Event()

        def run() -> None:
            try:
                stack.supervise(stop=stop, handle_signals=False)
            except BaseException as exc:  # noqa: BLE001 - reported by the caller
                supervised.errors.append(exc)

        thread = threading.Thread(target=run, name="supervisor", daemon=True)
        thread.start()
        try:
            yield supervised
        finally:
            stop.set()
            thread.join(15)


# ---------------------------------------------------------------------------- processes


def find_process(stack: Stack, component: str, exe: str | None = None,
                 model: str | None = None) -> psutil.Process | None:
    """The component's own process, or its descendant whose executable is named ``exe`` (and, with
    ``model``, whose command line runs that model's folder: a Triton stub per served model)."""
    pid = stack.processes[component].pid if component in stack.processes else None
    if pid is None:
        return None
    try:
        root = psutil.Process(pid)
        if exe is None:
            return root
        children = root.children(recursive=True)
    except psutil.Error:
        return None
    for child in children:
        try:
            if (child.name() == exe or Path(child.exe()).name == exe) and (
                    model is None or any(f"/{model}" in arg for arg in child.cmdline())):
                return child
        except psutil.Error:
            continue
    return None


def wait_for_process(stack: Stack, component: str, exe: str | None,
                     timeout_s: float = 60.0, model: str | None = None) -> psutil.Process | None:
    """:func:`find_process`, retried until it finds a running one or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        proc = find_process(stack, component, exe, model)
        if proc is not None and proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
        if time.monotonic() > deadline:
            return None
        time.sleep(0.25)


def rss_mb(stack: Stack) -> dict[str, float | None]:
    """Resident memory, MB, per row of :data:`PROCESSES` (None: no such process now)."""
    out: dict[str, float | None] = {}
    for label, component, exe, model in PROCESSES:
        proc = find_process(stack, component, exe, model)
        try:
            out[label] = None if proc is None else proc.memory_info().rss / 2**20
        except psutil.Error:
            out[label] = None
    return out


def cpu_model() -> str:
    """The CPU's model name and its vector flags (AVX2, AVX-512, AVX-512 VNNI)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("model name")), platform.processor() or "unknown")
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    present = set(flags.split())
    vector = ", ".join(f"{label} {'yes' if flag in present else 'no'}" for label, flag in
                       (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AVX-512 VNNI", "avx512_vnni")))
    return f"{name}; {psutil.cpu_count()} CPUs; {vector}"


def add_stack_flags(parser: argparse.ArgumentParser) -> None:
    """Flags the drill and the soak share."""
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--search-env", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of the search transformer (e.g. SEARCH_RANKER_TIMEOUT_MS=500)")
    parser.add_argument("--request-timeout", type=float, default=10.0,
                        help="seconds after which an unanswered request counts as lost")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="component logs (default: logs-<command> beside the bundle)")
