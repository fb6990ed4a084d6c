"""TorchServe as the second runtime of ``bert-ranker``: model archive, ``config.properties``, process.

TorchServe is an optional extra (``pip install '.[torchserve]'``): it is in limited maintenance
upstream (no planned fixes or security patches), so nothing in the default install, stack or chart
values needs it. This module imports neither ``ts`` nor ``model_archiver`` at module level.

The model store (:func:`write_model_store`) has the layout KServe's ``kserve-torchserve`` runtime
reads from a ``storageUri`` (``--model-store=/mnt/models/model-store``,
``--ts-config=/mnt/models/config/config.properties``)::

    <out>/model-store/bert-ranker.mar   torch-model-archiver output: model.onnx, serving.json,
                                        torchserve_handler.py
    <out>/config/config.properties      service_envelope=kservev2, batchSize / maxBatchDelay in
                                        model_snapshot

The archive serves the same ONNX graph Triton's CPU configuration serves (``configs/cpu.pbtxt`` ->
``model.onnx``, the variant the quality guard chose) with ONNX Runtime, so both runtimes give the
same scores for the same inputs: no TorchScript export (a second graph of the same model would make
score equality a matter of tolerance between two compilers, and the int8 variant has no TorchScript
form). ``serving.json`` (tensor names and datatypes, max sequence length, vocabulary size) is derived
from that ``config.pbtxt``, which stays the one source of truth.

Locally (:class:`TorchServeServer`) the Java frontend is started directly, not through the
``torchserve`` launcher: the launcher keeps one pid file per machine (``$TMPDIR/.model_server.pid``)
and refuses to start a second server, which tests and the benchmark need beside other servers.
Logs and metrics files go to the work dir (``LOG_LOCATION``, ``METRICS_LOCATION``), never the cwd.

What TorchServe's REST API does not speak of the v2 contract (see the README): ``/v2/health/*``
(TorchServe has ``/ping``), ``/v2/models/{m}`` and ``/v2/models/{m}/ready`` (metadata: TorchServe's
management API describes the model instead), the binary tensor extension (JSON tensors only), and
v2 gRPC (TorchServe's gRPC is its own ``inference.proto``). ``POST /v2/models/bert-ranker/infer``
with JSON tensors works with ``tritonclient.http`` (``binary_data=False``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from predictors.ranker.server import LocalServer
from predictors.ranker.torchserve_handler import SERVING_FILE
from predictors.ranker.triton_repo import (
    MAX_SEQUENCE_LENGTH,
    SHARED_MODULE,
    cpu_graph,
)
from shopserve.artifacts import RANKER_COMPONENT, load_component
from shopserve.process import ChildProcess
from shopserve.protocol import RANKER_MODEL

log = logging.getLogger(__name__)

TORCHSERVE_DIR = "torchserve"
"""Folder of the ranker component holding the TorchServe model store (the chart's storageUri)."""
MODEL_STORE_DIR = "model-store"
CONFIG_DIR = "config"
CONFIG_PROPERTIES = "config.properties"
ARCHIVE = f"{RANKER_MODEL}.mar"
ARCHIVE_VERSION = "1"
HANDLER = Path(__file__).with_name("torchserve_handler.py")
EXTRA_HINT = "install the optional extra: pip install '.[torchserve]'"

# KServe's kserve-torchserve runtime: its wrapper serves v2 on 8080/8081 and forwards to TorchServe
# on the inference address it reads from this file (the upstream example ports).
CLUSTER_PORTS = {"inference": 8085, "management": 8085, "metrics": 8082, "grpc_inference": 7070,
                 "grpc_management": 7071}  # fmt: skip
CLUSTER_MODEL_STORE = "/mnt/models/model-store"

Profile = Literal["cluster", "local"]


@dataclass(frozen=True)
class TorchServeModelConfig:
    """Serving parameters of ``bert-ranker`` in TorchServe.

    Attributes:
        batch_size: ``batchSize``: most requests (of ~50 pairs each) TorchServe batches together.
        max_batch_delay_ms: ``maxBatchDelay``: how long TorchServe waits to fill a batch.
        workers: ``minWorkers`` = ``maxWorkers``: Python worker processes, each with a session.
        threads: ONNX Runtime intra-op threads per worker.
        response_timeout_s: ``responseTimeout``: a worker silent for longer is restarted.
    """

    batch_size: int = 8
    max_batch_delay_ms: int = 2
    workers: int = 1
    threads: int = 2
    response_timeout_s: int = 30


def serving_spec(ranker_dir: Path, threads: int) -> tuple[dict[str, Any], Path]:
    """The handler's ``serving.json`` and the ONNX file to archive, from the bundle's CPU config.

    Raises:
        BundleError: the configuration lacks the max sequence length or names a missing file.
    """
    graph = cpu_graph(ranker_dir)
    config, onnx_file = graph.config, graph.onnx_file
    spec = {
        "model_name": config.name,
        "model_version": ARCHIVE_VERSION,
        "model_file": onnx_file.name,
        "inputs": [{"name": t.name, "datatype": t.datatype} for t in config.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype} for t in config.outputs],
        MAX_SEQUENCE_LENGTH: graph.max_length,
        "vocab_size": int(config.parameters.get("vocab_size", "0")),
        "threads": threads,
    }
    return spec, onnx_file


