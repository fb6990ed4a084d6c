"""Promotion and rollback through the real kubernetes client, against a fake API server on loopback.

The fake (tests/fake_kube.py) stands in for the API server's InferenceService endpoints only; the
client, its configuration and the code under test are the real ones. Each test asserts what went
over the wire: method, path, content type and patch body.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from kubernetes import client as k8s

from pipeline.cli import main
from pipeline.rollout.kube import JSON_PATCH, MERGE_PATCH, InferenceServiceTraffic, KubeError
from tests.fake_kube import (
    NEW_BUNDLE,
    OLD_BUNDLE,
    FakeKubeAPI,
    forbidden,
    knative_search,
    merge_patch,
    standard_recall,
    status,
)
from tests.servers import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[4]
NS = "shopserve"
SEARCH_PATH = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices/search"
RECALL_PATH = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices/mf-recall"


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as fake:
        yield fake


def _client(url: str) -> k8s.ApiClient:
    configuration = k8s.Configuration(host=url)
    configuration.retries = 0  # a refused connection fails at once, not after urllib3's retries
    return k8s.ApiClient(configuration)


def _traffic(api: FakeKubeAPI, name: str, **kwargs: Any) -> InferenceServiceTraffic:
    return InferenceServiceTraffic(name, NS, api_client=_client(api.url), **kwargs)


def _methods(api: FakeKubeAPI) -> list[str]:
    return [r.method for r in api.requests]


# --- the three steps, both modes ---

KNATIVE_CASES = [
    # (component, action, percent, patch spec, value left in the stored object)
    ("predictor", "set", 30, {"predictor": {"canaryTrafficPercent": 30}}, 30),
    ("predictor", "promote", None, {"predictor": {"canaryTrafficPercent": None}}, "absent"),
    ("predictor", "rollback", None, {"predictor": {"canaryTrafficPercent": 0}}, 0),
    ("transformer", "set", 50, {"transformer": {"canaryTrafficPercent": 50}}, 50),
    ("transformer", "promote", None, {"transformer": {"canaryTrafficPercent": None}}, "absent"),
    ("transformer", "rollback", None, {"transformer": {"canaryTrafficPercent": 0}}, 0),
]


def _run(traffic: InferenceServiceTraffic, action: str, percent: int | None) -> Any:
    if action == "set":
        assert percent is not None
        return traffic.set_canary_percent(percent)
    return traffic.promote() if action == "promote" else traffic.rollback()


@pytest.mark.parametrize(("component", "action", "percent", "spec", "left"), KNATIVE_CASES)
def test_knative_step(api: FakeKubeAPI, component: str, action: str, percent: int | None,
                      spec: dict[str, Any], left: Any) -> None:
    api.put(knative_search(), resource_version=41)
    change = _run(_traffic(api, "search", component=component), action, percent)

    assert _methods(api) == ["GET", "PATCH"]
    sent = api.patches()[0]
    assert (sent.path, sent.content_type) == (SEARCH_PATH, MERGE_PATCH)
    assert sent.body == {"metadata": {"resourceVersion": "41"}, "spec": spec}
    stored = api.get(NS, "search")["spec"][component]
    assert stored.get("canaryTrafficPercent", "absent") == left
    assert stored is not None and change.applied and change.attempts == 1
    assert change.before.canary_percent == (10 if component == "predictor" else 20)
    expected_after = {"set": percent, "promote": None, "rollback": 0}[action]
    assert change.after.canary_percent == expected_after


STANDARD_CASES = [
    ("set", 40, [{"op": "replace", "path": "/spec/canary/0/trafficPercent", "value": 40}]),
    ("rollback", None, [{"op": "remove", "path": "/spec/canary"}]),
]


@pytest.mark.parametrize(("action", "percent", "ops"), STANDARD_CASES)
def test_standard_step(api: FakeKubeAPI, action: str, percent: int | None, ops: list[dict[str, Any]]) -> None:
    api.put(standard_recall(), resource_version=12)
    change = _run(_traffic(api, "mf-recall"), action, percent)

    assert _methods(api) == ["GET", "PATCH"]
    sent = api.patches()[0]
    assert (sent.path, sent.content_type) == (RECALL_PATH, JSON_PATCH)
    assert sent.body == [{"op": "replace", "path": "/metadata/resourceVersion", "value": "12"}, *ops]
    stored = api.get(NS, "mf-recall")
    if action == "set":
        assert stored["spec"]["canary"][0]["trafficPercent"] == 40
        assert (change.after.stable_percent, change.after.canary_percent) == (60, 40)
    else:
        assert "canary" not in stored["spec"]
        assert stored["spec"]["predictor"]["storageUris"][0]["uri"] == f"{OLD_BUNDLE}/recall"
        assert (change.after.stable_percent, change.after.canary_percent) == (100, None)


def test_standard_promote(api: FakeKubeAPI) -> None:
    original = api.put(standard_recall(), resource_version=12)
    change = _traffic(api, "mf-recall", mode="Standard").promote()

    sent = api.patches()[0]
    assert (sent.method, sent.path, sent.content_type) == ("PATCH", RECALL_PATH, JSON_PATCH)
    assert [(op["op"], op["path"]) for op in sent.body] == [
        ("replace", "/metadata/resourceVersion"), ("replace", "/spec/predictor"), ("remove", "/spec/canary")]
    stored = api.get(NS, "mf-recall")
    assert stored == {**jsonpatch.apply_patch(original, sent.body),
                      "metadata": {**original["metadata"], "resourceVersion": "13"}}
    predictor = stored["spec"]["predictor"]
    assert predictor["storageUris"][0]["uri"] == f"{NEW_BUNDLE}/recall"
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 6)
    assert "name" not in predictor and "canary" not in stored["spec"]
    assert change.before.canary_storage_uri == f"{NEW_BUNDLE}/recall"
    assert change.after.describe() == "stable 100% (no canary)"


def test_read_sends_one_get(api: FakeKubeAPI) -> None:
    api.put(knative_search(), resource_version=3)
    split = _traffic(api, "search").read()
    assert (split.stable_percent, split.canary_percent, split.resource_version) == (90, 10, "3")
    assert split.canary_storage_uri == f"{NEW_BUNDLE}/ranker"
    assert [(r.method, r.path) for r in api.requests] == [("GET", SEARCH_PATH)]


# --- dry run ---

@pytest.mark.parametrize(
    ("obj", "name", "content_type"),
    [(knative_search(), "search", MERGE_PATCH), (standard_recall(), "mf-recall", JSON_PATCH)],
)
def test_dry_run_prints_the_exact_patch_and_sends_none(api: FakeKubeAPI, obj: dict[str, Any], name: str,
                                                       content_type: str) -> None:
    stored = api.put(obj, resource_version=5)
    printed: list[str] = []
    change = _traffic(api, name, dry_run=True, echo=printed.append).promote()

    assert _methods(api) == ["GET"]
    assert api.get(NS, name) == stored
    assert not change.applied and change.after.canary_percent is None
    head, body = printed[0].split("\n\n", 1)
    assert head == (f"PATCH /apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices/{name}\n"
                    f"Content-Type: {content_type}")
    assert json.loads(body) == change.request.body
    # What it printed is what it would have sent: applied, it promotes.
    promoted = merge_patch(stored, change.request.body) if content_type == MERGE_PATCH else \
        jsonpatch.apply_patch(stored, change.request.body)
    assert "canary" not in promoted["spec"]


# --- errors ---

def test_404_names_what_to_check(api: FakeKubeAPI) -> None:
    with pytest.raises(KubeError) as info:
        _traffic(api, "search").read()
    assert info.value.status == 404 and info.value.reason == "NotFound"
    message = str(info.value)
    assert f"InferenceService {NS}/search not found" in message
    assert "--namespace" in message and "kubectl get crd inferenceservices.serving.kserve.io" in message


@pytest.mark.parametrize(("method", "verb"), [("GET", "get"), ("PATCH", "patch")])
def test_403_names_the_missing_permission(api: FakeKubeAPI, method: str, verb: str) -> None:
    api.put(knative_search())
    api.fail_next(method, *forbidden(verb, NS, "search"))
    with pytest.raises(KubeError) as info:
        _traffic(api, "search").set_canary_percent(20)
    assert info.value.status == 403
    message = str(info.value)
    assert f"may not {verb} inferenceservices.serving.kserve.io in namespace {NS}" in message
    assert "verbs [get, patch]" in message
    assert 'cannot patch resource "inferenceservices"' in message or verb == "get"


def _concurrent_writer(obj: dict[str, Any]) -> None:
    obj["metadata"]["labels"]["touched"] = "yes"  # another client writes: resourceVersion moves on


def test_409_on_a_step_rereads_and_retries_once(api: FakeKubeAPI) -> None:
    api.put(knative_search(), resource_version=10)
    api.on_patch(_concurrent_writer)
    change = _traffic(api, "search").set_canary_percent(25)

    assert _methods(api) == ["GET", "PATCH", "GET", "PATCH"]
    first, second = api.patches()
    assert first.body["metadata"]["resourceVersion"] == "10"
    assert second.body["metadata"]["resourceVersion"] == "11"  # rebuilt on the re-read object
    stored = api.get(NS, "search")
    assert stored["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert stored["metadata"]["labels"]["touched"] == "yes"  # the other writer's change survives
    assert change.attempts == 2


def test_409_with_a_new_candidate_is_not_retried(api: FakeKubeAPI) -> None:
    api.put(knative_search(), resource_version=10)

    def swap_candidate(obj: dict[str, Any]) -> None:
        obj["spec"]["predictor"]["model"]["storageUri"] = "s3://shopserve-models/bundles/other/ranker"

    api.on_patch(swap_candidate)
    with pytest.raises(KubeError, match="the canary of shopserve/search changed while stepping it") as info:
        _traffic(api, "search").set_canary_percent(25)
    assert info.value.status == 409
    assert _methods(api) == ["GET", "PATCH", "GET"]
    assert api.get(NS, "search")["spec"]["predictor"]["canaryTrafficPercent"] == 10


def test_409_twice_gives_up_clearly(api: FakeKubeAPI) -> None:
    api.put(standard_recall(), resource_version=10)
    api.on_patch(_concurrent_writer)
    api.on_patch(_concurrent_writer)
    with pytest.raises(KubeError) as info:
        _traffic(api, "mf-recall").set_canary_percent(25)
    assert info.value.status == 409
    assert "changed since it was read" in str(info.value) and "gave up after 2 attempts" in str(info.value)
    assert _methods(api) == ["GET", "PATCH", "GET", "PATCH"]
    assert api.get(NS, "mf-recall")["spec"]["canary"][0]["trafficPercent"] == 10


@pytest.mark.parametrize("action", ["promote", "rollback"])
def test_409_on_promote_or_rollback_is_not_retried(api: FakeKubeAPI, action: str) -> None:
    api.put(standard_recall(), resource_version=10)
    api.on_patch(_concurrent_writer)
    with pytest.raises(KubeError, match="conflict: InferenceService shopserve/mf-recall changed"):
        _run(_traffic(api, "mf-recall"), action, None)
    assert _methods(api) == ["GET", "PATCH"]
    assert "canary" in api.get(NS, "mf-recall")["spec"]


def test_422_reports_the_servers_reason(api: FakeKubeAPI) -> None:
    api.put(knative_search())
    api.fail_next("PATCH", 422, status(422, "spec.predictor.canaryTrafficPercent: Invalid value: 120"))
    with pytest.raises(KubeError, match="rejected the patch .* as invalid: spec.predictor.canaryTraffic"):
        _traffic(api, "search").set_canary_percent(20)


def test_unreachable_server() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    traffic = InferenceServiceTraffic("search", NS, api_client=_client(url))
    with pytest.raises(KubeError, match=f"cannot reach the Kubernetes API server at {url}") as info:
        traffic.read()
    assert info.value.status is None


def test_no_canary_in_flight_sends_no_patch(api: FakeKubeAPI) -> None:
    api.put(knative_search(predictor_percent=None))
    with pytest.raises(KubeError, match="no canary in flight .*nothing to promote"):
        _traffic(api, "search").promote()
    assert _methods(api) == ["GET"]


def test_the_content_type_is_never_left_to_the_client(api: FakeKubeAPI) -> None:
    """Left alone, client v37 would send a JSON patch list as a merge patch; the fake answers 422."""
    api.put(standard_recall(), resource_version=1)
    raw = k8s.CustomObjectsApi(_client(api.url))
    ops = [{"op": "replace", "path": "/spec/canary/0/trafficPercent", "value": 5}]
    with pytest.raises(k8s.ApiException):
        raw.patch_namespaced_custom_object("serving.kserve.io", "v1beta1", NS, "inferenceservices",
                                           "mf-recall", ops)
    assert api.patches()[0].content_type == MERGE_PATCH


# --- the command line, end to end ---

def _kubeconfig(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "gate", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "gate", "namespace": NS}}],
    }))
    return path


def _cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0)


def test_cli_step_then_promote(api: FakeKubeAPI, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api.put(knative_search(), resource_version=1)
    config = str(_kubeconfig(tmp_path, api.url))
    base = ["-i", "search", "-n", NS, "--kubeconfig", config, "--context", "fake"]

    assert _cli(["promote", *base, "--percent", "50"]) == 0
    assert capsys.readouterr().out == (
        f"step {NS}/search predictor: stable 90% / canary 10% ({NEW_BUNDLE}/ranker) -> "
        f"stable 50% / canary 50% ({NEW_BUNDLE}/ranker)\n")
    assert _cli(["promote", *base]) == 0
    assert capsys.readouterr().out == (
        f"promote {NS}/search predictor: stable 50% / canary 50% ({NEW_BUNDLE}/ranker) -> "
        "stable 100% (no canary)\n")
    assert [p.body["spec"] for p in api.patches()] == [
        {"predictor": {"canaryTrafficPercent": 50}}, {"predictor": {"canaryTrafficPercent": None}}]
    assert {r.authorization for r in api.requests} == {"Bearer t0ken"}  # the kubeconfig's user


def test_cli_rollback_standard_dry_run_then_for_real(api: FakeKubeAPI, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    api.put(standard_recall(), resource_version=8)
    base = ["rollback", "-i", "mf-recall", "-n", NS, "--mode", "Standard",
            "--kubeconfig", str(_kubeconfig(tmp_path, api.url))]

    assert _cli([*base, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out == (f"PATCH {RECALL_PATH}\nContent-Type: application/json-patch+json\n\n"
                   + json.dumps([{"op": "replace", "path": "/metadata/resourceVersion", "value": "8"},
                                 {"op": "remove", "path": "/spec/canary"}], indent=2)
                   + f"\nrollback {NS}/mf-recall predictor: stable 90% / canary 10% ({NEW_BUNDLE}/recall; "
                   "ghcr.io/shopserve/shopserve:0.1.0) -> stable 100% (no canary) (dry run: not applied)\n")
    assert _methods(api) == ["GET"]

    assert _cli(base) == 0
    assert "-> stable 100% (no canary)\n" in capsys.readouterr().out
    assert "canary" not in api.get(NS, "mf-recall")["spec"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["promote", "-i", "nope"], "InferenceService shopserve/nope not found"),
     (["rollback", "-i", "search", "--component", "transformer", "--mode", "Standard"], "predictors only")],
)
def test_cli_errors_exit_1_with_the_message(api: FakeKubeAPI, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str], argv: list[str],
                                            message: str) -> None:
    api.put(knative_search())
    assert _cli([*argv, "-n", NS, "--kubeconfig", str(_kubeconfig(tmp_path, api.url))]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ") and message in captured.err


def test_cli_as_a_process(api: FakeKubeAPI, tmp_path: Path) -> None:
    """``python -m pipeline.cli`` in its own process, the kubeconfig found through ``KUBECONFIG``."""
    api.put(knative_search(), resource_version=2)
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "promote", "-i", "search", "-n", NS, "--component",
         "transformer", "--percent", "40", "--dry-run"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"KUBECONFIG": str(_kubeconfig(tmp_path, api.url)), "PATH": "/usr/bin:/bin",
             "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"PATCH {SEARCH_PATH}\nContent-Type: application/merge-patch+json\n\n")
    assert '"canaryTrafficPercent": 40' in done.stdout
    assert done.stdout.endswith("stable 60% / canary 40% (s3://shopserve-models/bundles/20261120.090000; "
                                "ghcr.io/shopserve/shopserve:0.2.0) (dry run: not applied)\n")
    assert _methods(api) == ["GET"]
