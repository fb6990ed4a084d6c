"""``python -m predictors.ranker``: serve a bundle's ``bert-ranker`` on the local Triton server.

Settings come from ``RANKER_*`` environment variables (see :class:`RankerSettings`); the only
flags are the KServe-style port overrides, so the same command line works under a controller, and
``--runtime torchserve`` (``RANKER_RUNTIME``), which serves the same bundle on TorchServe instead
(the optional ``torchserve`` extra; v2 REST infer only, see the README).
SIGINT and SIGTERM stop the server cleanly (Triton drains in-flight requests); the exit code is
the server's.

On Triton, the bundle's sequence recommender is served as ``seq-recommender`` beside ``bert-ranker``
when it has one (``RANKER_SEQUENCE_BUNDLE``, by default the ``sequence`` folder beside the ranker
component), and its semantic path's query encoder as ``query-encoder`` when it has a ``semantic``
component (``RANKER_SEMANTIC_BUNDLE``, by default the folder beside the ranker component). A
watchdog thread per model probes it every ``RANKER_HEALTH_INTERVAL_S`` (a tiny
inference) and, when the model cannot answer (its stub process died, its session fails), unloads
it, so readiness turns false, and loads it again; each recovery and its duration are logged.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from predictors.ranker.server import (
    ModelWatchdog,
    RankerSettings,
    TritonServer,
    semantic_component,
    sequence_component,
)
from shopserve.protocol import QUERY_ENCODER_MODEL, RANKER_MODEL, SEQUENCE_MODEL

if TYPE_CHECKING:
    from predictors.ranker.torchserve import TorchServeServer

log = logging.getLogger("predictors.ranker")


def parse_args(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Overrides from the command line (unknown flags ignored, as KServe injects its own)."""
    parser = argparse.ArgumentParser(prog="python -m predictors.ranker", description=__doc__)
    parser.add_argument("--bundle", type=Path, help="ranker component folder of a bundle")
    parser.add_argument("--http_port", "--http-port", type=int)
    parser.add_argument("--grpc_port", "--grpc-port", type=int)
    parser.add_argument("--metrics_port", "--metrics-port", type=int)
    parser.add_argument("--runtime", choices=["triton", "torchserve"])
    known, _unknown = parser.parse_known_args(argv)
    return {k: v for k, v in vars(known).items() if v is not None}


def main(argv: Sequence[str] | None = None) -> int:
    """Start Triton, wait for readiness, then block until a signal or Triton's exit."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = RankerSettings(**parse_args(argv))  # type: ignore[arg-type]
    server: TritonServer | TorchServeServer
    if settings.runtime == "torchserve":
        # Imported here: the default (Triton) path must not need the optional extra's module.
        from predictors.ranker.torchserve import TorchServeServer

        server = TorchServeServer(settings)
        for model, component in ((SEQUENCE_MODEL, sequence_component(settings)),
                                 (QUERY_ENCODER_MODEL, semantic_component(settings))):
            if component is not None:
                log.warning("TorchServe serves bert-ranker only: %s is not served (Triton "
                            "serves it)", model)
    else:
        server = TritonServer(settings)
    name = settings.runtime
    stopping = False
    watchdogs: list[ModelWatchdog] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Only signal Triton here: waiting inside a handler could deadlock with the main
        # thread's wait on the same process.
        nonlocal stopping
        stopping = True
        log.info("received %s; stopping %s", signal.Signals(signum).name, name)
        server.terminate()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        server.start()
        server.wait_ready()
        models = server.models if isinstance(server, TritonServer) else (RANKER_MODEL,)
        log.info(
            "%s ready on %s: http %s, grpc %s, metrics %s",
            ", ".join(models), name, server.http_url, server.grpc_url, server.metrics_url,
        )
        if isinstance(server, TritonServer) and settings.health_interval_s > 0:
            watchdogs = server.watchdogs()
            for watchdog in watchdogs:
                watchdog.start()
        code = server.wait()
    except Exception as exc:  # noqa: BLE001 - the boundary: log once, exit non-zero
        if not stopping:
            log.error("ranker failed: %s", exc)
        code = 1
    finally:
        for watchdog in watchdogs:
            watchdog.stop()
        # Waits for the server's drain (SIGKILL after exit_timeout_s + 10 s) and removes the workdir.
        server.stop()
    return 0 if stopping else code

if __name__ == "__main__":
    sys.exit(main())