def write_archive(ranker_dir: Path, export_dir: Path, threads: int = 2) -> Path:
    """Write ``<export_dir>/bert-ranker.mar`` with ``torch-model-archiver`` from a ranker bundle.

    Raises:
        RuntimeError: ``torch-model-archiver`` is not installed.
    """
    try:
        from model_archiver.model_archiver_config import ModelArchiverConfig
        from model_archiver.model_packaging import generate_model_archive
    except ImportError as exc:
        raise RuntimeError(f"torch-model-archiver is not installed: {EXTRA_HINT}") from exc
    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    spec, onnx_file = serving_spec(ranker_dir, threads)
    with tempfile.TemporaryDirectory(prefix="shopserve-mar-") as tmp:
        spec_file = Path(tmp) / SERVING_FILE
        spec_file.write_text(json.dumps(spec, indent=2) + "\n")
        generate_model_archive(ModelArchiverConfig(
            model_name=RANKER_MODEL, handler=str(HANDLER), version=ARCHIVE_VERSION,
            # The handler imports the checks it shares with Triton's Python model from beside it.
            serialized_file=str(onnx_file), extra_files=f"{spec_file},{SHARED_MODULE}",
            export_path=str(export_dir), archive_format="default", force=True,
        ))  # fmt: skip
    return export_dir / ARCHIVE


def model_snapshot(config: TorchServeModelConfig) -> dict[str, Any]:
    """The ``model_snapshot`` that registers ``bert-ranker`` at startup with batching on."""
    entry = {"defaultVersion": True, "marName": ARCHIVE, "minWorkers": config.workers,
             "maxWorkers": config.workers, "batchSize": config.batch_size,
             "maxBatchDelay": config.max_batch_delay_ms,
             "responseTimeout": config.response_timeout_s}  # fmt: skip
    return {"name": "startup.cfg", "modelCount": 1, "models": {RANKER_MODEL: {ARCHIVE_VERSION: entry}}}


def config_properties(
    config: TorchServeModelConfig,
    *,
    profile: Profile = "cluster",
    host: str = "127.0.0.1",
    ports: dict[str, int] | None = None,
    model_store: str = CLUSTER_MODEL_STORE,
) -> str:
    """The text of TorchServe's ``config.properties``.

    ``cluster`` is what the bundle carries for KServe's ``kserve-torchserve`` runtime: addresses
    on all interfaces at the ports its wrapper expects, ``enable_envvars_config`` (KServe sets
    ``TS_SERVICE_ENVELOPE``), token authorisation left on (TorchServe's default). ``local`` binds
    every endpoint to ``host`` at ``ports`` and turns token authorisation off: a loopback server
    for tests and benchmarks, never a shared one.

    Args:
        config: Serving parameters.
        profile: ``cluster`` or ``local``.
        host: Bind address of the local profile.
        ports: ``inference``, ``management``, ``metrics``, ``grpc_inference``, ``grpc_management``
            (local profile; the cluster one uses :data:`CLUSTER_PORTS`).
        model_store: Folder of ``bert-ranker.mar``.
    """
    if profile not in ("cluster", "local"):
        raise ValueError(f"unknown profile {profile!r}")
    if profile == "cluster":
        bind, ports = "0.0.0.0", CLUSTER_PORTS  # noqa: S104 - inside the pod; KServe fronts it
    else:
        if not ports:
            raise ValueError("the local profile needs its ports")
        bind = host
    lines = [
        f"# bert-ranker on TorchServe ({profile} profile), written by predictors.ranker.torchserve",
        f"inference_address=http://{bind}:{ports['inference']}",
        f"management_address=http://{bind}:{ports['management']}",
        f"metrics_address=http://{bind}:{ports['metrics']}",
        f"grpc_inference_address={bind}",
        f"grpc_inference_port={ports['grpc_inference']}",
        f"grpc_management_address={bind}",
        f"grpc_management_port={ports['grpc_management']}",
        "enable_metrics_api=true",
        "metrics_mode=prometheus",
        # The KServe v2 request envelope, as KServe's own TorchServe runtime sets it; the handler
        # batches it correctly itself (see torchserve_handler).
        "service_envelope=kservev2",
        f"model_store={model_store}",
        "model_snapshot=" + json.dumps(model_snapshot(config), separators=(",", ":")),
        "default_workers_per_model=" + str(config.workers),
        # Everything the worker needs (numpy, onnxruntime) is in the image / venv already.
        "install_py_dep_per_model=false",
        "number_of_netty_threads=4",
        "job_queue_size=100",
    ]
    if profile == "cluster":
        lines.append("enable_envvars_config=true")
    else:
        lines.append("disable_token_authorization=true")
    return "\n".join(lines) + "\n"


