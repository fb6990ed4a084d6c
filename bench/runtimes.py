"""The runtime comparison: one packaged ranker on Triton and on TorchServe, ONNX Runtime as the floor.

Run ``make bench-runtimes`` (``python -m bench.runtimes --bundle artifacts/demo/ranker``;
``--quick`` for a smoke run with a few requests). The same bundle's CPU graph (``model.onnx``, what
``configs/cpu.pbtxt`` serves) is scored, one runtime after the other on this machine, with the same
50-pair requests (generated queries against catalog titles, tokenised with the bundle's tokenizer):

* ``onnxruntime``: in-process session, no server (the floor);
* ``triton`` over ``grpc`` (``tritonclient.grpc``), ``http`` (``tritonclient.http``, binary tensor
  extension) and ``http-json`` (JSON tensors): the local ``tritonserver`` (Python backend running
  ONNX Runtime, dynamic batching);
* ``torchserve`` over ``v2 REST`` (``tritonclient.http`` with JSON tensors, the only form its
  ``kservev2`` envelope reads): TorchServe 0.12 with batching (``batchSize`` 8), one worker.

Per row, for 1 and 8 concurrent clients (threads, a client each): p50 and p99 ms per request,
pairs per second over the wall time, the peak resident memory of the server's process tree
(sampled every 20 ms with psutil from start to stop, the sum over the process and all its
descendants: Triton and its Python stubs; TorchServe's Java frontend and its Python workers), and
the time from start to ready (process start until health and model readiness; for ONNX Runtime, the
session load). Every server gets the same threads (2) and one model instance. A benchmark, not a
test: it prints and writes ``bench/results/runtimes.md`` and ``runtimes.png``; nothing asserts.

This process never imports kserve (it uses ``tritonclient.grpc``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.ranker import triton_scorer
from pipeline.supervisor import free_port
from predictors.ranker.server import RankerSettings, TritonServer
from predictors.ranker.triton_repo import (
    cpu_graph,
)
from shopserve.protocol import RANKER, RANKER_MODEL, SCORE
from shopserve.text import PairTokenizer, encode_pairs
from training.data.generator import GeneratorConfig, generate
from training.ranker.optimise import OrtScorer

PAIRS_PER_REQUEST = 50
CLIENTS = (1, 8)
RESULTS = Path(__file__).parent / "results"

Scorer = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass
class Row:
    """One line of the table."""

    runtime: str
    protocol: str
    clients: int
    p50_ms: float
    p99_ms: float
    pairs_per_s: float
    errors: int
    peak_mib: float | None
    ready_s: float


def make_requests(bundle: Path, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` encoded 50-pair requests: a generated query against 50 catalog titles each."""
    tokenizer = PairTokenizer.from_dir(bundle / "tokenizer")
    max_length = cpu_graph(bundle).max_length
    data = generate(GeneratorConfig.tiny())
    rng = np.random.default_rng(seed)
    titles = list(data.items.title)
    queries = list(data.queries.text)
    out = []
    for _ in range(n):
        query = queries[int(rng.integers(len(queries)))]
        picked = [titles[int(i)] for i in rng.integers(len(titles), size=PAIRS_PER_REQUEST)]
        out.append(encode_pairs(tokenizer, [query] * PAIRS_PER_REQUEST, picked, max_length))
    return out


class PeakRss:
    """Samples the summed RSS of a process and its descendants in a background thread."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self.pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        if self.pid is None:
            return 0
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        """Begin sampling (the pid may be set later, once the process exists)."""
        self._thread.start()

    def stop(self) -> float:
        """Stop and return the peak in MiB."""
        self._stop.set()
        if self._thread.ident is not None:  # never started when the server failed to build
            self._thread.join()
        return self.peak / 2**20


def drive(make_scorer: Callable[[], tuple[Scorer, Callable[[], None]]], requests: list[dict[str, np.ndarray]],
          clients: int, per_client: int) -> tuple[list[float], float, int]:  # fmt: skip
    """``clients`` threads, each with its own client, send ``per_client`` requests back to back.

    Returns:
        Per-request latencies in ms, the wall time in s, and the number of failed requests.
    """
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def work(index: int) -> None:
        nonlocal errors
        score, close = make_scorer()
        try:
            score(requests[index % len(requests)])  # warm-up: connection set-up is not a request
            barrier.wait()
            for k in range(per_client):
                request = requests[(index * per_client + k) % len(requests)]
                start = time.perf_counter()
                try:
                    out = score(request)
                    ok = out.shape[0] == PAIRS_PER_REQUEST
                except Exception:  # noqa: BLE001 - a benchmark counts failures, it does not stop
                    ok = False
                ms = (time.perf_counter() - start) * 1000
                with lock:
                    latencies.append(ms)
                    errors += 0 if ok else 1
        finally:
            close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - started, errors


def http_scorer(url: str, binary: bool) -> tuple[Scorer, Callable[[], None]]:
    """v2 REST with ``tritonclient.http``: binary tensors (Triton) or JSON (both runtimes)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, network_timeout=60.0, connection_timeout=10.0)
    outputs = [httpclient.InferRequestedOutput(SCORE, binary_data=binary)]

    def score(batch: dict[str, np.ndarray]) -> np.ndarray:
        inputs = []
        for spec in RANKER.inputs:
            tensor = httpclient.InferInput(spec.name, list(batch[spec.name].shape), spec.datatype)
            tensor.set_data_from_numpy(batch[spec.name], binary_data=binary)
            inputs.append(tensor)
        return client.infer(RANKER_MODEL, inputs, outputs=outputs).as_numpy(SCORE)

    return score, client.close


