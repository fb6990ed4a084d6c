"""``shopserve drill``: fault drills on the local stack under a steady load.

Starts the stack of ``shopserve up`` on a bundle (free ports, supervised: a component that exits is
restarted), sends the v2 traffic mix at ``--rate`` requests/s (open loop, every request recorded,
see :class:`pipeline.observe.harness.SteadyLoad`), waits ``--quiet-seconds`` (the baseline), then
injects each fault in turn with a quiet period after it:

* ``ranker``: ``kill -9`` of the ``tritonserver`` process (the ranker's launcher exits with it and
  the supervisor restarts the launcher; if the launcher does not exit, the drill kills it and says so);
* ``model``: ``kill -9`` of Triton's Python-backend model process (the launcher's watchdog reloads
  the model);
* ``recall``: ``kill -9`` of the recall predictor (restarted by the supervisor);
* ``transformer``: SIGTERM to the search transformer (it drains and exits; the supervisor restarts it);
* ``slow``: SIGSTOP of ``tritonserver`` for ``--slow-seconds``, then SIGCONT (the ranker stalls:
  every call in that time runs into the search's ranker budget).

A fault's window runs from its injection to the next one's (it ends only once every component is
ready again and the last ``--streak`` answers are fully ranked, or after ``--settle-timeout``). One
row per window: requests sent in it, failures (no 200: an error status, a timeout, a reset
connection), connections refused, the degraded share by reason (the ``degraded`` response
parameter), the seconds from the fault until answers are fully ranked again and until they are not
degraded at all (:func:`recovery_s`), and the supervisor's restarts.

Exit code 1 when a fault lost a request it should not (:func:`lost`): any failure or refusal for
the ranker, model, recall and slow faults; for the transformer restart, a failure of a request it
accepted (a refused connection while it is down is allowed). 2 when the stack does not start.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.traffic import TrafficMix
from pipeline.local import parse_env
from pipeline.observe.harness import (
    STUB_EXE,
    TRITON_EXE,
    Record,
    SteadyLoad,
    Supervised,
    add_stack_flags,
    cpu_model,
    percentile,
    supervised_stack,
    wait_for_process,
)
from shopserve.protocol import RANKER_MODEL

#: The row of the window before the first fault (load starting, caches warming), not judged.
BASELINE = "before the faults"


# ------------------------------------------------------------------------------ pure parts


def recovery_s(records: Sequence[Record], fault_at: float, streak: int,
               good: Callable[[Record], bool] = lambda r: r.fully_ranked) -> float | None:
    """Seconds from ``fault_at`` until answers are ``good`` again for good.

    The first request sent at or after the first bad one after ``fault_at`` that starts a run of
    ``streak`` consecutive good ones (records in order of sending). A window with no bad answer
    recovered at once (0.0); one whose bad answers never give way to such a run: None.
    """
    after = [r for r in records if r.start >= fault_at]
    first_bad = next((i for i, r in enumerate(after) if not good(r)), None)
    if first_bad is None:
        return 0.0
    run = 0
    for i in range(first_bad + 1, len(after)):
        if good(after[i]):
            run += 1
            if run >= streak:
                return max(0.0, after[i - streak + 1].start - fault_at)
        else:
            run = 0
    return None


@dataclass(frozen=True)
class Row:
    """What one window of the drill saw.

    Attributes:
        fault: The fault's label (:data:`BASELINE` before the first).
        requests: Requests sent in the window.
        failed: Requests not answered 200 that were not refused.
        refused: Requests whose connection was refused.
        degraded: 200 answers per degradation reason.
        ranked_again_s: :func:`recovery_s` of fully ranked answers.
        clean_again_s: :func:`recovery_s` of answers not degraded at all.
        p99_ms: 99th percentile latency of the 200 answers.
        restarts: Supervisor restarts per component in the window.
        errors: Failures by kind (HTTP status or exception name).
    """

    fault: str
    requests: int
    failed: int
    refused: int
    degraded: dict[str, int]
    ranked_again_s: float | None
    clean_again_s: float | None
    p99_ms: float
    restarts: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


def summarise(fault: str, records: Sequence[Record], start: float, end: float, streak: int,
              restarts: dict[str, int] | None = None, settled: float | None = None) -> Row:
    """The row of the window ``[start, end)`` (seconds of ``time.monotonic()``).

    Every request sent in the window counts for requests, failures and degradation; the recovery
    times look only at those sent before ``settled`` (when the drill saw the stack settled and
    moved on), since what was sent after that already belongs to the wait for the next fault.
    """
    window = sorted((r for r in records if start <= r.start < end), key=lambda r: r.start)
    judged = window if settled is None else [r for r in window if r.start <= settled]
    degraded: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for r in window:
        if r.ok:
            degraded.update(r.degraded)
        elif r.failed:
            errors[r.error or f"HTTP {r.status}"] += 1
    return Row(
        fault, len(window), sum(r.failed for r in window), sum(r.refused for r in window),
        dict(degraded), recovery_s(judged, start, streak),
        recovery_s(judged, start, streak, lambda r: r.ok and not r.degraded),
        percentile([r.latency_s * 1000 for r in window if r.ok], 0.99),
        dict(restarts or {}), dict(errors))


def lost(row: Row, refusals_allowed: bool) -> int:
    """Requests the fault of ``row`` lost that it should not have.

    Every failure counts; refused connections count too unless ``refusals_allowed`` (a restarting
    transformer may refuse new connections while it is down, but must answer what it accepted).
    """
    return row.failed + (0 if refusals_allowed else row.refused)


def format_row(row: Row, loss: int | None) -> str:
    """One markdown table row (``loss`` None: the baseline, which is not judged)."""
    share = ", ".join(f"{reason} {n / row.requests:.0%} ({n})"
                      for reason, n in sorted(row.degraded.items())) if row.requests else ""
    restarts = ", ".join(f"{name} {n}" for name, n in sorted(row.restarts.items()) if n)

    def secs(value: float | None) -> str:
        return "never" if value is None else f"{value:.1f}"

    verdict = "-" if loss is None else ("ok" if loss == 0 else f"LOST {loss}")
    return (f"| {row.fault} | {row.requests} | {row.failed} | {row.refused} | {share or 'none'} | "
            f"{secs(row.ranked_again_s)} | {secs(row.clean_again_s)} | {row.p99_ms:.0f} | "
            f"{restarts or '-'} | {verdict} |")


TABLE_HEADER = ("| fault | requests | failed | refused | degraded by reason | fully ranked again s | "
                "undegraded again s | p99 ms | restarts | lost |\n"
                "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | --- |")


# ---------------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """One fault the drill can inject.

    Attributes:
        name: Its ``--faults`` name.
        label: What it does, for the table.
        inject: Injects it into the stack; returns a note on what was done.
        refusals_allowed: Refused connections are not losses (see :func:`lost`).
    """

    name: str
    label: str
    inject: Callable[[Supervised, argparse.Namespace], str]
    refusals_allowed: bool = False


def _kill_ranker_server(sup: Supervised, args: argparse.Namespace) -> str:
    stack = sup.stack
    triton = wait_for_process(stack, "ranker", TRITON_EXE)
    if triton is None:
        raise RuntimeError("no tritonserver process under the ranker's launcher")
    launcher_pid = stack.processes["ranker"].pid
    before = stack.restarts.get("ranker", 0)
    os.kill(triton.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        if stack.restarts.get("ranker", 0) > before:
            return (f"killed tritonserver (pid {triton.pid}); its launcher (pid {launcher_pid}) "
                    "exited and the supervisor restarts it")
        time.sleep(0.1)
    assert launcher_pid is not None
    os.kill(launcher_pid, signal.SIGKILL)
    return (f"killed tritonserver (pid {triton.pid}); its launcher (pid {launcher_pid}) did not exit "
            "within 10 s, so the drill killed it too")


def _kill_model(sup: Supervised, args: argparse.Namespace) -> str:
    stub = wait_for_process(sup.stack, "ranker", STUB_EXE, model=RANKER_MODEL)
    if stub is None:
        raise RuntimeError("no Triton Python-backend model process under the ranker")
    os.kill(stub.pid, signal.SIGKILL)
    return f"killed the ranker's model process {STUB_EXE} (pid {stub.pid})"


def _kill_recall(sup: Supervised, args: argparse.Namespace) -> str:
    pid = sup.stack.processes["recall"].pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return f"killed recall (pid {pid})"


def _term_transformer(sup: Supervised, args: argparse.Namespace) -> str:
    pid = sup.stack.processes["search"].pid
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    return f"sent SIGTERM to the search transformer (pid {pid})"


def _slow_ranker(sup: Supervised, args: argparse.Namespace) -> str:
    # The server stalls, not the model process: Triton reads a stopped stub as a dead one (no
    # heartbeat) and the watchdog would reload it, which is the model fault, not a slow ranker.
    server = wait_for_process(sup.stack, "ranker", TRITON_EXE)
    if server is None:
        raise RuntimeError("no tritonserver under the ranker")
    os.kill(server.pid, signal.SIGSTOP)
    try:
        time.sleep(args.slow_seconds)
    finally:
        try:
            os.kill(server.pid, signal.SIGCONT)
        except ProcessLookupError:
            return f"stopped tritonserver (pid {server.pid}); it was gone before SIGCONT"
    return f"stopped tritonserver (pid {server.pid}) for {args.slow_seconds:g}s"


FAULTS: dict[str, Fault] = {f.name: f for f in (
    Fault("ranker", "ranker server kill -9", _kill_ranker_server),
    Fault("model", "ranker model process kill -9", _kill_model),
    Fault("recall", "recall kill -9", _kill_recall),
    Fault("transformer", "transformer SIGTERM", _term_transformer, refusals_allowed=True),
    Fault("slow", "ranker slow (SIGSTOP)", _slow_ranker),
)}


def parse_faults(text: str) -> list[Fault]:
    """The faults named in a comma-separated list, in the order given.

    Raises:
        ValueError: an unknown name.
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAULTS]
    if unknown or not names:
        raise ValueError(f"unknown fault(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(FAULTS)}")
    return [FAULTS[n] for n in names]


