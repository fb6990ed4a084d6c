"""Canary traffic of a KServe InferenceService through the Kubernetes API: read, set, promote, roll back.

KServe canaries differ by deployment mode, and so do the patches:

* **Knative** (serverless): the component (``predictor`` or ``transformer``) carries
  ``canaryTrafficPercent``. Its spec *is* the candidate; KServe splits traffic between the latest
  revision and the last one rolled out at 100%. Set a step: ``canaryTrafficPercent: N``. Promote:
  remove the field (``null`` in a JSON merge patch), so the latest revision takes 100%. Roll back:
  ``canaryTrafficPercent: 0``, which pins all traffic to the previous rolled-out revision and
  leaves the candidate revision idle. Patch type: JSON merge patch
  (``application/merge-patch+json``), because ``null`` deletes a key there.
* **Standard** (raw Deployments, KServe >= 0.20): ``spec.canary`` is a list of
  ``{trafficPercent, predictor: {name, ...}}``; predictors only. Set a step: replace that entry's
  ``trafficPercent``. Promote: the entry's predictor becomes ``spec.predictor`` and the entry
  goes. Roll back: the entry goes (not ``trafficPercent: 0``: a parked canary keeps its own
  Deployment and, for the ranker, a GPU). Patch type: JSON patch (``application/json-patch+json``),
  because ``spec.canary`` is an atomic list: a merge patch would have to resend every entry
  whole, while JSON patch ops address one entry by index.

Every patch carries the ``metadata.resourceVersion`` it was built from (a merge-patch key, or a
JSON-patch ``replace``). The API server treats a patched resourceVersion as a precondition and
answers 409 Conflict when the object changed since it was read, so no patch lands on a spec it
was not built for (a by-index JSON patch would otherwise hit whatever entry now sits at that
index). A JSON-patch ``test`` op would guard as well, but a failed test is a 422 indistinguishable
from an invalid patch, where the replace gives the conflict its own status. On a 409 the
idempotent percent step re-reads, rebuilds and retries once; promote and roll back fail, because
whoever changed the object may have changed the candidate the gate judged.

The kubernetes client (v37) sends ``application/merge-patch+json`` unless told otherwise, and turns
``application/json-patch+json`` with a non-list body into a strategic merge patch, which custom
resources reject: the content type is therefore always passed explicitly, and JSON patches are lists.

These patches change the live object behind Helm's back: afterwards, update the values
(``<component>.storageUri`` to the candidate and ``canary.enabled=false`` after a promotion,
``canary.enabled=false`` after a roll back) so that the next ``helm upgrade`` agrees.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import urllib3

if TYPE_CHECKING:
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

# The kubernetes package is imported where it is used: it takes half a second, and every
# `shopserve` command builds the parser that names `promote` and `rollback`.

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
PLURAL = "inferenceservices"
RESOURCE = f"{PLURAL}.{GROUP}"
"""The resource as RBAC rules and error messages name it."""

KNATIVE = "Knative"
STANDARD = "Standard"
MODES = (KNATIVE, STANDARD)
Mode = Literal["Knative", "Standard"]

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

KNATIVE_COMPONENTS = ("predictor", "transformer", "explainer")
"""Components that take ``canaryTrafficPercent`` in Knative mode."""

STANDARD_COMPONENTS = ("predictor",)
"""Components a Standard-mode ``spec.canary`` entry can hold (KServe: predictors only)."""

MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
_MODE_ALIASES: dict[str, Mode] = {"Knative": "Knative", "Serverless": "Knative", "Standard": "Standard",
                                  "RawDeployment": "Standard"}
"""KServe's names for the two modes, old and new, as the annotation and status carry them."""

KEPT_ON_PROMOTION = ("minReplicas", "maxReplicas", "scaleMetric", "scaleMetricType", "scaleTarget",
                     "autoScaling", "containerConcurrency", "deploymentStrategy")
"""Predictor fields a promotion keeps from the stable predictor when the canary entry lacks them.

The chart renders a canary entry without scaling (one replica is enough for a share of the
traffic); promoting it wholesale would silently drop the stable predictor's autoscaling.
"""

