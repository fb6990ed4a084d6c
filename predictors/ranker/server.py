"""The local Triton server for ``bert-ranker``, ``seq-recommender`` and ``query-encoder``: settings,
model repository and process control.

Triton is the ``tritonserver`` binary shipped inside ``nvidia-pytriton`` (2.51, Python backend only).
This module lays out a runnable Triton home (backend directory with the Python backend and the stub
of this interpreter's version), a local model repository whose ``bert-ranker`` runs the bundle's
CPU graph (the file ``configs/cpu.pbtxt`` names, ``model.onnx``) through the Python backend, and
starts the binary bound to 127.0.0.1. When the bundle has a ``sequence`` component (the folder
beside the ranker's, or ``RANKER_SEQUENCE_BUNDLE``), the same server serves ``seq-recommender``
from it the same way (``triton_sequence_model.py`` on the component's CPU configuration), and when
it has a ``semantic`` component (beside the ranker's, or ``RANKER_SEMANTIC_BUNDLE``) it serves
``query-encoder`` from it (``triton_encoder_model.py``), each model with its own watchdog.

Two environment details make the stub work (see DESIGN.md):

* this interpreter's own ``libpython`` folder (``sysconfig LIBDIR``) comes first on
  ``LD_LIBRARY_PATH``, else the stub picks up another ``libpython`` and models fail with an RLock
  error; pytriton's bundled libraries (``nvidia_pytriton.libs``) follow;
* the stub embeds Python without a virtualenv of its own, so this interpreter's ``sys.path``
  (site-packages with numpy and onnxruntime) is handed over in ``PYTHONPATH``, and its ``bin``
  folder leads ``PATH``, as pytriton itself does.

Triton runs with explicit model control (``--model-control-mode=explicit
--load-model=bert-ranker [--load-model=seq-recommender] [--load-model=query-encoder]``), so the
launcher can reload a model: when a model's stub process dies, Triton keeps answering ready
while every inference fails with 500 "Stub process ... is not healthy" (see DESIGN.md). A
:class:`ModelWatchdog` per served model probes it with a tiny real inference every
``health_interval_s`` and, when the model cannot answer, unloads it (the model's and, with
``--strict-readiness``, the server's readiness turn false) and loads it again (a fresh stub and
ONNX Runtime session).

This module never imports kserve (it may share a process with ``tritonclient.grpc``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from predictors.ranker.encoder_repo import write_local_encoder_repository
from predictors.ranker.sequence_repo import write_local_sequence_repository
from predictors.ranker.triton_repo import (
    MAX_SEQUENCE_LENGTH,
    TritonModelConfig,
    cpu_graph,
    read_config,
    write_repository,
)
from shopserve.artifacts import (
    RANKER_COMPONENT,
    SEMANTIC_COMPONENT,
    SEQUENCE_COMPONENT,
    SEQUENCE_LENGTH,
    load_component,
)
from shopserve.process import ChildProcess
from shopserve.protocol import (
    ITEM_SEQUENCE,
    QUERY_ENCODER,
    QUERY_ENCODER_MODEL,
    RANKER,
    RANKER_MODEL,
    SEQUENCE_MODEL,
)

log = logging.getLogger(__name__)

COMPONENT = RANKER_COMPONENT


def usable_cpus() -> int:
    """CPUs this process may run on (its scheduler affinity; the CPU count where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)