@contextmanager
def started(server: Any, sampler: PeakRss, timeout_s: float) -> Iterator[float]:
    """Start a server under the RSS sampler; yields the seconds from start to ready."""
    sampler.start()
    begin = time.perf_counter()
    server.start()
    sampler.pid = server.process.pid
    try:
        server.wait_ready(timeout_s)
        yield time.perf_counter() - begin
    finally:
        server.stop()


def measure(runtime: str, protocols: dict[str, Callable[[], tuple[Scorer, Callable[[], None]]]],
            requests: list[dict[str, np.ndarray]], per_client: int, ready_s: float,
            repeats: int = 1) -> list[Row]:  # fmt: skip
    """Rows of one runtime: every protocol at every client count, medians of ``repeats`` runs
    (``peak_mib`` is left for the caller, who samples the server's memory)."""
    rows = []
    for protocol, make in protocols.items():
        for clients in CLIENTS:
            p50, p99, rate, errors = [], [], [], 0
            for _ in range(repeats):
                ms, wall, failed = drive(make, requests, clients, per_client)
                p50.append(float(np.percentile(ms, 50)))
                p99.append(float(np.percentile(ms, 99)))
                rate.append((len(ms) - failed) * PAIRS_PER_REQUEST / wall)
                errors += failed
            rows.append(Row(runtime, protocol, clients, statistics.median(p50), statistics.median(p99),
                            statistics.median(rate), errors, None, ready_s))  # fmt: skip
            print(f"  {runtime} {protocol} x{clients}: p50 {rows[-1].p50_ms:.1f} ms, "
                  f"{rows[-1].pairs_per_s:.0f} pairs/s, {errors} errors", flush=True)  # fmt: skip
    return rows


def settings(bundle: Path, work: Path, threads: int, **extra: Any) -> RankerSettings:
    """Loopback settings on free ports, the same threads and one instance for every server."""
    return RankerSettings(
        bundle=bundle, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
        management_port=free_port(), grpc_management_port=free_port(), threads=threads,
        instances=1, workdir=work, **extra,
    )  # fmt: skip


def table(rows: list[Row]) -> str:
    """The markdown table as printed."""
    head = ["runtime", "protocol", "clients", "p50 ms", "p99 ms", "pairs/s", "errors",
            "peak RSS MiB", "start→ready s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r.runtime, r.protocol, str(r.clients), f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}",
            f"{r.pairs_per_s:.0f}", str(r.errors), "" if r.peak_mib is None else f"{r.peak_mib:.0f}",
            f"{r.ready_s:.1f}",
        ]) + " |")  # fmt: skip
    return "\n".join(lines)


