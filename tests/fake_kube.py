"""A stand-in for the Kubernetes API server's InferenceService endpoints, on loopback, for tests.

No API server can run here, so this fakes the far side of the network boundary only: GET and
PATCH on ``/apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices/{name}``, as the real
server answers them:

* merge patches (RFC 7386, written out below) and JSON patches (RFC 6902, the ``jsonpatch``
  library, so the fake shares no code with ``pipeline.rollout.kube``); any other content type is a 415,
  as custom resources take no strategic merge patch;
* a patched ``metadata.resourceVersion`` is a precondition: a mismatch is a 409 Conflict;
  every accepted patch bumps the version;
* errors are ``Status`` objects (``kind: Status``, ``reason``, ``message``, ``code``), and answers
  can be scripted (``fail_next``) or a concurrent writer simulated (``on_patch``).

Every request is recorded (method, path, content type, parsed body, Authorization header).
``knative_search`` and ``standard_recall``/``standard_ranker`` build InferenceServices shaped like
the chart's output (``manifests/``), trimmed to what traffic steps touch.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jsonpatch

LOOPBACK = "127.0.0.1"
_PATH = re.compile(r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices/([^/?]+)")
_REASONS = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
            415: "UnsupportedMediaType", 422: "Invalid", 500: "InternalError"}


@dataclass(frozen=True)
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    content_type: str | None
    body: Any
    authorization: str | None = None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, ``null`` deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def status(code: int, message: str, name: str | None = None) -> dict[str, Any]:
    """A ``Status`` object as the API server answers errors."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": message, "reason": _REASONS.get(code, "Unknown"), "code": code}
    if name:
        body["details"] = {"name": name, "group": "serving.kserve.io", "kind": "inferenceservices"}
    return body


def forbidden(verb: str, namespace: str, name: str,
              user: str = "system:serviceaccount:shopserve:gate") -> tuple[int, dict[str, Any]]:
    """The API server's 403 for an RBAC denial."""
    return 403, status(403, f'inferenceservices.serving.kserve.io "{name}" is forbidden: User "{user}" '
                            f'cannot {verb} resource "inferenceservices" in API group "serving.kserve.io" '
                            f'in the namespace "{namespace}"', name)


class _NotFound(Exception):
    """The API server's 404 for a path or object that is not there."""

    def __init__(self, answer: tuple[int, dict[str, Any]]) -> None:
        super().__init__(answer[1]["message"])
        self.answer = answer