class RankerSettings(BaseSettings):
    """Settings of the local ranker server; environment variables ``RANKER_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="RANKER_", extra="ignore")

    bundle: Path = Path("artifacts/demo/ranker")
    """The ranker component folder of a bundle (holds ``manifest.json`` and ``bert-ranker/``)."""

    runtime: Literal["triton", "torchserve"] = "triton"
    """Server of ``bert-ranker``: Triton (default) or TorchServe (the optional ``torchserve`` extra)."""

    host: str = "127.0.0.1"
    """Address every Triton endpoint binds to (loopback locally)."""

    http_port: int = Field(8000, ge=0, le=65535)
    """Triton's v2 HTTP/REST port."""

    grpc_port: int = Field(8001, ge=0, le=65535)
    """Triton's v2 gRPC port."""

    metrics_port: int = Field(8002, ge=0, le=65535)
    """Triton's Prometheus metrics port (``/metrics``)."""

    management_port: int = Field(8003, ge=0, le=65535)
    """TorchServe only: its management API port (REST)."""

    grpc_management_port: int = Field(8004, ge=0, le=65535)
    """TorchServe only: its gRPC management port (TorchServe always opens one)."""

    batch_size: int = Field(8, ge=1)
    """TorchServe only: most requests its batcher puts in one batch (``batchSize``)."""

    java_heap_mb: int = Field(512, ge=64)
    """TorchServe only: heap limit of its Java frontend (``-Xmx``)."""

    threads: int = Field(default_factory=usable_cpus, ge=1)
    """ONNX Runtime intra-op threads of each model instance: by default the CPUs this process
    may run on (its affinity, e.g. ``taskset``), so the session's threads fit the cores the ranker
    has instead of oversubscribing them. With several ``instances``, divide."""

    instances: int = Field(1, ge=1)
    """Model instances (each is a Python stub process, or a TorchServe worker, with its own ONNX
    Runtime session)."""

    max_queue_delay_us: int = Field(2000, ge=0)
    """How long the batcher may hold a request to fill a batch (TorchServe: ``maxBatchDelay``,
    rounded up to whole milliseconds)."""

    workdir: Path | None = None
    """Where the Triton home and local model repository are laid out; a temp dir when unset."""

    startup_timeout_s: float = Field(120.0, gt=0)
    """How long to wait for ``/v2/health/ready`` before giving up."""

    exit_timeout_s: int = Field(5, ge=0)
    """How long Triton waits for open connections and in-flight requests on shutdown."""

    log_verbose: int = Field(0, ge=0)
    """Triton's ``--log-verbose`` level."""

    verify_bundle: bool = True
    """Check the bundle's manifest checksums before serving (refuse a corrupt bundle)."""

    health_interval_s: float = Field(1.0, ge=0)
    """Triton only: seconds between the launcher's model health probes (a tiny inference); a model
    that cannot answer is unloaded (not ready) and loaded again. 0 turns the watchdog off."""

    sequence_bundle: str | None = None
    """Triton only: the bundle's ``sequence`` component folder, served as ``seq-recommender`` beside
    ``bert-ranker``. Unset: the ``sequence`` folder beside the ranker component when it exists;
    an empty string: no sequence model."""

    semantic_bundle: str | None = None
    """Triton only: the bundle's ``semantic`` component folder, whose query encoder is served as
    ``query-encoder`` beside ``bert-ranker``. Unset: the ``semantic`` folder beside the ranker
    component when it exists; an empty string: no query encoder."""


def _component(setting: str | None, bundle: Path, name: str) -> Path | None:
    if setting is None:
        beside = Path(bundle).parent / name
        return beside if beside.is_dir() else None
    return Path(setting) if setting.strip() else None


def sequence_component(settings: RankerSettings) -> Path | None:
    """The sequence component the server serves, or None (see ``RankerSettings.sequence_bundle``)."""
    return _component(settings.sequence_bundle, settings.bundle, SEQUENCE_COMPONENT)


def semantic_component(settings: RankerSettings) -> Path | None:
    """The semantic component whose query encoder the server serves, or None (see
    ``RankerSettings.semantic_bundle``)."""
    return _component(settings.semantic_bundle, settings.bundle, SEMANTIC_COMPONENT)