TrafficAction = Literal["set", "promote", "rollback"]
"""What a traffic step does to an InferenceService: set the canary share, promote it, or roll it back."""
Patch = dict[str, Any] | list[dict[str, Any]]

_T = TypeVar("_T")


class KubeError(Exception):
    """A Kubernetes API call failed, or the InferenceService is not in a state the step needs.

    The message says what to do about it.

    Attributes:
        status: HTTP status of the API server's answer, or None when there was none
            (unreachable server, bad configuration, a state check on our side).
        reason: The API server's ``reason`` (``NotFound``, ``Conflict``, ...), when it gave one.
    """

    def __init__(self, message: str, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class PatchRequest:
    """One PATCH as it goes over the wire: what ``--dry-run`` prints and the client sends.

    Attributes:
        path: Request path on the API server.
        content_type: ``application/merge-patch+json`` or ``application/json-patch+json``.
        body: The patch document.
        method: Always ``PATCH``.
    """

    path: str
    content_type: str
    body: Patch
    method: str = "PATCH"

    def render(self) -> str:
        """The request as text: method and path, the content type, a blank line, the JSON body."""
        return (f"{self.method} {self.path}\nContent-Type: {self.content_type}\n\n"
                f"{json.dumps(self.body, indent=2, sort_keys=False)}")


@dataclass(frozen=True)
class TrafficSplit:
    """How one component's traffic is split between the stable version and its canary.

    Attributes:
        stable_percent: Share of the stable version (last rolled out at 100%).
        canary_percent: Share of the candidate; None when no canary is in flight.
        canary_storage_uri: The candidate's ``storageUri`` (or first ``storageUris`` entry).
        canary_image: The candidate's first container image, when it names one.
        canary_name: Standard mode: the ``spec.canary`` entry's predictor name.
        stable_revision: Knative mode: the latest rolled-out revision, from the status.
        canary_revision: Knative mode: the latest ready revision, from the status.
        resource_version: ``metadata.resourceVersion`` of the object this was read from.
    """

    stable_percent: int
    canary_percent: int | None
    canary_storage_uri: str | None = None
    canary_image: str | None = None
    canary_name: str | None = None
    stable_revision: str | None = None
    canary_revision: str | None = None
    resource_version: str | None = None

    @property
    def in_flight(self) -> bool:
        """True when a canary exists (also one parked at 0%)."""
        return self.canary_percent is not None

    def describe(self) -> str:
        """``stable 90% / canary 10% (s3://...)``, or ``stable 100% (no canary)``."""
        if self.canary_percent is None:
            return f"stable {self.stable_percent}% (no canary)"
        # A transformer canary differs by image, a predictor canary by storageUri: show both.
        what = "; ".join(x for x in (self.canary_storage_uri, self.canary_image) if x) or (
            self.canary_revision or self.canary_name)
        return f"stable {self.stable_percent}% / canary {self.canary_percent}%" + (
            f" ({what})" if what else "")


@dataclass(frozen=True)
class TrafficChange:
    """The outcome of one step.

    Attributes:
        action: ``set``, ``promote`` or ``rollback``.
        before: The split read just before patching.
        after: The split the API server answered with, or the one expected when not applied.
        request: The PATCH sent (or printed, in a dry run).
        applied: False in a dry run.
        attempts: PATCH attempts made (2 after a conflict retried).
    """

    action: TrafficAction
    before: TrafficSplit
    after: TrafficSplit
    request: PatchRequest
    applied: bool
    attempts: int = 1

    def describe(self) -> str:
        """``before -> after``, marked when nothing was applied."""
        line = f"{self.before.describe()} -> {self.after.describe()}"
        return line if self.applied else f"{line} (dry run: not applied)"


# --- reading the split (pure) ------------------------------------------------------------------


def resource_path(namespace: str, name: str) -> str:
    """Path of one InferenceService on the API server."""
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"


def detect_mode(obj: dict[str, Any]) -> Mode | None:
    """The deployment mode an InferenceService declares (annotation, then status), or None."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    for value in (annotations.get(MODE_ANNOTATION), (obj.get("status") or {}).get("deploymentMode")):
        if value in _MODE_ALIASES:
            return _MODE_ALIASES[value]
    return None


def _candidate(component: dict[str, Any]) -> tuple[str | None, str | None]:
    """(storageUri, image) of a component spec: the model, a plain storageUri, or storageUris."""
    model = component.get("model") or {}
    uri = model.get("storageUri") or component.get("storageUri")
    if not uri and component.get("storageUris"):
        uri = component["storageUris"][0].get("uri")
    containers = component.get("containers") or []
    image = containers[0].get("image") if containers else model.get("image")
    return uri, image


def _spec_component(obj: dict[str, Any], component: str) -> dict[str, Any]:
    spec = (obj.get("spec") or {}).get(component)
    if not isinstance(spec, dict):
        name = (obj.get("metadata") or {}).get("name", "?")
        raise KubeError(f"InferenceService {name} has no spec.{component}; pick another --component")
    return spec


def knative_split(obj: dict[str, Any], component: str) -> TrafficSplit:
    """The split of a Knative-mode component: ``canaryTrafficPercent`` and revision status.

    Args:
        obj: The InferenceService as the API server returns it.
        component: ``predictor``, ``transformer`` or ``explainer``.

    Returns:
        No canary when the component has no ``canaryTrafficPercent`` (its latest revision takes
        everything); otherwise the candidate (the spec) takes that share.
    """
    spec = _spec_component(obj, component)
    status = ((obj.get("status") or {}).get("components") or {}).get(component) or {}
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    percent = spec.get("canaryTrafficPercent")
    if percent is None:
        return TrafficSplit(100, None, stable_revision=status.get("latestRolledoutRevision"),
                            resource_version=rv)
    uri, image = _candidate(spec)
    return TrafficSplit(100 - int(percent), int(percent), canary_storage_uri=uri, canary_image=image,
                        stable_revision=status.get("latestRolledoutRevision"),
                        canary_revision=status.get("latestReadyRevision"), resource_version=rv)


def find_canary(obj: dict[str, Any], canary_name: str | None) -> int | None:
    """Index of the Standard-mode ``spec.canary`` entry named ``canary_name``.

    Args:
        obj: The InferenceService.
        canary_name: The entry's ``predictor.name``; None accepts the only entry.

    Returns:
        The index, or None when ``spec.canary`` is empty or absent.

    Raises:
        KubeError: No entry of that name, or several entries and no name to choose.
    """
    entries = (obj.get("spec") or {}).get("canary") or []
    if not entries:
        return None
    names = [(e.get("predictor") or {}).get("name") for e in entries]
    if canary_name is None:
        if len(entries) > 1:
            raise KubeError(f"spec.canary has {len(entries)} entries ({', '.join(map(str, names))}); "
                            "choose one with --canary-name")
        return 0
    if canary_name not in names:
        raise KubeError(f"spec.canary has no entry named {canary_name!r} (entries: "
                        f"{', '.join(map(str, names))}); check --canary-name")
    return names.index(canary_name)


def standard_split(obj: dict[str, Any], canary_name: str | None = None) -> TrafficSplit:
    """The split of a Standard-mode InferenceService: its ``spec.canary`` entries.

    The stable predictor takes what the entries leave (100 minus their sum).
    """
    entries = (obj.get("spec") or {}).get("canary") or []
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    stable = 100 - sum(int(e.get("trafficPercent") or 0) for e in entries)
    index = find_canary(obj, canary_name)
    if index is None:
        return TrafficSplit(stable, None, resource_version=rv)
    entry = entries[index]
    predictor = entry.get("predictor") or {}
    uri, image = _candidate(predictor)
    return TrafficSplit(stable, int(entry.get("trafficPercent") or 0), canary_storage_uri=uri,
                        canary_image=image, canary_name=predictor.get("name"), resource_version=rv)


# --- building patches (pure) -------------------------------------------------------------------


def _check_percent(percent: int) -> int:
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise KubeError(f"traffic percent must be an integer in 0..100, got {percent!r}")
    return percent


def knative_patch(component: str, action: TrafficAction, resource_version: str | None,
                  percent: int | None = None) -> dict[str, Any]:
    """JSON merge patch of a Knative-mode step on one component.

    Args:
        component: ``predictor``, ``transformer`` or ``explainer``.
        action: ``set`` (``canaryTrafficPercent: percent``), ``promote`` (``null``: the field goes,
            the latest revision takes 100%) or ``rollback`` (``0``: all traffic back to the
            previous rolled-out revision).
        resource_version: The version the step was decided on (a precondition; None: none).
        percent: The share for ``set``.

    Returns:
        The merge patch document.
    """
    if component not in KNATIVE_COMPONENTS:
        raise KubeError(f"component {component!r} takes no canary; choose one of "
                        f"{', '.join(KNATIVE_COMPONENTS)}")
    value: int | None
    if action == "set":
        if percent is None:
            raise KubeError("a traffic step needs a percent")
        value = _check_percent(percent)
    elif action == "promote":
        value = None
    elif action == "rollback":
        value = 0
    else:
        raise KubeError(f"unknown action {action!r}")
    patch: dict[str, Any] = {}
    if resource_version is not None:
        patch["metadata"] = {"resourceVersion": resource_version}
    patch["spec"] = {component: {"canaryTrafficPercent": value}}
    return patch


def promoted_predictor(stable: dict[str, Any], canary: dict[str, Any]) -> dict[str, Any]:
    """The predictor spec a Standard-mode promotion writes: the canary's, made a stable predictor.

    The entry's ``name`` (which names only the canary's Deployment) and its ``model.name`` (which
    the canary's container spec requires and KServe's webhook rejects on a stable predictor) go;
    the stable predictor's scaling fields (``KEPT_ON_PROMOTION``) stay where the canary has none.
    """
    promoted = copy.deepcopy(canary)
    promoted.pop("name", None)
    if isinstance(promoted.get("model"), dict):
        promoted["model"].pop("name", None)
    for key in KEPT_ON_PROMOTION:
        if key in stable and key not in promoted:
            promoted[key] = copy.deepcopy(stable[key])
    return promoted


def standard_patch(obj: dict[str, Any], action: TrafficAction, percent: int | None = None,
                   canary_name: str | None = None) -> list[dict[str, Any]]:
    """JSON patch of a Standard-mode step, built from the object it applies to.

    Args:
        obj: The InferenceService as read (its resourceVersion becomes the precondition).
        action: ``set`` (the entry's ``trafficPercent``), ``promote`` (the entry's predictor
            replaces ``spec.predictor``; the entry goes) or ``rollback`` (the entry goes).
        percent: The share for ``set``.
        canary_name: Which ``spec.canary`` entry; None for the only one.

    Returns:
        The list of JSON patch operations.

    Raises:
        KubeError: No canary in flight, or an ambiguous or unknown entry.
    """
    index = find_canary(obj, canary_name)
    name = (obj.get("metadata") or {}).get("name", "?")
    if index is None:
        raise KubeError(f"InferenceService {name} has no spec.canary: no canary in flight to "
                        f"{'step' if action == 'set' else action}")
    entries = obj["spec"]["canary"]
    ops: list[dict[str, Any]] = []
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    if rv is not None:
        ops.append({"op": "replace", "path": "/metadata/resourceVersion", "value": rv})
    # Removing the last entry removes the list: an empty spec.canary would be noise in the object.
    remove_entry = ({"op": "remove", "path": "/spec/canary"} if len(entries) == 1
                    else {"op": "remove", "path": f"/spec/canary/{index}"})
    if action == "set":
        if percent is None:
            raise KubeError("a traffic step needs a percent")
        ops.append({"op": "replace", "path": f"/spec/canary/{index}/trafficPercent",
                    "value": _check_percent(percent)})
    elif action == "promote":
        stable = obj["spec"].get("predictor") or {}
        ops.append({"op": "replace" if "predictor" in obj["spec"] else "add", "path": "/spec/predictor",
                    "value": promoted_predictor(stable, entries[index].get("predictor") or {})})
        ops.append(remove_entry)
    elif action == "rollback":
        ops.append(remove_entry)
    else:
        raise KubeError(f"unknown action {action!r}")
    return ops


def expected_split(before: TrafficSplit, action: TrafficAction, percent: int | None = None,
                   mode: Mode = KNATIVE) -> TrafficSplit:
    """The split a step should leave, for a dry run (nothing to read back).

    A Knative roll back parks the candidate at 0% (it stays in the spec); a Standard one removes it.
    """
    freed = before.stable_percent + (before.canary_percent or 0)
    if action == "set":
        assert percent is not None
        return replace(before, stable_percent=freed - percent, canary_percent=percent)
    if action == "rollback" and mode == KNATIVE:
        return replace(before, stable_percent=freed, canary_percent=0)
    if action == "promote":
        return TrafficSplit(100, None, resource_version=before.resource_version)
    return TrafficSplit(freed, None, resource_version=before.resource_version)


# --- the client ---------------------------------------------------------------------------------


def api_client_from_config(kubeconfig: str | None = None, context: str | None = None) -> k8s.ApiClient:
    """An API client from a kubeconfig, else from the in-cluster service account.

    Args:
        kubeconfig: Path of a kubeconfig; None uses ``$KUBECONFIG`` or ``~/.kube/config``.
        context: A context of that kubeconfig; None uses its current context.

    Raises:
        KubeError: Neither a kubeconfig nor an in-cluster configuration could be loaded.
    """
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config
    from kubernetes.config.config_exception import ConfigException

    default = os.path.expanduser(os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0])
    if kubeconfig or context or os.path.exists(default):
        try:
            return k8s_config.new_client_from_config(config_file=kubeconfig, context=context,
                                                     persist_config=False)
        except (ConfigException, OSError, ValueError) as exc:
            raise KubeError(f"cannot load kubeconfig {kubeconfig or default}"
                            f"{f' (context {context})' if context else ''}: {exc}") from exc
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except ConfigException as exc:
        raise KubeError(f"no Kubernetes configuration: no kubeconfig at {default} and not in a pod "
                        f"({exc}); pass --kubeconfig or set KUBECONFIG") from exc
    return k8s.ApiClient(configuration)


def _candidate_of(split: TrafficSplit) -> tuple[str | None, str | None, str | None]:
    """What identifies the candidate of a split (its revision name changes with any edit)."""
    return split.canary_storage_uri, split.canary_image, split.canary_name


def _status_message(exc: ApiException) -> tuple[str, str | None]:
    """The API server's Status message and reason, or the raw answer when it is not a Status."""
    try:
        status = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return (exc.body or exc.reason or "no message").strip(), None
    if isinstance(status, dict):
        return str(status.get("message") or exc.reason or "no message"), status.get("reason")
    return str(status), None


