"""Run the locustfile headless in a child process and collect its reports.

locust monkey-patches its process with gevent on import, so the CLI, the gate and the benchmark
start it as ``python -m locust`` and read the JSON summary that :mod:`loadtest.locustfile` writes.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.slo import read_summary

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


@dataclass(frozen=True)
class LoadRun:
    """One headless locust run.

    Attributes:
        host: Base URL of the stable (or only) ``search`` service.
        out_dir: Folder for ``<prefix>_stats.csv`` (and the other CSVs), ``<prefix>.html`` and
            ``<prefix>-summary.json``.
        prefix: File name prefix of the reports.
        users: Concurrent users (``-u``; the start users of a step ramp).
        spawn_rate: Users started per second (``-r``).
        run_time_s: Length of a steady or spike run (``-t``); ``None`` for a step ramp.
        shape: ``steady``, ``step`` or ``spike``.
        bundle: Bundle whose catalog feeds the traffic mix.
        slo: SLO file or ``key=value`` pairs; empty checks only that requests were sent.
        canary_host: Base URL of the canary, to split traffic.
        canary_percent: Share of requests sent to the canary, 0..100.
        rate_per_user: Requests/s per user (constant throughput); 0 sends back to back.
        tail_share: Share of searches composed fresh from the catalog (``--tail-share``); None
            leaves the locustfile's default (0.4, or ``SHOPSERVE_TAIL_SHARE``).
        seed: Seed of the request stream (``--seed``); None leaves the locustfile's default (0,
            or ``SHOPSERVE_LOAD_SEED``).
        extra: More locust or locustfile options, passed as given.
    """

    host: str
    out_dir: Path
    prefix: str = "load"
    users: int = 4
    spawn_rate: float = 4.0
    run_time_s: float | None = 30.0
    shape: str = "steady"
    bundle: Path = Path("artifacts/demo")
    slo: str = ""
    canary_host: str = ""
    canary_percent: float = 0.0
    rate_per_user: float = 0.0
    tail_share: float | None = None
    seed: int | None = None
    extra: Sequence[str] = field(default_factory=tuple)

    @property
    def summary_path(self) -> Path:
        """Where the JSON summary is written."""
        return self.out_dir / f"{self.prefix}-summary.json"

    @property
    def html_path(self) -> Path:
        """The HTML report."""
        return self.out_dir / f"{self.prefix}.html"

    @property
    def csv_prefix(self) -> Path:
        """Prefix of the CSV reports (``_stats.csv``, ``_failures.csv``, ``_stats_history.csv``)."""
        return self.out_dir / self.prefix

    def command(self) -> list[str]:
        """The ``python -m locust`` command line."""
        cmd = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
            "--host", self.host, "-u", str(self.users), "-r", str(self.spawn_rate),
            "--shape", self.shape, "--bundle", str(self.bundle),
            "--csv", str(self.csv_prefix), "--html", str(self.html_path),
            "--summary-json", str(self.summary_path),
            "--rate-per-user", str(self.rate_per_user),
            # Let in-flight requests finish so the last ones are not counted as failures.
            "--stop-timeout", "10",
        ]
        if self.run_time_s:
            cmd += ["-t", f"{int(round(self.run_time_s))}s"]
        if self.tail_share is not None:
            cmd += ["--tail-share", str(self.tail_share)]
        if self.seed is not None:
            cmd += ["--seed", str(self.seed)]
        if self.slo:
            cmd += ["--slo", self.slo]
        if self.canary_host:
            cmd += ["--canary-host", self.canary_host, "--canary-percent", str(self.canary_percent)]
        return cmd + list(self.extra)


@dataclass(frozen=True)
class LoadResult:
    """What a run left behind.

    Attributes:
        returncode: locust's exit code (0: SLO met; 1: missed; other: locust failed).
        summary: The JSON summary, or ``None`` when locust wrote none.
        output: locust's stdout and stderr.
    """

    returncode: int
    summary: dict[str, Any] | None
    output: str


def run_locust(run: LoadRun, *, timeout_s: float | None = None, echo: bool = False) -> LoadResult:
    """Run ``run`` to completion.

    Args:
        run: What to run.
        timeout_s: Kill locust after this long (default: the run time plus two minutes).
        echo: Also stream locust's output to this process's stdout.
    """
    run.out_dir.mkdir(parents=True, exist_ok=True)
    if run.summary_path.exists():
        run.summary_path.unlink()
    limit = timeout_s or (run.run_time_s or 3600) + 120
    proc = subprocess.Popen(run.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    # Reading the output blocks, so the time limit is a watchdog that kills locust.
    watchdog = threading.Timer(limit, proc.kill)
    watchdog.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if echo:
                print(line, end="", flush=True)
        proc.wait()
    finally:
        watchdog.cancel()
    summary = read_summary(run.summary_path) if run.summary_path.is_file() else None
    return LoadResult(proc.returncode, summary, "".join(lines))