def triton_dist() -> Path:
    """The ``tritonserver`` distribution folder inside the installed ``nvidia-pytriton``."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed: pip install nvidia-pytriton==0.7.0")
    dist = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (dist / "bin" / "tritonserver").is_file():
        raise RuntimeError(f"no tritonserver binary under {dist}")
    return dist


def _pytriton_libs(dist: Path) -> Path:
    # Wheel installs keep the auditwheel-vendored libraries beside the package; editable installs
    # keep them inside it (same rule as pytriton.utils.distribution.get_libs_path).
    beside = dist.parent.parent / "nvidia_pytriton.libs"
    return beside if beside.is_dir() else dist / "external_libs"


def prepare_backends(home: Path) -> Path:
    """A backend directory with the Python backend and the stub built for this interpreter."""
    dist = triton_dist()
    backend = home / "backends" / "python"
    backend.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copyfile(dist / "backends" / "python" / name, backend / name)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise RuntimeError(f"nvidia-pytriton ships no Python backend stub for Python {version}")
    target = backend / "triton_python_backend_stub"
    shutil.copyfile(stub, target)
    target.chmod(0o755)
    return home / "backends"


def local_repository(
    bundle: Path, out_dir: Path, settings: RankerSettings, sequence: Path | None = None,
    semantic: Path | None = None,
) -> Path:
    """Turn the bundle's onnxruntime model folder into a Python-backend one under ``out_dir``.

    The local server runs on the CPU, so it takes the bundle's CPU configuration, chosen the way
    ``tritonserver --model-config-name=cpu`` chooses it (``configs/cpu.pbtxt``, else
    ``config.pbtxt``): that file names the ONNX graph to serve (``default_model_filename``) and
    stays the source of truth for the max sequence length and any extra parameters (vocabulary
    size); the batching and thread settings are the local ones.

    With ``sequence`` (a sequence component folder) the repository also holds ``seq-recommender``,
    from that component's CPU configuration
    (:func:`~predictors.ranker.sequence_repo.write_local_sequence_repository`); with ``semantic``
    (a semantic component folder) ``query-encoder`` too, from that component's CPU configuration
    (:func:`~predictors.ranker.encoder_repo.write_local_encoder_repository`).
    """
    graph = cpu_graph(bundle)
    bundle_config, onnx_file = graph.config, graph.onnx_file
    extra = {
        k: v for k, v in bundle_config.parameters.items()
        if k not in (MAX_SEQUENCE_LENGTH, "intra_op_thread_count")
    }
    config = TritonModelConfig(
        max_sequence_length=graph.max_length,
        max_batch_size=bundle_config.max_batch_size,
        max_queue_delay_us=settings.max_queue_delay_us,
        instances=settings.instances,
        threads=settings.threads,
        extra_parameters=extra,
    )
    repo = Path(out_dir) / "models"
    write_repository(repo, onnx_file, config, profile="local")
    if sequence is not None:
        write_local_sequence_repository(sequence, repo)
    if semantic is not None:
        write_local_encoder_repository(semantic, repo)
    return repo


def server_env(dist: Path) -> dict[str, str]:
    """The environment of ``tritonserver`` and its Python stubs (see module docstring)."""
    env = os.environ.copy()
    libdir = sysconfig.get_config_var("LIBDIR") or str(Path(sys.base_prefix) / "lib")
    paths = [libdir, str(_pytriton_libs(dist))]
    if env.get("LD_LIBRARY_PATH"):
        paths.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(paths)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["PYTHONPATH"] = ":".join(p for p in sys.path if p and Path(p).is_dir())
    env.setdefault("PYTHONNOUSERSITE", "1")
    return env


def server_command(
    dist: Path, backends: Path, repository: Path, settings: RankerSettings,
    models: Sequence[str] = (RANKER_MODEL,),
) -> list[str]:
    """The ``tritonserver`` command line for the local server, loading ``models``."""
    return [
        str(dist / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        f"--cache-directory={dist / 'caches'}",
        f"--http-address={settings.host}",
        f"--http-port={settings.http_port}",
        f"--grpc-address={settings.host}",
        f"--grpc-port={settings.grpc_port}",
        f"--metrics-address={settings.host}",
        f"--metrics-port={settings.metrics_port}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        "--allow-cpu-metrics=true",
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--exit-timeout-secs={settings.exit_timeout_s}",
        "--disable-auto-complete-config",
        # Explicit model control: the watchdog unloads and reloads a model whose stub died.
        "--model-control-mode=explicit",
        *(f"--load-model={model}" for model in models),
        f"--log-verbose={settings.log_verbose}",
        # A unique shared-memory prefix, so two servers on one host (tests) never collide.
        f"--backend-config=python,shm-region-prefix-name=ranker{os.getpid()}_{settings.http_port}",
        "--backend-config=python,shm-default-byte-size=4194304",
        "--backend-config=python,shm-growth-byte-size=1048576",
    ]


Verdict = Literal["ok", "dead", "failing", "unknown"]
"""What one health probe says of the model: ``ok`` answered; ``dead`` its stub process is gone;
``failing`` an error answer (not ready, session failure); ``unknown`` no answer (timeout, server
down or busy: the process supervisor, not the watchdog, handles a dead server)."""

#: Longest wait for an unloading model to report not ready before it is loaded again.
NOT_READY_WAIT_S = 2.0

#: Longest wait for a live model instance to finish unloading before the model is loaded again.
UNLOAD_WAIT_S = 5.0

#: Triton's message when a Python-backend model's stub process died.
STUB_NOT_HEALTHY = "is not healthy"


def classify_probe(status: int | None, body: str = "") -> Verdict:
    """The verdict on one probe's answer: HTTP status (None: no answer) and body."""
    if status is None:
        return "unknown"
    if status == 200:
        return "ok"
    if status >= 500 and STUB_NOT_HEALTHY in body:
        return "dead"
    return "failing"


