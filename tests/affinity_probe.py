"""A process for :mod:`tests.unit.test_stack`: answers ``GET /v2/health/ready`` on
``127.0.0.1:$PROBE_PORT`` with the CPUs its main thread, a thread it started and a child process
it started may run on (JSON), so a test can see what ``Component.cpus`` gave it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

seen: dict[str, list[int]] = {"main": sorted(os.sched_getaffinity(0))}


def _thread() -> None:
    seen["thread"] = sorted(os.sched_getaffinity(0))


worker = threading.Thread(target=_thread)
worker.start()
worker.join()
child = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                       capture_output=True, text=True, check=True)
seen["child"] = json.loads(child.stdout)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps(seen).encode()
        self.send_response(200 if self.path == "/v2/health/ready" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


HTTPServer(("127.0.0.1", int(os.environ["PROBE_PORT"])), Handler).serve_forever()
