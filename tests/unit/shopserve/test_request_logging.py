"""Per-request log lines of the KServe servers, off by default (``shopserve.serving.request_logging``).

Run in a child process: kserve must not be imported beside ``tritonclient.grpc`` (DESIGN.md). The
child configures logging as ``ModelServer`` does (KServe's own ``configure_logging``), then writes
the records KServe and uvicorn write for every request, and one that is not per request.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.servers import ROOT

CHILD = r"""
import logging, sys
from kserve.logging import configure_logging, logger, trace_logger
from shopserve.serving import request_logging

configure_logging()
request_logging({enabled})
trace_logger.info("kserve.io.infer: 1.2 ['http_status:200']")        # REST TimingMiddleware
trace_logger.info("requestId: r1, preprocess_ms: 0.1, predict_ms: 2")  # model latency line
logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "POST",
                                         "/v2/models/search/infer", "1.1", 200)
logger.info("grpc method: /inference.GRPCInferenceService/ModelInfer")  # gRPC interceptor
logger.info("Registering model: search")                                 # not per request
trace_logger.warning("a trace warning")
trace_logger.error("Failed to infer: %s", "DEADLINE_EXCEEDED")          # gRPC client, a failed call
"""


def _lines(enabled: bool) -> str:
    done = subprocess.run([sys.executable, "-c", CHILD.format(enabled=enabled)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_per_request_lines_are_off_and_the_rest_stays() -> None:
    out = _lines(False)
    for per_request in ("kserve.io.infer", "requestId: r1", "/v2/models/search/infer",
                        "grpc method:", "Failed to infer"):
        assert per_request not in out
    assert "Registering model: search" in out and "a trace warning" in out


@pytest.fixture(scope="module")
def enabled() -> str:
    return _lines(True)


@pytest.mark.parametrize("line", ["kserve.io.infer", "requestId: r1", "/v2/models/search/infer",
                                  "grpc method:", "Registering model: search", "Failed to infer"])
def test_the_setting_turns_them_on(enabled: str, line: str) -> None:
    assert line in enabled