class InferenceServiceTraffic:
    """Canary traffic of one component of one InferenceService, through the Kubernetes API.

    Args:
        name: The InferenceService (``search``, ``mf-recall``).
        namespace: Its namespace.
        component: ``predictor`` or ``transformer`` (Knative); ``predictor`` only (Standard).
        mode: ``Knative`` or ``Standard``; None reads it from the object's
            ``serving.kserve.io/deploymentMode`` annotation (or status) on each read. A mode given
            that contradicts the object's is refused.
        dry_run: Print each PATCH (method, path, content type, body) instead of sending it. Reads
            (GET) still happen: the patches are built from the live object.
        api_client: A configured client; None loads one with ``api_client_from_config``.
        canary_name: Standard mode: the ``spec.canary`` entry's predictor name; None accepts the
            only entry.
        echo: Where dry-run output goes (``print`` by default).
        timeout: Seconds each API call may take.
    """

    def __init__(
        self,
        name: str,
        namespace: str,
        component: str = "predictor",
        mode: Mode | None = None,
        dry_run: bool = False,
        api_client: k8s.ApiClient | None = None,
        canary_name: str | None = None,
        echo: Callable[[str], None] = print,
        timeout: float = 30.0,
    ) -> None:
        if mode is not None and mode not in MODES:
            raise KubeError(f"unknown mode {mode!r}; choose Knative or Standard")
        self.name = name
        self.namespace = namespace
        self.component = component
        self.mode = mode
        self.dry_run = dry_run
        self.canary_name = canary_name
        self.echo = echo
        self.timeout = timeout
        self._check_component(mode)
        from kubernetes.client import CustomObjectsApi

        self.api = CustomObjectsApi(api_client or api_client_from_config())

    @property
    def path(self) -> str:
        """Request path of the InferenceService."""
        return resource_path(self.namespace, self.name)

    @property
    def host(self) -> str:
        """The API server's URL, for messages."""
        return str(self.api.api_client.configuration.host)

    def _check_component(self, mode: Mode | None) -> None:
        if mode == STANDARD and self.component not in STANDARD_COMPONENTS:
            raise KubeError(f"Standard mode canaries predictors only (KServe's spec.canary), not the "
                            f"{self.component}; roll a {self.component} canary in Knative mode")
        if self.component not in KNATIVE_COMPONENTS:
            raise KubeError(f"component {self.component!r} takes no canary; choose one of "
                            f"{', '.join(KNATIVE_COMPONENTS)}")

    # --- API calls ---

    def _call(self, verb: str, call: Callable[[], _T]) -> _T:
        """Run one API call, turning every failure into a KubeError a user can act on."""
        from kubernetes.client.exceptions import ApiException

        try:
            return call()
        except ApiException as exc:
            raise self._api_error(verb, exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeError(f"cannot reach the Kubernetes API server at {self.host} to {verb} "
                            f"InferenceService {self.namespace}/{self.name}: {exc}; check the "
                            "cluster is up and --kubeconfig/--context point at it") from exc

    def _api_error(self, verb: str, exc: ApiException) -> KubeError:
        message, reason = _status_message(exc)
        status = int(exc.status or 0)
        target = f"InferenceService {self.namespace}/{self.name}"
        if status == 404:
            text = (f"{target} not found ({message}); check --isvc and --namespace, and that KServe's "
                    f"CRD is installed (kubectl get crd {RESOURCE})")
        elif status == 403:
            text = (f"forbidden: the identity in use may not {verb} {RESOURCE} in namespace "
                    f"{self.namespace} ({message}); grant it a Role with apiGroups [{GROUP}], "
                    f"resources [{PLURAL}], verbs [get, patch]")
        elif status == 401:
            text = (f"unauthorized at {self.host} ({message}); the credentials of the kubeconfig "
                    "context are missing or expired")
        elif status == 409:
            text = (f"conflict: {target} changed since it was read ({message}); read it again "
                    f"(kubectl -n {self.namespace} get isvc {self.name} -o yaml) and re-run the step")
        elif status == 422:
            text = f"the API server rejected the patch of {target} as invalid: {message}"
        elif status == 415:
            text = f"the API server refused the patch format for {target}: {message}"
        else:
            text = f"{verb} {target} failed with HTTP {status or '?'} {exc.reason or ''}: {message}"
        return KubeError(text, status=status or None, reason=reason)

    def get(self) -> dict[str, Any]:
        """The InferenceService as the API server returns it (GET)."""
        return self._call("get", lambda: self.api.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name, _request_timeout=self.timeout))

    def _send(self, request: PatchRequest) -> dict[str, Any]:
        return self._call("patch", lambda: self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name, request.body,
            _content_type=request.content_type, _request_timeout=self.timeout))

    # --- the split ---

    def _mode_of(self, obj: dict[str, Any]) -> Mode:
        declared = detect_mode(obj)
        if self.mode is None:
            if declared is None:
                raise KubeError(f"InferenceService {self.namespace}/{self.name} declares no deployment "
                                f"mode ({MODE_ANNOTATION}); pass --mode Knative or --mode Standard")
            self._check_component(declared)
            return declared
        if declared is not None and declared != self.mode:
            raise KubeError(f"InferenceService {self.namespace}/{self.name} runs in {declared} mode, "
                            f"not {self.mode}; pass --mode {declared}")
        return self.mode

    def split_of(self, obj: dict[str, Any]) -> TrafficSplit:
        """The split of this component in an InferenceService object (no API call)."""
        if self._mode_of(obj) == KNATIVE:
            return knative_split(obj, self.component)
        return standard_split(obj, self.canary_name)

    def read(self) -> TrafficSplit:
        """GET the InferenceService and return the component's current split."""
        return self.split_of(self.get())

    def build(self, obj: dict[str, Any], action: TrafficAction, percent: int | None = None) -> PatchRequest:
        """The PATCH a step would send for an InferenceService object (no API call).

        Raises:
            KubeError: No canary in flight, or a percent out of range.
        """
        mode = self._mode_of(obj)
        before = self.split_of(obj)
        if not before.in_flight:
            raise KubeError(f"no canary in flight on {self.namespace}/{self.name} {self.component} "
                            f"({before.describe()}): nothing to {'step' if action == 'set' else action}; "
                            "deploy the candidate first (helm upgrade with <component>.canary.enabled=true)")
        if mode == KNATIVE:
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            return PatchRequest(self.path, MERGE_PATCH, knative_patch(self.component, action, rv, percent))
        return PatchRequest(self.path, JSON_PATCH, standard_patch(obj, action, percent, self.canary_name))

    def _step(self, action: TrafficAction, percent: int | None = None,
              retry_conflict: bool = False) -> TrafficChange:
        if percent is not None:
            _check_percent(percent)
        attempts = 0
        first: TrafficSplit | None = None
        while True:
            obj = self.get()
            before = self.split_of(obj)
            if first is not None and _candidate_of(first) != _candidate_of(before):
                # A retry must not carry a step judged on one candidate over to another one.
                raise KubeError(f"conflict: the canary of {self.namespace}/{self.name} changed while "
                                f"stepping it ({first.describe()} -> {before.describe()}); not retrying",
                                status=409, reason="Conflict")
            first = first or before
            request = self.build(obj, action, percent)
            if self.dry_run:
                self.echo(request.render())
                after = expected_split(before, action, percent, self._mode_of(obj))
                return TrafficChange(action, before, after, request, applied=False, attempts=0)
            attempts += 1
            try:
                answer = self._send(request)
            except KubeError as exc:
                if exc.status == 409 and retry_conflict and attempts < 2:
                    continue  # someone changed it: re-read, rebuild, try once more
                if exc.status == 409 and attempts > 1:
                    raise KubeError(f"{exc} (gave up after {attempts} attempts: it keeps changing)",
                                    status=exc.status, reason=exc.reason) from exc
                raise
            return TrafficChange(action, before, self.split_of(answer), request, applied=True,
                                 attempts=attempts)

    def set_canary_percent(self, percent: int) -> TrafficChange:
        """Move the canary to ``percent`` of the traffic (0..100). Retries once on a conflict.

        The step is idempotent, so after a 409 it re-reads the object, checks the same candidate is
        still in flight (its storageUri, image and entry name), rebuilds the patch on the new
        resourceVersion and sends it once more.
        """
        return self._step("set", percent, retry_conflict=True)

    def promote(self) -> TrafficChange:
        """Make the candidate the stable version with all the traffic.

        Knative: ``canaryTrafficPercent`` removed. Standard: the entry's predictor becomes
        ``spec.predictor`` and the entry goes. Fails on a conflict (no retry).
        """
        return self._step("promote")

    def rollback(self) -> TrafficChange:
        """Send all traffic back to the stable version.

        Knative: ``canaryTrafficPercent: 0`` (the candidate revision stays, idle). Standard: the
        ``spec.canary`` entry goes, with its Deployment. Fails on a conflict (no retry).
        """
        return self._step("rollback")