class FakeKubeAPI:
    """The fake API server: start with ``with FakeKubeAPI() as api:``; ``api.url`` is its address.

    Attributes:
        objects: Stored InferenceServices by (namespace, name).
        requests: Every request received, in order.
    """

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[Recorded] = []
        self._scripted: list[tuple[str, tuple[int, dict[str, Any]]]] = []
        self._on_patch: list[Callable[[dict[str, Any]], None]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- setup ---

    def put(self, obj: dict[str, Any], resource_version: int = 1) -> dict[str, Any]:
        """Store an InferenceService (a copy), with a resourceVersion; returns the stored copy."""
        stored = copy.deepcopy(obj)
        meta = stored.setdefault("metadata", {})
        meta["resourceVersion"] = str(resource_version)
        with self._lock:
            self.objects[(meta["namespace"], meta["name"])] = stored
        return stored

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        """The stored object now."""
        with self._lock:
            return copy.deepcopy(self.objects[(namespace, name)])

    def fail_next(self, method: str, code: int, body: dict[str, Any] | None = None) -> None:
        """Answer the next request of ``method`` with ``code`` and a Status (queued, in order)."""
        with self._lock:
            self._scripted.append((method, (code, body or status(code, f"scripted {code}"))))

    def on_patch(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Before the next PATCH is applied, let a concurrent writer change the stored object.

        The change runs on the stored object, whose resourceVersion is then bumped, as if another
        client had written between the caller's GET and its PATCH. Queue several for several PATCHes.
        """
        with self._lock:
            self._on_patch.append(change)

    def patches(self) -> list[Recorded]:
        """The PATCH requests received."""
        return [r for r in self.requests if r.method == "PATCH"]

    # --- serving ---

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        assert self._server is not None, "not started"
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def __enter__(self) -> FakeKubeAPI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                fake._record(self, None)
                self._answer(*fake._serve("GET", lambda: fake._handle_get(self.path)))

            def do_PATCH(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                fake._record(self, body)
                self._answer(*fake._serve("PATCH", lambda: fake._handle_patch(
                    self.path, self.headers.get("Content-Type"), body)))

            def _answer(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # keep test output clean

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _record(self, handler: BaseHTTPRequestHandler, body: Any) -> None:
        with self._lock:
            self.requests.append(Recorded(handler.command, handler.path,
                                          handler.headers.get("Content-Type"), body,
                                          handler.headers.get("Authorization")))

    def _scripted_answer(self, method: str) -> tuple[int, dict[str, Any]] | None:
        with self._lock:
            for i, (m, answer) in enumerate(self._scripted):
                if m == method:
                    del self._scripted[i]
                    return answer
        return None

    def _serve(self, method: str, handle: Callable[[], tuple[int, dict[str, Any]]]
               ) -> tuple[int, dict[str, Any]]:
        """A scripted answer for ``method`` if one is queued, else ``handle()`` under the lock."""
        scripted = self._scripted_answer(method)
        if scripted:
            return scripted
        with self._lock:
            try:
                return handle()
            except _NotFound as missing:
                return missing.answer

    def _lookup(self, path: str) -> tuple[str, str]:
        match = _PATH.match(path)
        if not match:
            raise _NotFound((404, status(404, "the server could not find the requested resource")))
        key = (match.group(1), match.group(2))
        if key not in self.objects:
            raise _NotFound((404, status(
                404, f'inferenceservices.serving.kserve.io "{key[1]}" not found', key[1])))
        return key

    def _handle_get(self, path: str) -> tuple[int, dict[str, Any]]:
        return 200, copy.deepcopy(self.objects[self._lookup(path)])

    def _handle_patch(self, path: str, content_type: str | None, body: Any) -> tuple[int, dict[str, Any]]:
        key = self._lookup(path)
        current = self.objects[key]
        if self._on_patch:
            self._on_patch.pop(0)(current)
            meta = current["metadata"]
            meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        ctype = (content_type or "").split(";")[0].strip()
        try:
            if ctype == "application/merge-patch+json":
                if not isinstance(body, dict):
                    return 422, status(422, "merge patch body must be a JSON object", key[1])
                patched = merge_patch(current, body)
            elif ctype == "application/json-patch+json":
                if not isinstance(body, list):
                    return 400, status(400, "json patch body must be a list of operations", key[1])
                patched = jsonpatch.apply_patch(current, body)
            else:
                return 415, status(415, f"the body of the request was in an unknown format - accepted "
                                        f"media types include: application/json-patch+json, "
                                        f"application/merge-patch+json, application/apply-patch+yaml "
                                        f"(got {ctype or 'none'})")
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            return 422, status(422, str(exc), key[1])
        rv = current["metadata"]["resourceVersion"]
        if patched.get("metadata", {}).get("resourceVersion") != rv:
            return 409, status(409, "Operation cannot be fulfilled on inferenceservices.serving"
                                    f'.kserve.io "{key[1]}": the object has been modified; please '
                                    "apply your changes to the latest version and try again", key[1])
        patched["metadata"]["resourceVersion"] = str(int(rv) + 1)
        self.objects[key] = patched
        return 200, copy.deepcopy(patched)


# --- sample InferenceServices, shaped like the chart renders them ---------------------------------

MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
NEW_BUNDLE = "s3://shopserve-models/bundles/20261122.090000"
OLD_BUNDLE = "s3://shopserve-models/bundles/20261120.090000"


def _meta(name: str, mode: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "shopserve", "labels": {"app.kubernetes.io/part-of":
                                                                                 "shopserve"}}
    if mode:
        meta["annotations"] = {MODE_ANNOTATION: mode}
    return meta


def knative_search(predictor_percent: int | None = 10, transformer_percent: int | None = 20,
                   mode: str | None = "Knative") -> dict[str, Any]:
    """``search`` in Knative mode: a ranker candidate on the predictor, a transformer image candidate."""
    predictor: dict[str, Any] = {
        "minReplicas": 1, "maxReplicas": 3,
        "model": {"modelFormat": {"name": "triton"}, "protocolVersion": "grpc-v2",
                  "runtime": "shopserve-triton", "storageUri": f"{NEW_BUNDLE}/ranker"}}
    transformer: dict[str, Any] = {
        "minReplicas": 1, "maxReplicas": 4,
        "storageUris": [{"uri": OLD_BUNDLE, "mountPath": "/mnt/models"}],
        "containers": [{"name": "kserve-container", "image": "ghcr.io/shopserve/shopserve:0.2.0"}]}
    if predictor_percent is not None:
        predictor["canaryTrafficPercent"] = predictor_percent
    if transformer_percent is not None:
        transformer["canaryTrafficPercent"] = transformer_percent
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": _meta("search", mode),
            "spec": {"predictor": predictor, "transformer": transformer},
            "status": {"components": {
                "predictor": {"latestRolledoutRevision": "search-predictor-00001",
                              "latestReadyRevision": "search-predictor-00002"},
                "transformer": {"latestRolledoutRevision": "search-transformer-00003",
                                "latestReadyRevision": "search-transformer-00004"}}}}


def _recall_pod(uri: str) -> dict[str, Any]:
    return {"serviceAccountName": "shopserve",
            "storageUris": [{"uri": uri, "mountPath": "/mnt/models"}],
            "containers": [{"name": "kserve-container", "image": "ghcr.io/shopserve/shopserve:0.1.0",
                            "command": ["python", "-m", "predictors.recall"]}]}


def standard_recall(percent: int | None = 10, canary_name: str = "canary",
                    mode: str | None = "Standard") -> dict[str, Any]:
    """``mf-recall`` in Standard mode with one ``spec.canary`` entry (none when percent is None)."""
    spec: dict[str, Any] = {"predictor": {"minReplicas": 2, "maxReplicas": 6, "scaleMetric": "cpu",
                                          "scaleTarget": 70, **_recall_pod(f"{OLD_BUNDLE}/recall")}}
    if percent is not None:
        spec["canary"] = [{"trafficPercent": percent,
                           "predictor": {"name": canary_name, **_recall_pod(f"{NEW_BUNDLE}/recall")}}]
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": _meta("mf-recall", mode), "spec": spec}


def standard_ranker(percent: int = 10, canary_name: str = "candidate") -> dict[str, Any]:
    """``search`` in Standard mode: the ranker's candidate as a ``spec.canary`` model entry."""
    def model(uri: str, named: bool) -> dict[str, Any]:
        m: dict[str, Any] = {"modelFormat": {"name": "triton"}, "protocolVersion": "grpc-v2",
                             "runtime": "shopserve-triton", "storageUri": uri}
        return {"name": "kserve-container", **m} if named else m

    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": _meta("search", "Standard"),
            "spec": {"predictor": {"minReplicas": 1, "maxReplicas": 2,
                                   "autoScaling": {"metrics": [{"type": "Resource"}]},
                                   "model": model(f"{OLD_BUNDLE}/ranker", False)},
                     "transformer": {"containers": [{"name": "kserve-container", "image": "x"}]},
                     "canary": [{"trafficPercent": percent,
                                 "predictor": {"name": canary_name,
                                               "model": model(f"{NEW_BUNDLE}/ranker", True)}}]}}