def plot(rows: list[Row], out: Path) -> None:
    """p50 latency and pairs/s per runtime and protocol, 1 vs 8 clients."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(f"{r.runtime}\n{r.protocol}" for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.38
    x = np.arange(len(labels))
    for k, clients in enumerate(CLIENTS):
        by = {f"{r.runtime}\n{r.protocol}": r for r in rows if r.clients == clients}
        for ax, key in ((axes[0], "p50_ms"), (axes[1], "pairs_per_s")):
            ax.bar(x + (k - 0.5) * width, [getattr(by[lbl], key) if lbl in by else 0 for lbl in labels],
                   width, label=f"{clients} client{'s' if clients > 1 else ''}")  # fmt: skip
    peaks = {r.runtime: r.peak_mib for r in rows if r.peak_mib is not None}
    axes[2].bar(list(peaks), list(peaks.values()), color="tab:gray")
    for ax, title in zip(axes, ("p50 ms per 50-pair request", "pairs per second",
                                "peak RSS of the server processes, MiB"), strict=True):  # fmt: skip
        ax.set_title(title)
    for ax in axes[:2]:
        ax.set_xticks(x, labels, fontsize=8)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Measure every runtime, print the table, write the markdown and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/demo/ranker"),
                        help="ranker component folder of a bundle")  # fmt: skip
    parser.add_argument("--requests", type=int, default=200, help="requests per client per row")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs per row; the table reports medians (errors summed)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads of every runtime")
    parser.add_argument("--quick", action="store_true", help="smoke run: a few requests per row")
    parser.add_argument("--out", type=Path, default=None, help="markdown output (png beside it)")
    args = parser.parse_args(argv)
    per_client = 4 if args.quick else args.requests
    out = args.out or RESULTS / ("runtimes-quick.md" if args.quick else "runtimes.md")
    bundle = args.bundle
    requests = make_requests(bundle, 64)
    rows: list[Row] = []
    notes: list[str] = []

    repeats = 1 if args.quick else args.repeats
    print("onnxruntime in-process", flush=True)
    begin = time.perf_counter()
    onnx_file = cpu_graph(bundle).onnx_file
    # One session shared by the client threads (ONNX Runtime's run is thread-safe), as a server has.
    session = OrtScorer(onnx_file, args.threads)
    load_s = time.perf_counter() - begin
    rows += measure("onnxruntime", {"in-process": lambda: (session, lambda: None)}, requests,
                    per_client, load_s, repeats)  # fmt: skip

    def server_rows(runtime: str, make_server: Callable[[], Any],
                    protocols: Callable[[Any], dict[str, Callable[[], tuple[Scorer, Callable[[], None]]]]],
                    ) -> None:
        """Start one server under the RSS sampler, measure its protocols, stamp its peak memory."""
        print(runtime, flush=True)
        sampler = PeakRss()
        try:
            server = make_server()
            with started(server, sampler, 180) as ready_s:
                server_rows = measure(runtime, protocols(server), requests, per_client, ready_s,
                                      repeats)
        except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not crash
            notes.append(f"{runtime} rows missing: {type(exc).__name__}: {exc}")
            return
        finally:
            peak = sampler.stop()
        for row in server_rows:
            row.peak_mib = peak
        rows.extend(server_rows)

    def torchserve_server(work: Path) -> Any:
        from predictors.ranker.torchserve import TorchServeServer

        return TorchServeServer(settings(bundle, work, args.threads, runtime="torchserve"))

    with tempfile.TemporaryDirectory(prefix="bench-runtimes-") as tmp:
        work = Path(tmp)
        server_rows("triton", lambda: TritonServer(settings(bundle, work / "triton", args.threads)),
                    lambda server: {
                        "grpc": lambda: triton_scorer(server.grpc_url),
                        "http": lambda: http_scorer(server.http_url, binary=True),
                        "http-json": lambda: http_scorer(server.http_url, binary=False),
                    })  # fmt: skip
        server_rows("torchserve", lambda: torchserve_server(work / "torchserve"),
                    lambda server: {"v2 REST (JSON)": lambda: http_scorer(server.http_url, binary=False)})

    text_table = table(rows)
    command = "python -m bench.runtimes " + shlex.join(sys.argv[1:] if argv is None else argv)
    doc = [
        f"# Ranker runtimes ({'quick smoke run' if args.quick else 'full run'})",
        "",
        f"- command: `{command.strip()}`" + (" (`make bench-runtimes`)" if not args.quick else ""),
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible; "
        f"every runtime {args.threads} ONNX Runtime threads, one model instance / worker",
        f"- bundle: `{bundle}`, graph `{onnx_file.relative_to(bundle)}` (the CPU configuration's)",
        f"- {per_client} requests of {PAIRS_PER_REQUEST} pairs per client per run, after one warm-up "
        f"each; medians of {repeats} runs per row (errors summed); clients are threads of one "
        "Python process; peak RSS and start→ready from the one start of each server",
        "- TorchServe 0.12 is an optional extra in limited maintenance upstream (no planned fixes or "
        "security patches); it speaks v2 REST infer with JSON tensors only (see the README).",
        "",
        text_table,
        "",
        "peak RSS: the server's whole process tree (Triton + Python stubs; TorchServe's JVM + "
        "Python workers), sampled every 20 ms from start to stop; empty for the in-process floor. "
        "start→ready: process start until ready (ONNX Runtime: session load).",
        *[f"- {n}" for n in notes],
        "",
        f"![runtimes]({out.with_suffix('.png').name})",
        "",
    ]
    print(text_table)
    for n in notes:
        print(n)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(doc))
    if rows:
        plot(rows, out.with_suffix(".png"))
    print(f"written to {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