# ------------------------------------------------------------------------------------ run


def _settle(sup: Supervised, load: SteadyLoad, args: argparse.Namespace) -> float | None:
    """Wait the quiet period, then until the stack is ready and answers fully ranked again.

    Returns:
        When the last request of the fully ranked run was sent (None when it never settled).
    """
    time.sleep(args.quiet_seconds)
    deadline = time.monotonic() + args.settle_timeout
    while time.monotonic() < deadline and not sup.errors:
        last = load.snapshot()[-args.streak:]
        oldest = load.oldest_in_flight()
        # Settled: the last answers are fully ranked, no request sent before them is still out
        # (it could come back degraded and break the run), and every component is ready.
        if (len(last) == args.streak and all(r.fully_ranked for r in last)
                and (oldest is None or oldest > last[0].start) and sup.ready()):
            return last[-1].start
        time.sleep(0.5)
    _say(f"not settled {args.settle_timeout:g}s after the quiet period; going on")
    return None


def _say(message: str) -> None:
    print(f"[drill] {message}", flush=True)


def run_drill(args: argparse.Namespace) -> int:
    """Run the drill of ``args``; the exit code."""
    try:
        faults = parse_faults(args.faults)
        search_env = parse_env(args.search_env)
    except ValueError as exc:
        print(f"bad argument: {exc}", file=sys.stderr)
        return 2
    bundle = Path(args.bundle).resolve()
    mix = TrafficMix.from_bundle(bundle)
    log_dir = Path(args.log_dir) if args.log_dir else bundle.parent / "logs-drill"
    print(f"CPU: {cpu_model()}")
    print(f"bundle {args.bundle}; {args.rate:g} req/s open loop; quiet {args.quiet_seconds:g}s; "
          f"fully ranked = {args.streak} consecutive answers without ranker degradation; "
          f"logs in {log_dir}", flush=True)
    windows: list[tuple[Fault | None, float, dict[str, int]]] = []
    settled: list[float | None] = []
    try:
        with supervised_stack(bundle, log_dir, search_env) as sup:
            load = SteadyLoad(sup.url, mix, args.rate, timeout_s=args.request_timeout)
            load.start()
            windows.append((None, time.monotonic(), dict(sup.stack.restarts)))
            settled.append(_settle(sup, load, args))
            for fault in faults:
                if sup.errors:
                    break
                at = time.monotonic()
                windows.append((fault, at, dict(sup.stack.restarts)))
                try:
                    note = fault.inject(sup, args)
                except (RuntimeError, OSError) as exc:
                    note = f"could not inject: {exc}"
                _say(f"{fault.name}: {note}")
                settled.append(_settle(sup, load, args))
            end = time.monotonic()
            restarts_end = dict(sup.stack.restarts)
            records = load.stop()
            errors = list(sup.errors)
    except RuntimeError as exc:
        print(f"the stack did not start: {exc}", file=sys.stderr)
        return 2
    print()
    print(TABLE_HEADER)
    total_lost, notes = 0, []
    for i, (fault, start, restarts_before) in enumerate(windows):
        stop, restarts_after = ((windows[i + 1][1], windows[i + 1][2]) if i + 1 < len(windows)
                                else (end, restarts_end))
        restarts = {n: restarts_after.get(n, 0) - restarts_before.get(n, 0) for n in restarts_after}
        row = summarise(fault.label if fault else BASELINE, records, start, stop, args.streak,
                        restarts, settled[i] if i < len(settled) else None)
        loss = None if fault is None else lost(row, fault.refusals_allowed)
        total_lost += loss or 0
        print(format_row(row, loss))
        if row.errors:
            notes.append(f"{row.fault}: failures " + ", ".join(
                f"{k} {v}" for k, v in sorted(row.errors.items())))
    print()
    for note in notes:
        print(note)
    for exc in errors:
        print(f"the supervisor gave up: {exc}", file=sys.stderr)
    if total_lost or errors:
        print(f"FAILED: {total_lost} request(s) lost" + (", supervisor gave up" if errors else ""))
        return 1
    print("no request lost")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``drill`` to the ``shopserve`` parser."""
    drill = sub.add_parser(
        "drill", help="fault drills on the supervised local stack under a steady load; one row "
                      "per fault, exit 1 when a fault loses a request",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    add_stack_flags(drill)
    drill.add_argument("--rate", type=float, default=4.0, help="requests/s, open loop (default 4)")
    drill.add_argument("--quiet-seconds", type=float, default=10.0,
                       help="seconds after each fault (and before the first) before the next")
    drill.add_argument("--faults", default=",".join(FAULTS),
                       help=f"comma-separated subset, in order (default {','.join(FAULTS)})")
    drill.add_argument("--slow-seconds", type=float, default=3.0,
                       help="slow: how long tritonserver is stopped")
    drill.add_argument("--streak", type=int, default=10,
                       help="consecutive fully ranked answers that count as recovered")
    drill.add_argument("--settle-timeout", type=float, default=120.0,
                       help="after the quiet period, wait at most this long for the stack to "
                            "be ready and answers fully ranked before the next fault")
    drill.set_defaults(func=run_drill)