class ModelWatchdog:
    """Decides, probe after probe, when to recover the model; runs the probing thread.

    A ``dead`` verdict (stub process gone) recovers at once; ``failing`` after ``failures`` in a
    row; ``unknown`` neither counts nor resets. A recovery that did not bring the model back is
    retried no sooner than ``backoff_s`` later, doubled each time up to ``max_backoff_s``. Every
    recovery and the time until the model answers again are logged.

    Args:
        probe: One health probe: HTTP status (None: no answer) and body.
        recover: Brings the model back (e.g. unload then load); raises when it cannot.
        interval_s: Seconds between probes.
        failures: ``failing`` verdicts in a row that trigger a recovery.
        backoff_s, max_backoff_s: Wait before a recovery is retried, and its cap.
        clock: Monotonic clock (tests pass their own).
    """

    def __init__(
        self,
        probe: Callable[[], tuple[int | None, str]],
        recover: Callable[[], None],
        *,
        interval_s: float = 1.0,
        failures: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = RANKER_MODEL,
    ) -> None:
        self.probe = probe
        self.recover = recover
        self.interval_s = interval_s
        self.failures = failures
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.clock = clock
        self.name = name
        #: Recoveries attempted so far.
        self.recoveries = 0
        #: The latest probe's verdict.
        self.last_verdict: Verdict = "unknown"
        #: Seconds from the first bad probe to the model answering again, per recovered outage.
        self.recovery_times: list[float] = []
        self._streak = 0
        self._down_since: float | None = None
        self._next_attempt = 0.0
        self._backoff = backoff_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def observe(self, verdict: Verdict) -> bool:
        """Take one probe's verdict; whether to recover the model now."""
        now = self.clock()
        if verdict == "ok":
            if self._down_since is not None:
                took = now - self._down_since
                self.recovery_times.append(took)
                log.warning("%s answers again, %.2f s after it was seen failing", self.name, took)
            self._streak, self._down_since, self._backoff = 0, None, self.backoff_s
            self._next_attempt = 0.0
            return False
        if verdict == "unknown":
            return False
        self._streak += 1
        if self._down_since is None:
            self._down_since = now
        if verdict == "failing" and self._streak < self.failures:
            return False
        if self.recoveries and now < self._next_attempt:
            return False
        return True

    def check(self) -> bool:
        """One probe and, when called for, one recovery; whether a recovery was attempted."""
        status, body = self.probe()
        verdict = self.last_verdict = classify_probe(status, body)
        if not self.observe(verdict):
            return False
        self.recoveries += 1
        self._next_attempt = self.clock() + self._backoff
        self._backoff = min(self._backoff * 2, self.max_backoff_s)
        log.warning("%s cannot answer (%s: %s %s); recovering it (recovery %d)",
                    self.name, verdict, status, body.strip()[:200], self.recoveries)
        started = self.clock()
        try:
            self.recover()
        except Exception as exc:  # noqa: BLE001 - keep watching; retried after the backoff
            log.error("%s recovery failed after %.2f s: %s", self.name, self.clock() - started, exc)
        else:
            log.warning("%s reloaded in %.2f s", self.name, self.clock() - started)
        return True

    def run(self) -> None:
        """Probe every ``interval_s`` until :meth:`stop`."""
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - a watchdog must not die of one bad probe
                log.exception("%s health probe failed", self.name)

    def start(self) -> None:
        """Run :meth:`run` in a daemon thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name=f"{self.name}-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (waits for a probe or recovery in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def probe_body() -> bytes:
    """A tiny valid v2 JSON inference request for ``bert-ranker``: one pair of two tokens."""
    values = {"input_ids": [1, 2], "attention_mask": [1, 1], "token_type_ids": [0, 0]}
    return json.dumps({"inputs": [
        {"name": t.name, "datatype": t.datatype, "shape": [1, 2], "data": values.get(t.name, [0, 0])}
        for t in RANKER.inputs
    ]}).encode()  # fmt: skip


def sequence_probe_body(length: int) -> bytes:
    """A tiny valid v2 JSON inference request for ``seq-recommender``: one session of one item."""
    sequence = [0] * (length - 1) + [1]
    return json.dumps({"inputs": [
        {"name": ITEM_SEQUENCE, "datatype": "INT64", "shape": [1, length], "data": sequence}
    ]}).encode()


def encoder_probe_body() -> bytes:
    """A tiny valid v2 JSON inference request for ``query-encoder``: one query of three tokens
    (``[CLS] the [SEP]`` in the MiniLM vocabulary; any ids within it would do)."""
    values = {"input_ids": [101, 1996, 102], "attention_mask": [1, 1, 1]}
    return json.dumps({"inputs": [
        {"name": t.name, "datatype": t.datatype, "shape": [1, 3], "data": values[t.name]}
        for t in QUERY_ENCODER.inputs
    ]}).encode()


#: Loopback requests never go through a proxy the environment may name.
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_call(url: str, body: bytes | None = None, timeout_s: float = 5.0) -> tuple[int | None, str]:
    """Status and body of a loopback GET (POST with ``body``); status None when nothing answered.

    HTTP errors are answers, not exceptions.
    """
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with _LOOPBACK.open(request, timeout=timeout_s) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return None, ""


class LocalServer:
    """A model server process on loopback, started from the ranker bundle; a context manager.

    Subclasses lay out their work folder and say what to run (:meth:`_prepare`) and when it is
    ready (:meth:`is_ready`); the process itself is a :class:`~shopserve.process.ChildProcess`
    (own session, SIGTERM then SIGKILL of its group), and waiting, stopping and cleaning up are
    shared.
    """

    #: Process name in messages.
    name = "server"

    def __init__(self, settings: RankerSettings) -> None:
        self.settings = settings
        self.child: ChildProcess | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.workdir: Path | None = None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The server's ``Popen`` (None before :meth:`start`)."""
        return None if self.child is None else self.child.popen

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP endpoint (the form tritonclient takes)."""
        return f"{self.settings.host}:{self.settings.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint."""
        return f"{self.settings.host}:{self.settings.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """Full URL of the server's Prometheus metrics."""
        return f"http://{self.settings.host}:{self.settings.metrics_port}/metrics"

    def _prepare_workdir(self) -> Path:
        """The settings' work folder, or a temporary one removed on :meth:`stop`."""
        if self.settings.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"shopserve-{self.name}-")
            self.workdir = Path(self._tmp.name)
        else:
            self.workdir = Path(self.settings.workdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
        return self.workdir

    def _prepare(self) -> ChildProcess:
        """Verify the bundle, lay out the work folder; the process to run."""
        raise NotImplementedError

    def _child(self, argv: list[str], env: dict[str, str], **options: Any) -> ChildProcess:
        """The server's process, run in the work folder, ready when :meth:`is_ready` says so."""
        return ChildProcess(self.name, argv, env=env, cwd=self.workdir, ready=self.is_ready,
                            stop_timeout=self.settings.exit_timeout_s + 10.0, **options)

    def start(self) -> None:
        """Verify the bundle, lay out the work folder and start the process."""
        if self.child is not None and self.child.running:
            raise RuntimeError(f"{self.name} is running already")
        self.child = self._prepare()
        log.info("starting %s: %s", self.name, " ".join(self.child.argv))
        self.child.start()

    def is_ready(self) -> bool:
        """Whether the server answers as ready now."""
        raise NotImplementedError

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Poll :meth:`is_ready` until it holds.

        Raises:
            RuntimeError: the process exited, or it was not ready within the timeout.
        """
        if self.child is None:
            raise RuntimeError(f"{self.name} was not started")
        self.child.wait_ready(timeout_s or self.settings.startup_timeout_s)

    def wait(self) -> int:
        """Block until the server exits; its exit code."""
        if self.child is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.child.wait()

    def _get(self, url: str) -> tuple[int, bytes]:
        """Status and body of a loopback GET (HTTP errors are answers, not exceptions)."""
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 - loopback
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def terminate(self) -> None:
        """Ask the server to shut down (SIGTERM) without waiting: safe inside a signal handler."""
        if self.child is not None:
            self.child.terminate()

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM the server (it drains in-flight requests), SIGKILL if it hangs.

        The default timeout is ``exit_timeout_s`` + 10 s. Children (Triton's Python stubs,
        TorchServe's workers) run in the server's own session: none outlives it. The temporary
        work folder is removed.
        """
        code = None if self.child is None else self.child.stop(timeout_s)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return code

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


class TritonServer(LocalServer):
    """The local Triton process serving ``bert-ranker`` (and ``seq-recommender`` when the bundle has
    a sequence component, ``query-encoder`` when it has a semantic one); a context manager.

    Example:
        >>> with TritonServer(RankerSettings(bundle=Path("artifacts/demo/ranker"))) as server:
        ...     server.wait_ready()
    """

    name = "tritonserver"

    def __init__(self, settings: RankerSettings) -> None:
        super().__init__(settings)
        #: The models this server loads, known once started (``bert-ranker`` first).
        self.models: tuple[str, ...] = (RANKER_MODEL,)
        self._probes: dict[str, bytes] = {RANKER_MODEL: probe_body()}

    def _prepare(self) -> ChildProcess:
        """Verify the bundle, lay out the Triton home and repository; the ``tritonserver`` process."""
        bundle = Path(self.settings.bundle)
        sequence = sequence_component(self.settings)
        semantic = semantic_component(self.settings)
        if self.settings.verify_bundle:
            load_component(bundle, COMPONENT)
            if sequence is not None:
                load_component(sequence, SEQUENCE_COMPONENT)
            if semantic is not None:
                load_component(semantic, SEMANTIC_COMPONENT)
        workdir = self._prepare_workdir()
        dist = triton_dist()
        backends = prepare_backends(workdir)
        repository = local_repository(bundle, workdir, self.settings, sequence, semantic)
        self.models = (RANKER_MODEL,)
        self._probes = {RANKER_MODEL: probe_body()}
        if sequence is not None:
            config = read_config(repository / SEQUENCE_MODEL / "config.pbtxt")
            self.models += (SEQUENCE_MODEL,)
            self._probes[SEQUENCE_MODEL] = sequence_probe_body(
                int(config.parameters[SEQUENCE_LENGTH]))
            log.info("serving %s from %s", SEQUENCE_MODEL, sequence)
        if semantic is not None:
            self.models += (QUERY_ENCODER_MODEL,)
            self._probes[QUERY_ENCODER_MODEL] = encoder_probe_body()
            log.info("serving %s from %s", QUERY_ENCODER_MODEL, semantic)
        # Triton's output stays ours: under the stack it lands in the ranker's log.
        return self._child(server_command(dist, backends, repository, self.settings, self.models),
                           server_env(dist))

    def is_ready(self) -> bool:
        """``/v2/health/ready`` answers 200 (with ``--strict-readiness``: every model is ready)."""
        try:
            return self._get(f"http://{self.http_url}/v2/health/ready")[0] == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def probe_model(self, model: str = RANKER_MODEL) -> tuple[int | None, str]:
        """One tiny real inference of a served model: status (None: no answer) and body."""
        return http_call(f"http://{self.http_url}/v2/models/{model}/infer", self._probes[model])

    def reload_model(self, wait_unload_s: float | None = None, model: str = RANKER_MODEL) -> None:
        """Unload a model (readiness turns false), then load it again: a fresh stub.

        Triton unloads asynchronously: the load waits until the model reports not ready and then
        up to ``wait_unload_s`` (default :data:`UNLOAD_WAIT_S`) for the old instance to finish
        unloading, so a live stub is finalized first. An instance whose stub died never finishes
        unloading in Triton 2.51 (it stays ``UNLOADING``): the watchdog passes 0 for those.

        Raises:
            RuntimeError: Triton refused the unload or the load (the error is its message).
        """
        wait_unload_s = UNLOAD_WAIT_S if wait_unload_s is None else wait_unload_s
        base = f"http://{self.http_url}/v2/repository/models/{model}"
        self._repository_call(f"{base}/unload", 30.0, model)
        ready_url = f"http://{self.http_url}/v2/models/{model}/ready"
        unloaded = time.monotonic()
        # Readiness must have turned false (a 200, or no answer, is waited out) before the load.
        while (status := http_call(ready_url, timeout_s=1.0)[0]) in (200, None) \
                and time.monotonic() < unloaded + NOT_READY_WAIT_S:
            time.sleep(0.01)
        took = time.monotonic() - unloaded
        if status in (200, None):
            log.warning("%s readiness answered %s %.1f s after its unload; loading it anyway",
                        model, status, took)
        else:
            log.info("%s not ready (%d) %.2f s after its unload", model, status, took)
        deadline = time.monotonic() + wait_unload_s
        while time.monotonic() < deadline and not self._unloaded(model):
            time.sleep(0.02)
        self._repository_call(f"{base}/load", self.settings.startup_timeout_s, model)

    def _unloaded(self, model: str = RANKER_MODEL) -> bool:
        """Whether the repository index shows no version of ``model`` ready or unloading."""
        status, body = http_call(f"http://{self.http_url}/v2/repository/index", b"{}", 1.0)
        if status != 200:
            return False
        try:
            index = json.loads(body)
        except ValueError:
            return False
        return not any(entry.get("name") == model
                       and entry.get("state") in ("READY", "UNLOADING", "LOADING")
                       for entry in index)

    @staticmethod
    def _repository_call(url: str, timeout_s: float, model: str = RANKER_MODEL) -> None:
        status, body = http_call(url, b"{}", timeout_s)
        if status != 200:
            action = url.rsplit("/", 1)[1]
            raise RuntimeError(f"{action} of {model}: {status} {body.strip()[:300]}")

    def watchdog(self, model: str = RANKER_MODEL) -> ModelWatchdog:
        """A watchdog that probes one served model and reloads it when it cannot answer."""
        def recover() -> None:
            # A dead stub's instance never finishes unloading: do not wait for it.
            self.reload_model(wait_unload_s=0.0 if watchdog.last_verdict == "dead" else None,
                              model=model)

        watchdog = ModelWatchdog(lambda: self.probe_model(model), recover,
                                 interval_s=self.settings.health_interval_s or 1.0, name=model)
        return watchdog

    def watchdogs(self) -> list[ModelWatchdog]:
        """One watchdog per served model (each in its own thread once started)."""
        return [self.watchdog(model) for model in self.models]