def write_model_store(
    ranker_dir: Path,
    out_dir: Path,
    config: TorchServeModelConfig | None = None,
    **properties: Any,
) -> Path:
    """Write ``<out_dir>/model-store/bert-ranker.mar`` and ``<out_dir>/config/config.properties``.

    Args:
        ranker_dir: The ranker component folder (holds ``bert-ranker/``).
        out_dir: Where the store goes (``<ranker>/torchserve`` in a bundle).
        config: Serving parameters.
        **properties: Passed to :func:`config_properties` (profile, host, ports);
            ``model_store`` defaults to KServe's path in the cluster profile and to the written
            folder in the local one.

    Returns:
        The path of ``config.properties``.
    """
    config = config or TorchServeModelConfig()
    out_dir = Path(out_dir)
    store = out_dir / MODEL_STORE_DIR
    write_archive(ranker_dir, store, threads=config.threads)
    if properties.get("profile", "cluster") == "local":
        properties.setdefault("model_store", str(store))
    conf = out_dir / CONFIG_DIR / CONFIG_PROPERTIES
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(config_properties(config, **properties))
    return conf


# --------------------------------------------------------------------------------------------------
# The local server.
# --------------------------------------------------------------------------------------------------


def ts_home() -> Path:
    """The installed TorchServe (``model_server_home``: the folder holding ``ts/``).

    Raises:
        RuntimeError: TorchServe is not installed.
    """
    import importlib.util

    spec = importlib.util.find_spec("ts")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"TorchServe is not installed: {EXTRA_HINT}")
    home = Path(next(iter(spec.submodule_search_locations))).parent
    if not (home / "ts" / "frontend" / "model-server.jar").is_file():
        raise RuntimeError(f"no TorchServe frontend under {home}/ts/frontend")
    return home


def java_binary() -> str:
    """``$JAVA_HOME/bin/java`` or ``java`` on PATH (TorchServe 0.12 needs Java 17)."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java:
        raise RuntimeError("TorchServe needs Java 17: no java on PATH and JAVA_HOME unset")
    return java


class TorchServeServer(LocalServer):
    """A local TorchServe serving ``bert-ranker`` from a bundle on loopback; a context manager.

    Ports: ``http_port`` is TorchServe's inference API (``/ping``,
    ``/v2/models/bert-ranker/infer``), ``management_port`` its management API, ``metrics_port``
    its metrics, ``grpc_port`` (``grpc_url``) / ``grpc_management_port`` its own (non-v2) gRPC
    services.

    Example:
        >>> with TorchServeServer(RankerSettings(runtime="torchserve")) as server:
        ...     server.wait_ready()
    """

    name = "torchserve"

    @property
    def management_url(self) -> str:
        """Base URL of the management API."""
        return f"http://{self.settings.host}:{self.settings.management_port}"

    def model_config(self) -> TorchServeModelConfig:
        """Serving parameters from the settings."""
        s = self.settings
        return TorchServeModelConfig(
            batch_size=s.batch_size, max_batch_delay_ms=max(1, math.ceil(s.max_queue_delay_us / 1000)),
            workers=s.instances, threads=s.threads,
        )

    def _prepare(self) -> ChildProcess:
        """Verify the bundle, write the model store and config; the Java frontend's process."""
        s = self.settings
        bundle = Path(s.bundle)
        if s.verify_bundle:
            load_component(bundle, RANKER_COMPONENT)
        workdir = self._prepare_workdir()
        home = ts_home()
        ports = {"inference": s.http_port, "management": s.management_port, "metrics": s.metrics_port,
                 "grpc_inference": s.grpc_port, "grpc_management": s.grpc_management_port}  # fmt: skip
        # The heap limit goes on the java command line below: ``vmargs`` is read only by the
        # ``torchserve`` launcher, which is not used here.
        conf = write_model_store(bundle, workdir, self.model_config(), profile="local",
                                 host=s.host, ports=ports)  # fmt: skip
        (workdir / "tmp").mkdir(exist_ok=True)
        command = [
            java_binary(), f"-Dmodel_server_home={home}", f"-Djava.io.tmpdir={workdir / 'tmp'}",
            f"-Xmx{s.java_heap_mb}m", "-cp", f".:{home / 'ts' / 'frontend'}/*",
            "org.pytorch.serve.ModelServer", "--python", sys.executable,
            "-f", str(conf), "-s", str(workdir / MODEL_STORE_DIR), "-ncs",
        ]  # fmt: skip
        env = {"LOG_LOCATION": str(workdir / "logs"), "METRICS_LOCATION": str(workdir / "logs"),
               "TEMP": str(workdir / "tmp")}  # fmt: skip
        # Its stdout repeats ts_log.log, which errors quote; stderr stays ours.
        return self._child(command, env, quiet=s.log_verbose == 0,
                           tail_path=workdir / "logs" / "ts_log.log")

    def is_ready(self) -> bool:
        """``/ping`` is healthy and ``bert-ranker`` has a READY worker (management API)."""
        try:
            code, _ = self._get(f"http://{self.http_url}/ping")
            if code != 200:
                return False
            code, body = self._get(f"{self.management_url}/models/{RANKER_MODEL}")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
        if code != 200:
            return False
        described = json.loads(body)
        return any(w.get("status") == "READY" for m in described for w in m.get("workers", []))
