"""Pure parts of pipeline.rollout.kube: splits read from objects, patches built for both KServe modes."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from pipeline.rollout.kube import (
    JSON_PATCH,
    MERGE_PATCH,
    InferenceServiceTraffic,
    KubeError,
    PatchRequest,
    TrafficSplit,
    api_client_from_config,
    detect_mode,
    expected_split,
    find_canary,
    knative_patch,
    knative_split,
    promoted_predictor,
    resource_path,
    standard_patch,
    standard_split,
)
from tests.fake_kube import NEW_BUNDLE, knative_search, merge_patch, standard_ranker, standard_recall
from tests.requirements import require

ROOT = Path(__file__).resolve().parents[4]


def _with_rv(obj: dict[str, Any], rv: str = "7") -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["metadata"]["resourceVersion"] = rv
    return obj


# --- Knative ---

@pytest.mark.parametrize(
    ("component", "action", "rv", "percent", "expected"),
    [
        ("predictor", "set", "7", 30,
         {"metadata": {"resourceVersion": "7"}, "spec": {"predictor": {"canaryTrafficPercent": 30}}}),
        ("transformer", "set", "7", 0,
         {"metadata": {"resourceVersion": "7"}, "spec": {"transformer": {"canaryTrafficPercent": 0}}}),
        ("predictor", "promote", "7", None,
         {"metadata": {"resourceVersion": "7"}, "spec": {"predictor": {"canaryTrafficPercent": None}}}),
        ("transformer", "rollback", "9", None,
         {"metadata": {"resourceVersion": "9"}, "spec": {"transformer": {"canaryTrafficPercent": 0}}}),
        ("predictor", "set", None, 100, {"spec": {"predictor": {"canaryTrafficPercent": 100}}}),
    ],
)
def test_knative_patch(component: str, action: Any, rv: str | None, percent: int | None,
                       expected: dict[str, Any]) -> None:
    assert knative_patch(component, action, rv, percent) == expected


def test_knative_promote_serialises_null_which_removes_the_field() -> None:
    patch = knative_patch("predictor", "promote", "7")
    assert json.dumps(patch["spec"]) == '{"predictor": {"canaryTrafficPercent": null}}'
    promoted = merge_patch(_with_rv(knative_search()), patch)
    assert "canaryTrafficPercent" not in promoted["spec"]["predictor"]
    assert promoted["spec"]["predictor"]["model"]["storageUri"] == f"{NEW_BUNDLE}/ranker"


@pytest.mark.parametrize(
    ("component", "action", "percent", "match"),
    [
        ("predictor", "set", 101, "0..100"),
        ("predictor", "set", -1, "0..100"),
        ("predictor", "set", True, "0..100"),
        ("predictor", "set", None, "needs a percent"),
        ("storage", "set", 10, "takes no canary"),
        ("predictor", "undo", None, "unknown action"),
    ],
)
def test_knative_patch_rejects(component: str, action: Any, percent: Any, match: str) -> None:
    with pytest.raises(KubeError, match=match):
        knative_patch(component, action, "1", percent)


@pytest.mark.parametrize(
    ("obj", "component", "expected"),
    [
        (knative_search(), "predictor",
         TrafficSplit(90, 10, canary_storage_uri=f"{NEW_BUNDLE}/ranker",
                      stable_revision="search-predictor-00001", canary_revision="search-predictor-00002",
                      resource_version="7")),
        (knative_search(), "transformer",
         TrafficSplit(80, 20, canary_storage_uri="s3://shopserve-models/bundles/20261120.090000",
                      canary_image="ghcr.io/shopserve/shopserve:0.2.0",
                      stable_revision="search-transformer-00003",
                      canary_revision="search-transformer-00004", resource_version="7")),
        (knative_search(predictor_percent=None), "predictor",
         TrafficSplit(100, None, stable_revision="search-predictor-00001", resource_version="7")),
        (knative_search(predictor_percent=0), "predictor",
         TrafficSplit(100, 0, canary_storage_uri=f"{NEW_BUNDLE}/ranker",
                      stable_revision="search-predictor-00001", canary_revision="search-predictor-00002",
                      resource_version="7")),
    ],
)
def test_knative_split(obj: dict[str, Any], component: str, expected: TrafficSplit) -> None:
    assert knative_split(_with_rv(obj), component) == expected


def test_knative_split_of_a_missing_component() -> None:
    obj = standard_recall()
    with pytest.raises(KubeError, match="no spec.transformer"):
        knative_split(obj, "transformer")


# --- Standard ---

def test_standard_set_guards_the_version_and_addresses_the_entry() -> None:
    assert standard_patch(_with_rv(standard_recall()), "set", 40) == [
        {"op": "replace", "path": "/metadata/resourceVersion", "value": "7"},
        {"op": "replace", "path": "/spec/canary/0/trafficPercent", "value": 40},
    ]


def test_standard_rollback_removes_the_canary() -> None:
    assert standard_patch(_with_rv(standard_recall()), "rollback") == [
        {"op": "replace", "path": "/metadata/resourceVersion", "value": "7"},
        {"op": "remove", "path": "/spec/canary"},
    ]


def test_standard_promote_moves_the_candidate_into_the_predictor() -> None:
    obj = _with_rv(standard_recall())
    ops = standard_patch(obj, "promote")
    assert [(op["op"], op["path"]) for op in ops] == [
        ("replace", "/metadata/resourceVersion"), ("replace", "/spec/predictor"), ("remove", "/spec/canary")]
    promoted = jsonpatch.apply_patch(obj, ops)
    predictor = promoted["spec"]["predictor"]
    assert "canary" not in promoted["spec"]
    assert predictor["storageUris"][0]["uri"] == f"{NEW_BUNDLE}/recall"
    assert "name" not in predictor
    # The chart's canary entry has no scaling: the stable predictor's survives the promotion.
    assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleMetric"]) == (2, 6, "cpu")


@pytest.mark.parametrize(
    ("stable", "canary", "expected"),
    [
        ({"minReplicas": 2, "model": {"storageUri": "old"}},
         {"name": "canary", "model": {"name": "kserve-container", "storageUri": "new"}},
         {"minReplicas": 2, "model": {"storageUri": "new"}}),
        ({"minReplicas": 2, "autoScaling": {"metrics": []}},
         {"name": "c", "minReplicas": 1, "containers": [{"name": "kserve-container"}]},
         {"minReplicas": 1, "autoScaling": {"metrics": []}, "containers": [{"name": "kserve-container"}]}),
        ({"serviceAccountName": "old", "maxReplicas": 3}, {"name": "c"}, {"maxReplicas": 3}),
    ],
)
def test_promoted_predictor(stable: dict[str, Any], canary: dict[str, Any], expected: dict[str, Any]) -> None:
    before = copy.deepcopy(canary)
    assert promoted_predictor(stable, canary) == expected
    assert canary == before  # not mutated


def _two_canaries() -> dict[str, Any]:
    obj = _with_rv(standard_recall(percent=10, canary_name="a"))
    obj["spec"]["canary"].append(copy.deepcopy(obj["spec"]["canary"][0]))
    obj["spec"]["canary"][1]["predictor"]["name"] = "b"
    obj["spec"]["canary"][1]["trafficPercent"] = 5
    return obj


@pytest.mark.parametrize(
    ("action", "percent", "last_ops"),
    [
        ("set", 20, [{"op": "replace", "path": "/spec/canary/1/trafficPercent", "value": 20}]),
        ("rollback", None, [{"op": "remove", "path": "/spec/canary/1"}]),
    ],
)
def test_standard_patch_picks_the_named_entry(action: Any, percent: int | None,
                                              last_ops: list[dict[str, Any]]) -> None:
    assert standard_patch(_two_canaries(), action, percent, canary_name="b")[1:] == last_ops


def test_standard_split_with_two_entries() -> None:
    split = standard_split(_two_canaries(), "b")
    assert (split.stable_percent, split.canary_percent, split.canary_name) == (85, 5, "b")


@pytest.mark.parametrize(
    ("obj", "name", "result"),
    [
        (standard_recall(), None, 0),
        (standard_recall(), "canary", 0),
        (standard_recall(percent=None), None, None),
        (_two_canaries(), "a", 0),
    ],
)
def test_find_canary(obj: dict[str, Any], name: str | None, result: int | None) -> None:
    assert find_canary(obj, name) == result


@pytest.mark.parametrize(
    ("obj", "name", "match"),
    [(_two_canaries(), None, "2 entries .*--canary-name"),
     (standard_recall(), "nope", "no entry named 'nope'")],
)
def test_find_canary_rejects(obj: dict[str, Any], name: str | None, match: str) -> None:
    with pytest.raises(KubeError, match=match):
        find_canary(obj, name)


@pytest.mark.parametrize("action", ["set", "promote", "rollback"])
def test_standard_patch_without_a_canary(action: Any) -> None:
    with pytest.raises(KubeError, match="no canary in flight"):
        standard_patch(standard_recall(percent=None), action, 10)


def test_standard_split() -> None:
    assert standard_split(_with_rv(standard_ranker())) == TrafficSplit(
        90, 10, canary_storage_uri=f"{NEW_BUNDLE}/ranker", canary_name="candidate", resource_version="7")
    assert standard_split(standard_recall(percent=None)) == TrafficSplit(100, None)


# --- mode, expectations, rendering ---

@pytest.mark.parametrize(
    ("annotation", "status_mode", "expected"),
    [("Knative", None, "Knative"), ("Serverless", None, "Knative"), ("Standard", None, "Standard"),
     ("RawDeployment", None, "Standard"), (None, "RawDeployment", "Standard"), (None, None, None),
     ("ModelMesh", None, None)],
)
def test_detect_mode(annotation: str | None, status_mode: str | None, expected: str | None) -> None:
    obj: dict[str, Any] = {"metadata": {"annotations": {"serving.kserve.io/deploymentMode": annotation}
                                        if annotation else {}},
                           "status": {"deploymentMode": status_mode} if status_mode else {}}
    assert detect_mode(obj) == expected


@pytest.mark.parametrize(
    ("action", "percent", "mode", "expected"),
    [("set", 30, "Knative", (70, 30)), ("set", 30, "Standard", (70, 30)),
     ("promote", None, "Knative", (100, None)), ("promote", None, "Standard", (100, None)),
     ("rollback", None, "Knative", (100, 0)), ("rollback", None, "Standard", (100, None))],
)
def test_expected_split(action: Any, percent: int | None, mode: Any,
                        expected: tuple[int, int | None]) -> None:
    after = expected_split(TrafficSplit(90, 10, canary_storage_uri="s3://x"), action, percent, mode)
    assert (after.stable_percent, after.canary_percent) == expected


@pytest.mark.parametrize(
    ("split", "text"),
    [(TrafficSplit(90, 10, canary_storage_uri="s3://x"), "stable 90% / canary 10% (s3://x)"),
     (TrafficSplit(80, 20, canary_storage_uri="s3://x", canary_image="img:2"),
      "stable 80% / canary 20% (s3://x; img:2)"),
     (TrafficSplit(100, 0, canary_revision="search-predictor-00002"),
      "stable 100% / canary 0% (search-predictor-00002)"),
     (TrafficSplit(100, None), "stable 100% (no canary)")],
)
def test_describe(split: TrafficSplit, text: str) -> None:
    assert split.describe() == text


def test_render_is_method_path_content_type_and_json() -> None:
    request = PatchRequest(resource_path("ns", "search"), MERGE_PATCH, {"spec": {"predictor": {"x": None}}})
    head, body = request.render().split("\n\n", 1)
    assert head == ("PATCH /apis/serving.kserve.io/v1beta1/namespaces/ns/inferenceservices/search\n"
                    "Content-Type: application/merge-patch+json")
    assert json.loads(body) == request.body


@pytest.mark.parametrize(
    ("obj", "component", "mode", "content_type"),
    [(knative_search(), "predictor", None, MERGE_PATCH),
     (knative_search(), "transformer", "Knative", MERGE_PATCH),
     (standard_recall(), "predictor", None, JSON_PATCH),
     (standard_recall(), "predictor", "Standard", JSON_PATCH)],
)
def test_build_picks_the_patch_type_per_mode(obj: dict[str, Any], component: str, mode: Any,
                                             content_type: str) -> None:
    traffic = InferenceServiceTraffic(obj["metadata"]["name"], "shopserve", component, mode=mode,
                                      api_client=object())  # type: ignore[arg-type]
    assert traffic.build(_with_rv(obj), "set", 50).content_type == content_type


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"component": "transformer", "mode": "Standard"}, "predictors only"),
     ({"component": "storage"}, "takes no canary"),
     ({"mode": "Serverless"}, "unknown mode")],
)
def test_traffic_rejects_combinations(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(KubeError, match=match):
        InferenceServiceTraffic("search", "shopserve", api_client=object(), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("obj", "component", "mode", "match"),
    [(standard_recall(), "predictor", "Knative", "runs in Standard mode, not Knative"),
     (knative_search(mode=None), "predictor", None, "declares no deployment mode"),
     (standard_ranker(), "transformer", None, "predictors only"),
     (knative_search(predictor_percent=None), "predictor", None, "no canary in flight")],
)
def test_build_refuses(obj: dict[str, Any], component: str, mode: Any, match: str) -> None:
    traffic = InferenceServiceTraffic(obj["metadata"]["name"], "shopserve", component, mode=mode,
                                      api_client=object())  # type: ignore[arg-type]
    with pytest.raises(KubeError, match=match):
        traffic.build(obj, "promote")


# --- against the chart's own output and KServe's schema ---

def _crd_schema() -> dict[str, Any] | None:
    folder = Path(os.environ.get("KSERVE_CRDS_DIR", ROOT.parent / "shared" / "kserve-crds"))
    path = folder / "InferenceService-v1beta1.json"
    return json.loads(path.read_text()) if path.is_file() else None


def test_promoting_the_rendered_standard_canary_gives_a_valid_inferenceservice() -> None:
    """The staging Standard-mode ``search`` as the chart renders it, promoted, still fits the CRD."""
    rendered = ROOT / "manifests" / "staging-standard" / "inferenceservice-search.yaml"
    obj = yaml.safe_load(rendered.read_text())
    if not obj.get("spec", {}).get("canary"):
        pytest.skip("the staging Standard-mode render has no canary")
    obj["metadata"]["resourceVersion"] = "1"
    entry = obj["spec"]["canary"][0]
    promoted = jsonpatch.apply_patch(obj, standard_patch(obj, "promote"))
    predictor = promoted["spec"]["predictor"]
    assert "canary" not in promoted["spec"]
    assert predictor["model"]["storageUri"] == entry["predictor"]["model"]["storageUri"]
    assert "name" not in predictor and "name" not in predictor["model"]
    for key in ("minReplicas", "maxReplicas"):
        assert predictor[key] == obj["spec"]["predictor"][key]
    schema = _crd_schema()
    require(schema is not None, "the KServe CRD schemas in ../shared/kserve-crds (or KSERVE_CRDS_DIR)")
    import jsonschema

    promoted_spec = {k: v for k, v in promoted.items() if k != "metadata"}
    jsonschema.Draft7Validator(schema).validate(promoted_spec)


# --- configuration ---

def test_config_from_a_kubeconfig_and_context(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "a",
        "clusters": [{"name": "a", "cluster": {"server": "http://127.0.0.1:1"}},
                     {"name": "b", "cluster": {"server": "http://127.0.0.1:2"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "a", "context": {"cluster": "a", "user": "u"}},
                     {"name": "b", "context": {"cluster": "b", "user": "u"}}]}))
    assert api_client_from_config(str(path)).configuration.host == "http://127.0.0.1:1"
    assert api_client_from_config(str(path), "b").configuration.host == "http://127.0.0.1:2"
    with pytest.raises(KubeError, match="cannot load kubeconfig .* \\(context c\\)"):
        api_client_from_config(str(path), "c")


def test_config_missing_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeError, match="no Kubernetes configuration: .*pass --kubeconfig"):
        api_client_from_config()
    with pytest.raises(KubeError, match="cannot load kubeconfig"):
        api_client_from_config(str(tmp_path / "absent"))
