"""What each environment and mode must contain: hardening, GPUs, canaries, scaling, availability."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.rollout.manifests import NAMESPACE, RENDERS, Render
from shopserve import metric_names
from shopserve.drift import SIGNALS
from shopserve.protocol import (
    QUERY_ENCODER_MODEL,
    RANKER_MODEL,
    RECALL_MODEL,
    SEARCH_MODEL,
    SEQUENCE_MODEL,
)
from tests.charts.conftest import Obj, by_kind, one

GPU = "nvidia.com/gpu"
COMPONENTS = (("search", "transformer"), ("search", "predictor"), ("mf-recall", "predictor"),
              ("seq-recommender", "predictor"), ("query-encoder", "predictor"))
#: The InferenceServices whose predictor is Triton, and the bundle component each serves.
TRITON_PREDICTORS = {SEARCH_MODEL: "ranker", SEQUENCE_MODEL: "sequence", QUERY_ENCODER_MODEL: "semantic"}


def components(isvc: Obj) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, spec) of every component of an InferenceService, Standard-mode canaries included."""
    for key in ("predictor", "transformer"):
        if key in isvc["spec"]:
            yield key, isvc["spec"][key]
    for canary in isvc["spec"].get("canary", []):
        yield f"canary {canary['predictor']['name']}", canary["predictor"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers of a component: a runtime-based `model` or custom `containers`."""
    return [spec["model"]] if "model" in spec else spec["containers"]


def renders(env: str | None = None) -> list[Render]:
    return [r for r in RENDERS if env is None or r.env == env]


def camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p.capitalize() for p in rest)


# --------------------------------------------------------------------------------------------------
# Names, the one contract the chart cannot import.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", RENDERS, ids=lambda r: r.folder)
def test_model_names_are_the_protocol_constants(target: Render, rendered: dict[Render, list[Obj]]) -> None:
    objects = rendered[target]
    search = one(objects, "InferenceService", SEARCH_MODEL)
    one(objects, "InferenceService", RECALL_MODEL)
    args = search["spec"]["transformer"]["containers"][0]["args"]
    assert args[args.index("--model_name") + 1] == SEARCH_MODEL
    settings = one(objects, "ConfigMap", "shopserve-search")["data"]
    assert settings["SEARCH_RECALL_MODEL"] == RECALL_MODEL
    assert settings["SEARCH_RANKER_MODEL"] == RANKER_MODEL
    assert one(objects, "ConfigMap", "shopserve-recall")["data"]["RECALL_MODEL_NAME"] == RECALL_MODEL
    # The sequence model: its InferenceService and its Triton model share the protocol's name.
    one(objects, "InferenceService", SEQUENCE_MODEL)
    assert settings["SEARCH_SEQUENCE_MODEL"] == SEQUENCE_MODEL
    assert settings["SEARCH_SEQUENCE_ENABLED"] == "true"
    # The query encoder likewise.
    one(objects, "InferenceService", QUERY_ENCODER_MODEL)
    assert settings["SEARCH_SEMANTIC_MODEL"] == QUERY_ENCODER_MODEL
    assert settings["SEARCH_SEMANTIC_ENABLED"] == "true"
    # In-cluster upstreams: the predictors' services, gRPC on port 80 in both modes.
    assert settings["SEARCH_RECALL_HOST"] == f"{RECALL_MODEL}-predictor.shopserve.svc.cluster.local:80"
    assert settings["SEARCH_SEQUENCE_HOST"] == f"{SEQUENCE_MODEL}-predictor.shopserve.svc.cluster.local:80"
    assert settings["SEARCH_SEMANTIC_HOST"] == (
        f"{QUERY_ENCODER_MODEL}-predictor.shopserve.svc.cluster.local:80")
    ranker_host = args[args.index("--predictor_host") + 1]
    assert ranker_host == f"{SEARCH_MODEL}-predictor.shopserve.svc.cluster.local:80"


@pytest.mark.parametrize("target", RENDERS, ids=lambda r: r.folder)
def test_entrypoints_and_triton_runtime(target: Render, rendered: dict[Render, list[Obj]]) -> None:
    objects = rendered[target]
    search = one(objects, "InferenceService", SEARCH_MODEL)
    recall = one(objects, "InferenceService", RECALL_MODEL)
    assert search["spec"]["transformer"]["containers"][0]["command"] == ["python", "-m", "transformers_pre"]
    assert recall["spec"]["predictor"]["containers"][0]["command"] == ["python", "-m", "predictors.recall"]
    model = search["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton"
    runtime = one(objects, "ServingRuntime", model["runtime"])
    assert set(runtime["spec"]["protocolVersions"]) == {"v2", "grpc-v2"}
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == "8002"
    assert "--metrics-port=8002" in runtime["spec"]["containers"][0]["args"]
    # The sequence model and the query encoder run on the same Triton runtime, each as its own
    # predictor.
    for isvc_name in (SEQUENCE_MODEL, QUERY_ENCODER_MODEL):
        own = one(objects, "InferenceService", isvc_name)["spec"]["predictor"]["model"]
        assert own["modelFormat"]["name"] == "triton" and own["protocolVersion"] == "grpc-v2"
        assert own["runtime"] == model["runtime"]
    # The predictor's first port is the gRPC one the transformer calls.
    assert runtime["spec"]["containers"][0]["ports"][0]["containerPort"] == 8001
    assert recall["spec"]["predictor"]["containers"][0]["ports"][0]["containerPort"] == 8091


# --------------------------------------------------------------------------------------------------
# Hardening.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", RENDERS, ids=lambda r: r.folder)
def test_every_pod_is_hardened(target: Render, rendered: dict[Render, list[Obj]]) -> None:
    objects = rendered[target]
    checked = 0
    for isvc in by_kind(objects, "InferenceService"):
        for name, spec in components(isvc):
            where = f"{isvc['metadata']['name']} {name}"
            pod = spec["securityContext"]
            assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, where
            assert pod["seccompProfile"]["type"] == "RuntimeDefault", where
            assert spec["automountServiceAccountToken"] is False, where
            assert spec["serviceAccountName"] == "shopserve", where
            assert {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}} in spec["volumes"], where
            for container in containers(spec):
                sc = container["securityContext"]
                assert sc["runAsNonRoot"] is True, where
                assert sc["readOnlyRootFilesystem"] is True, where
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc["capabilities"]["drop"] == ["ALL"], where
                assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], where
                for kind in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(container["resources"][kind]), where
                checked += 1
    for runtime in by_kind(objects, "ServingRuntime"):
        for container in runtime["spec"]["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
            assert sc["runAsNonRoot"] and sc["runAsUser"] > 0
            assert {"requests", "limits"} <= set(container["resources"])
    assert checked >= 4
    sa = one(objects, "ServiceAccount", "shopserve")
    assert sa["automountServiceAccountToken"] is False


@pytest.mark.parametrize("target", RENDERS, ids=lambda r: r.folder)
def test_settings_changes_roll_the_pods(target: Render, rendered: dict[Render, list[Obj]],
                                        render: Any) -> None:
    """Pod templates carry a checksum of the settings ConfigMaps, so a settings change rolls them."""
    def checksums(objects: list[Obj]) -> set[str]:
        return {spec["annotations"]["checksum/config"]
                for isvc in by_kind(objects, "InferenceService")
                for name, spec in components(isvc) if "containers" in spec}
    before = checksums(rendered[target])
    after = checksums(render(target.env, target.mode, "recall.topK=321"))
    assert len(before) == 1 and len(after) == 1 and before != after


# --------------------------------------------------------------------------------------------------
# GPUs: the Triton predictors (ranker, sequence model, query encoder) in staging and prod, nothing
# else and not in dev.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", RENDERS, ids=lambda r: r.folder)
def test_gpu_only_for_triton_predictors_in_staging_and_prod(target: Render,
                                                           rendered: dict[Render, list[Obj]]) -> None:
    triton_seen = set()
    for isvc in by_kind(rendered[target], "InferenceService"):
        isvc_name = isvc["metadata"]["name"]
        for name, spec in components(isvc):
            is_triton = isvc_name in TRITON_PREDICTORS and name != "transformer"
            for container in containers(spec):
                gpus = {k: container["resources"][k].get(GPU) for k in ("requests", "limits")}
                if is_triton and target.env in ("staging", "prod"):
                    assert gpus == {"requests": 1, "limits": 1}, name
                    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
                    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
                else:
                    assert gpus == {"requests": None, "limits": None}, f"{isvc['metadata']['name']} {name}"
                    assert "tolerations" not in spec
                if is_triton:
                    # One model repository (the bundle's ranker/, sequence/ or semantic/), two
                    # configurations: Triton on CPU (dev) picks <model>/configs/cpu.pbtxt
                    # (KIND_CPU), a GPU pod the default config.pbtxt (KIND_GPU). KServe appends
                    # these args to the runtime's.
                    assert container["storageUri"].endswith(f"/{TRITON_PREDICTORS[isvc_name]}")
                    expected = ["--model-config-name=cpu"] if target.env == "dev" else None
                    assert container.get("args") == expected, f"{isvc_name} {name}"
                    triton_seen.add(isvc_name)
    assert triton_seen == set(TRITON_PREDICTORS)


# --------------------------------------------------------------------------------------------------
# Canary: per component, per mode.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_sequence_canary_takes_ten_percent(env: str, rendered: dict[Render, list[Obj]]) -> None:
    knative = one(rendered[Render(env, "Knative")], "InferenceService", SEQUENCE_MODEL)["spec"]
    assert knative["predictor"]["canaryTrafficPercent"] == 10
    assert knative["predictor"]["model"]["storageUri"].endswith("/20261122.090000/sequence")
    assert "canary" not in knative

    standard = one(rendered[Render(env, "Standard")], "InferenceService", SEQUENCE_MODEL)["spec"]
    assert "canaryTrafficPercent" not in standard["predictor"]
    assert standard["predictor"]["model"]["storageUri"].endswith("/20261120.090000/sequence")
    [canary] = standard["canary"]
    assert canary["trafficPercent"] == 10 and canary["predictor"]["name"] == "candidate"
    assert canary["predictor"]["model"]["storageUri"].endswith("/20261122.090000/sequence")
    assert canary["predictor"]["model"]["name"] == "kserve-container"
    assert "name" not in standard["predictor"]["model"]  # KServe's webhook rejects it there
    autoscaling_fields = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "autoScaling"}
    assert not autoscaling_fields & set(canary["predictor"])


@pytest.mark.parametrize(("env", "mode"), [("prod", "Knative"), ("prod", "Standard")])
def test_query_encoder_on_a_gpu_in_prod(env: str, mode: str, rendered: dict[Render, list[Obj]]) -> None:
    """prod: the query encoder's Triton on a GPU node with one GPU, the default (KIND_GPU)
    config.pbtxt of the bundle's semantic/ model repository, on the ranker's runtime."""
    objects = rendered[Render(env, mode)]
    predictor = one(objects, "InferenceService", QUERY_ENCODER_MODEL)["spec"]["predictor"]
    model = predictor["model"]
    assert model["resources"]["requests"][GPU] == model["resources"]["limits"][GPU] == 1
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert predictor["tolerations"] == [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]
    assert "args" not in model  # no --model-config-name: Triton loads config.pbtxt (KIND_GPU)
    assert model["storageUri"] == "s3://shopserve-models/bundles/20261120.090000/semantic"
    ranker = one(objects, "InferenceService", SEARCH_MODEL)["spec"]["predictor"]["model"]
    assert model["runtime"] == ranker["runtime"]
    assert predictor["minReplicas"] == 2 and predictor["labels"]["app.kubernetes.io/component"] == "semantic"


@pytest.mark.parametrize("target", [r for r in RENDERS if r.env != "dev"], ids=lambda r: r.folder)
def test_query_encoder_stays_on_the_stable_bundle(target: Render,
                                                  rendered: dict[Render, list[Obj]]) -> None:
    """staging and prod carry ranker and sequence canaries, none for the query encoder: the
    transformer's index (search.storageUri) holds the stable bundle's item embeddings."""
    objects = rendered[target]
    spec = one(objects, "InferenceService", QUERY_ENCODER_MODEL)["spec"]
    assert "canary" not in spec and "canaryTrafficPercent" not in spec["predictor"]
    transformer = one(objects, "InferenceService", SEARCH_MODEL)["spec"]["transformer"]
    search_uri = transformer["storageUris"][0]["uri"]
    assert spec["predictor"]["model"]["storageUri"] == f"{search_uri}/semantic"


@pytest.mark.parametrize("mode", ["Knative", "Standard"])
def test_query_encoder_canary_alone(mode: str, render: Any,
                                    kserve_validators: dict[tuple[str, str], Any]) -> None:
    objects = render("dev", mode, "semantic.canary.enabled=true", "semantic.canary.trafficPercent=25",
                     "semantic.canary.storageUri=s3://b/new/semantic")
    encoder = one(objects, "InferenceService", QUERY_ENCODER_MODEL)
    for other in (SEARCH_MODEL, RECALL_MODEL, SEQUENCE_MODEL):
        spec = one(objects, "InferenceService", other)["spec"]
        assert "canary" not in spec and "canaryTrafficPercent" not in spec["predictor"]
    if mode == "Knative":
        assert encoder["spec"]["predictor"]["canaryTrafficPercent"] == 25
        assert encoder["spec"]["predictor"]["model"]["storageUri"] == "s3://b/new/semantic"
    else:
        assert "canaryTrafficPercent" not in encoder["spec"]["predictor"]
        assert encoder["spec"]["predictor"]["model"]["storageUri"].endswith("/semantic")
        assert "name" not in encoder["spec"]["predictor"]["model"]
        [canary] = encoder["spec"]["canary"]
        assert canary["trafficPercent"] == 25 and canary["predictor"]["name"] == "canary"
        assert canary["predictor"]["model"]["storageUri"] == "s3://b/new/semantic"
        assert canary["predictor"]["model"]["name"] == "kserve-container"
        # The canary runs the CPU configuration too, and takes no autoscaling fields.
        assert canary["predictor"]["model"]["args"] == ["--model-config-name=cpu"]
        assert not {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"} & set(canary["predictor"])
    validator = kserve_validators[("serving.kserve.io/v1beta1", "InferenceService")]
    assert not list(validator.iter_errors(encoder))


@pytest.mark.parametrize("mode", ["Knative", "Standard"])
def test_sequence_canary_alone(mode: str, render: Any, kserve_validators: dict[tuple[str, str], Any]) -> None:
    objects = render("dev", mode, "sequence.canary.enabled=true", "sequence.canary.trafficPercent=25",
                     "sequence.canary.storageUri=s3://b/new/sequence")
    sequence = one(objects, "InferenceService", SEQUENCE_MODEL)
    for other in (SEARCH_MODEL, RECALL_MODEL, QUERY_ENCODER_MODEL):
        spec = one(objects, "InferenceService", other)["spec"]
        assert "canary" not in spec and "canaryTrafficPercent" not in spec["predictor"]
    if mode == "Knative":
        assert sequence["spec"]["predictor"]["canaryTrafficPercent"] == 25
        assert sequence["spec"]["predictor"]["model"]["storageUri"] == "s3://b/new/sequence"
    else:
        [canary] = sequence["spec"]["canary"]
        assert canary["trafficPercent"] == 25
        assert canary["predictor"]["model"]["storageUri"] == "s3://b/new/sequence"
        # The canary runs the CPU configuration too.
        assert canary["predictor"]["model"]["args"] == ["--model-config-name=cpu"]
    validator = kserve_validators[("serving.kserve.io/v1beta1", "InferenceService")]
    assert not list(validator.iter_errors(sequence))


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_ranker_canary_takes_ten_percent_and_recall_stays_put(env: str,
                                                              rendered: dict[Render, list[Obj]]) -> None:
    knative = rendered[Render(env, "Knative")]
    search = one(knative, "InferenceService", SEARCH_MODEL)["spec"]
    assert search["predictor"]["canaryTrafficPercent"] == 10
    assert search["predictor"]["model"]["storageUri"].endswith("/20261122.090000/ranker")
    assert "canaryTrafficPercent" not in search["transformer"]
    recall = one(knative, "InferenceService", RECALL_MODEL)["spec"]
    assert "canaryTrafficPercent" not in recall["predictor"] and "canary" not in recall

    standard = rendered[Render(env, "Standard")]
    search = one(standard, "InferenceService", SEARCH_MODEL)["spec"]
    assert "canaryTrafficPercent" not in search["predictor"]
    assert search["predictor"]["model"]["storageUri"].endswith("/20261120.090000/ranker")
    [canary] = search["canary"]
    assert canary["trafficPercent"] == 10
    assert canary["predictor"]["name"] == "candidate"
    assert canary["predictor"]["model"]["storageUri"].endswith("/20261122.090000/ranker")
    # KServe rejects autoscaling fields on a canary predictor.
    autoscaling_fields = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "autoScaling"}
    assert not autoscaling_fields & set(canary["predictor"])
    assert "canary" not in one(standard, "InferenceService", RECALL_MODEL)["spec"]


def test_dev_has_no_canary(rendered: dict[Render, list[Obj]]) -> None:
    for target in renders("dev"):
        for isvc in by_kind(rendered[target], "InferenceService"):
            assert "canary" not in isvc["spec"]
            assert all("canaryTrafficPercent" not in spec for _, spec in components(isvc))


@pytest.mark.parametrize("mode", ["Knative", "Standard"])
def test_recall_canary_alone(mode: str, render: Any, kserve_validators: dict[tuple[str, str], Any]) -> None:
    objects = render("dev", mode, "recall.canary.enabled=true", "recall.canary.trafficPercent=25",
                     "recall.canary.storageUri=s3://b/new/recall")
    recall = one(objects, "InferenceService", RECALL_MODEL)
    search = one(objects, "InferenceService", SEARCH_MODEL)
    assert "canary" not in search["spec"] and "canaryTrafficPercent" not in search["spec"]["predictor"]
    if mode == "Knative":
        assert recall["spec"]["predictor"]["canaryTrafficPercent"] == 25
        assert recall["spec"]["predictor"]["storageUris"][0]["uri"] == "s3://b/new/recall"
    else:
        [canary] = recall["spec"]["canary"]
        assert canary["trafficPercent"] == 25
        assert canary["predictor"]["storageUris"][0]["uri"] == "s3://b/new/recall"
    validator = kserve_validators[("serving.kserve.io/v1beta1", "InferenceService")]
    assert not list(validator.iter_errors(recall))


def test_transformer_canary_in_knative_mode(render: Any) -> None:
    objects = render("dev", "Knative", "search.canary.enabled=true", "search.canary.imageTag=0.2.0",
                     "search.canary.trafficPercent=5")
    transformer = one(objects, "InferenceService", SEARCH_MODEL)["spec"]["transformer"]
    assert transformer["canaryTrafficPercent"] == 5
    assert transformer["containers"][0]["image"].endswith(":0.2.0")
    assert "canaryTrafficPercent" not in one(objects, "InferenceService", SEARCH_MODEL)["spec"]["predictor"]


# --------------------------------------------------------------------------------------------------
# Scaling.
# --------------------------------------------------------------------------------------------------


def test_dev_scales_to_zero_in_knative_mode(rendered: dict[Render, list[Obj]]) -> None:
    for isvc in by_kind(rendered[Render("dev", "Knative")], "InferenceService"):
        for _, spec in components(isvc):
            assert spec["minReplicas"] == 0
            assert spec["scaleMetric"] in ("concurrency", "rps") and spec["scaleTarget"] >= 1
            assert spec["annotations"]["autoscaling.knative.dev/class"] == "kpa.autoscaling.knative.dev"
    # An HPA cannot scale to zero: Standard mode keeps one pod.
    for isvc in by_kind(rendered[Render("dev", "Standard")], "InferenceService"):
        assert all(spec["minReplicas"] == 1 for _, spec in components(isvc))


@pytest.mark.parametrize("target", RENDERS, ids=lambda r: r.folder)
def test_autoscaling_bounds_and_mode_annotations(target: Render, rendered: dict[Render, list[Obj]]) -> None:
    floor = {"dev": 0, "staging": 1, "prod": 2}[target.env]
    if target.mode == "Standard":
        floor = max(floor, 1)
    for isvc in by_kind(rendered[target], "InferenceService"):
        annotations = isvc["metadata"]["annotations"]
        assert annotations["serving.kserve.io/deploymentMode"] == target.mode
        for name, spec in components(isvc):
            if name.startswith("canary"):
                continue
            assert spec["minReplicas"] == floor, name
            assert spec["minReplicas"] <= spec["maxReplicas"]
            if target.mode == "Standard":
                assert "annotations" in spec and "autoscaling.knative.dev/class" not in spec["annotations"]


def test_standard_autoscaler_classes(rendered: dict[Render, list[Obj]]) -> None:
    """dev: KServe's HPA on CPU; staging: KEDA on a PromQL query; prod: the chart's own HPAs."""
    dev = one(rendered[Render("dev", "Standard")], "InferenceService", SEARCH_MODEL)
    assert dev["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
    assert dev["spec"]["transformer"]["scaleMetric"] == "cpu"
    assert not by_kind(rendered[Render("dev", "Standard")], "HorizontalPodAutoscaler")

    staging = one(rendered[Render("staging", "Standard")], "InferenceService", SEARCH_MODEL)
    assert staging["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
    [metric] = staging["spec"]["transformer"]["autoScaling"]["metrics"]
    assert metric["type"] == "External"
    assert 'namespace="shopserve"' in metric["external"]["metric"]["query"]
    assert "scaleMetric" not in staging["spec"]["transformer"]  # KServe rejects it with KEDA

    prod = rendered[Render("prod", "Standard")]
    assert one(prod, "InferenceService", SEARCH_MODEL)["metadata"]["annotations"][
        "serving.kserve.io/autoscalerClass"] == "external"
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in by_kind(prod, "HorizontalPodAutoscaler")}
    assert set(hpas) == {"search-transformer", "search-predictor", "mf-recall-predictor",
                         f"{SEQUENCE_MODEL}-predictor", f"{QUERY_ENCODER_MODEL}-predictor"}
    transformer_metric = hpas["search-transformer"]["spec"]["metrics"][0]["pods"]["metric"]
    assert transformer_metric["name"] == "shopserve_search_rows"
    assert hpas["search-predictor"]["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    sequence_target = hpas[f"{SEQUENCE_MODEL}-predictor"]["spec"]["metrics"][0]["resource"]["target"]
    assert sequence_target["averageUtilization"] == 60
    encoder_target = hpas[f"{QUERY_ENCODER_MODEL}-predictor"]["spec"]["metrics"][0]["resource"]["target"]
    assert encoder_target["averageUtilization"] == 60
    assert all(h["spec"]["minReplicas"] == 2 for h in hpas.values())
    assert not by_kind(rendered[Render("prod", "Knative")], "HorizontalPodAutoscaler")


def test_fixed_replicas_when_autoscaling_is_off(render: Any) -> None:
    objects = render("prod", "Standard", "recall.autoscaling.enabled=false", "recall.replicas=3")
    spec = one(objects, "InferenceService", RECALL_MODEL)["spec"]["predictor"]
    assert spec["minReplicas"] == spec["maxReplicas"] == 3
    assert "scaleMetric" not in spec
    assert "mf-recall-predictor" not in {h["spec"]["scaleTargetRef"]["name"]
                                         for h in by_kind(objects, "HorizontalPodAutoscaler")}


# --------------------------------------------------------------------------------------------------
# Availability, network and observability.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", RENDERS, ids=lambda r: r.folder)
def test_network_policy_and_pdbs(target: Render, rendered: dict[Render, list[Obj]]) -> None:
    objects = rendered[target]
    policy = one(objects, "NetworkPolicy", "shopserve-predictors")
    assert policy["spec"]["podSelector"]["matchExpressions"][0]["values"] == [
        "ranker", "recall", "sequence", "semantic"]
    # Every predictor pod carries a component label the policy selects.
    for isvc_name in (SEARCH_MODEL, RECALL_MODEL, SEQUENCE_MODEL, QUERY_ENCODER_MODEL):
        predictor = one(objects, "InferenceService", isvc_name)["spec"]["predictor"]
        assert predictor["labels"]["app.kubernetes.io/component"] in (
            policy["spec"]["podSelector"]["matchExpressions"][0]["values"])
    assert policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"][
        "app.kubernetes.io/component"] == "search"
    pdbs = by_kind(objects, "PodDisruptionBudget")
    if target.env == "prod":
        selectors = {tuple(sorted(p["spec"]["selector"]["matchLabels"].items())) for p in pdbs}
        assert selectors == {
            (("component", c), ("serving.kserve.io/inferenceservice", i)) for i, c in COMPONENTS}
    else:
        assert not pdbs


@pytest.mark.parametrize("target", RENDERS, ids=lambda r: r.folder)
def test_alerts_and_dashboard(target: Render, rendered: dict[Render, list[Obj]]) -> None:
    objects = rendered[target]
    dashboard = one(objects, "ConfigMap", "shopserve-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert '"uid": "shopserve"' in dashboard["data"]["shopserve.json"]
    rules = by_kind(objects, "PrometheusRule")
    if target.env == "dev":
        assert not rules and not by_kind(objects, "PodMonitor")
        return
    alerts = {r["alert"]: r for g in rules[0]["spec"]["groups"] for r in g["rules"]}
    drift_alerts = {f"ShopserveDrift{camel(signal)[0].upper()}{camel(signal)[1:]}" for signal in SIGNALS}
    assert set(alerts) == {"ShopserveSearchErrorRatioHigh", "ShopserveSearchLatencyP99High",
                           "ShopserveSearchDegradedRatioHigh", "ShopserveRankerGpuSaturated",
                           "ShopserveSequenceGpuSaturated", "ShopserveSemanticGpuSaturated",
                           *drift_alerts}
    assert f'pod=~"{SEQUENCE_MODEL}-.*predictor.*"' in alerts["ShopserveSequenceGpuSaturated"]["expr"]
    assert alerts["ShopserveSequenceGpuSaturated"]["labels"]["component"] == "sequence"
    assert f'pod=~"{QUERY_ENCODER_MODEL}-.*predictor.*"' in alerts["ShopserveSemanticGpuSaturated"]["expr"]
    assert alerts["ShopserveSemanticGpuSaturated"]["labels"]["component"] == "semantic"
    # One drift alert per signal of shopserve.drift, on the transformer's PSI gauge.
    for signal in SIGNALS:
        rule = alerts[f"ShopserveDrift{camel(signal)[0].upper()}{camel(signal)[1:]}"]
        assert f'{metric_names.DRIFT_PSI}{{namespace="{NAMESPACE}", signal="{signal}"}}' in rule["expr"]
        assert rule["labels"]["signal"] == signal
    # The transformer's own status counter works in both modes.
    assert 'shopserve_requests_total{namespace=' in alerts["ShopserveSearchErrorRatioHigh"]["expr"]
    assert all(r["labels"]["environment"] == target.env for r in alerts.values())
    monitors = {m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
                for m in by_kind(objects, "PodMonitor")}
    assert monitors == {"search", "ranker", "recall", "sequence", "semantic"}


# --------------------------------------------------------------------------------------------------
# sequence.enabled: false, a bundle without a sequence component.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("env", "mode"), [("prod", "Knative"), ("prod", "Standard"), ("dev", "Knative")])
def test_sequence_disabled_renders_none_of_its_objects(env: str, mode: str, render: Any) -> None:
    objects = render(env, mode, "sequence.enabled=false")
    isvcs = {i["metadata"]["name"] for i in by_kind(objects, "InferenceService")}
    assert isvcs == {SEARCH_MODEL, RECALL_MODEL, QUERY_ENCODER_MODEL}
    for kind in ("PodDisruptionBudget", "PodMonitor", "HorizontalPodAutoscaler"):
        assert "shopserve-sequence" not in {o["metadata"]["name"] for o in by_kind(objects, kind)}
    policy = one(objects, "NetworkPolicy", "shopserve-predictors")
    assert policy["spec"]["podSelector"]["matchExpressions"][0]["values"] == ["ranker", "recall", "semantic"]
    # The transformer then never asks for the sequence model.
    assert one(objects, "ConfigMap", "shopserve-search")["data"]["SEARCH_SEQUENCE_ENABLED"] == "false"
    for rules in by_kind(objects, "PrometheusRule"):
        alerts = {r["alert"] for g in rules["spec"]["groups"] for r in g["rules"]}
        assert "ShopserveSequenceGpuSaturated" not in alerts
    # The ranker still needs the Triton runtime.
    assert by_kind(objects, "ServingRuntime")


def test_sequence_host_override_reaches_the_transformer(render: Any) -> None:
    objects = render("dev", "Knative", "search.sequenceHost=seq.example:8001")
    assert one(objects, "ConfigMap", "shopserve-search")["data"]["SEARCH_SEQUENCE_HOST"] == "seq.example:8001"


def test_sequence_on_cpu_in_prod(render: Any) -> None:
    """The GPU is the default, not a rule: a CPU sequence model names the CPU configuration."""
    objects = render("prod", "Knative", "sequence.gpu.count=0", "sequence.modelConfigName=cpu")
    model = one(objects, "InferenceService", SEQUENCE_MODEL)["spec"]["predictor"]["model"]
    assert model["args"] == ["--model-config-name=cpu"] and GPU not in model["resources"]["limits"]
    alerts = {r["alert"] for g in by_kind(objects, "PrometheusRule")[0]["spec"]["groups"] for r in g["rules"]}
    assert "ShopserveSequenceGpuSaturated" not in alerts


# --------------------------------------------------------------------------------------------------
# semantic.enabled: false, a bundle without a semantic component.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("env", "mode"), [("prod", "Knative"), ("prod", "Standard"), ("dev", "Knative")])
def test_semantic_disabled_renders_none_of_its_objects(env: str, mode: str, render: Any) -> None:
    objects = render(env, mode, "semantic.enabled=false")
    isvcs = {i["metadata"]["name"] for i in by_kind(objects, "InferenceService")}
    assert isvcs == {SEARCH_MODEL, RECALL_MODEL, SEQUENCE_MODEL}
    assert not [o for o in objects if QUERY_ENCODER_MODEL in o["metadata"]["name"]
                or o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "semantic"]
    for kind in ("PodDisruptionBudget", "PodMonitor", "HorizontalPodAutoscaler"):
        assert "shopserve-semantic" not in {o["metadata"]["name"] for o in by_kind(objects, kind)}
    policy = one(objects, "NetworkPolicy", "shopserve-predictors")
    assert policy["spec"]["podSelector"]["matchExpressions"][0]["values"] == ["ranker", "recall", "sequence"]
    # The transformer then never asks for the query encoder.
    settings = one(objects, "ConfigMap", "shopserve-search")["data"]
    assert settings["SEARCH_SEMANTIC_ENABLED"] == "false"
    assert settings["SEARCH_SEQUENCE_ENABLED"] == "true"
    for rules in by_kind(objects, "PrometheusRule"):
        alerts = {r["alert"] for g in rules["spec"]["groups"] for r in g["rules"]}
        assert "ShopserveSemanticGpuSaturated" not in alerts
    assert by_kind(objects, "ServingRuntime")


def test_semantic_enabled_value_alone_turns_the_path_off(render: Any) -> None:
    """search.semanticEnabled=false keeps the query encoder deployed but unasked (as
    search.sequenceEnabled does for the sequence model)."""
    objects = render("dev", "Knative", "search.semanticEnabled=false")
    one(objects, "InferenceService", QUERY_ENCODER_MODEL)
    assert one(objects, "ConfigMap", "shopserve-search")["data"]["SEARCH_SEMANTIC_ENABLED"] == "false"


def test_semantic_settings_reach_the_transformer(render: Any) -> None:
    objects = render("dev", "Knative", "search.semanticHost=enc.example:8001",
                     "search.semanticTimeoutMs=75", "search.semanticCandidates=40",
                     "search.weightSemantic:=0.75")
    settings = one(objects, "ConfigMap", "shopserve-search")["data"]
    assert settings["SEARCH_SEMANTIC_HOST"] == "enc.example:8001"
    assert settings["SEARCH_SEMANTIC_TIMEOUT_MS"] == "75"
    assert settings["SEARCH_SEMANTIC_CANDIDATES"] == "40"
    assert settings["SEARCH_WEIGHT_SEMANTIC"] == "0.75"


def test_semantic_on_cpu_in_prod(render: Any) -> None:
    """The GPU is the default, not a rule: a CPU query encoder names the CPU configuration."""
    objects = render("prod", "Knative", "semantic.gpu.count=0", "semantic.modelConfigName=cpu")
    model = one(objects, "InferenceService", QUERY_ENCODER_MODEL)["spec"]["predictor"]["model"]
    assert model["args"] == ["--model-config-name=cpu"] and GPU not in model["resources"]["limits"]
    alerts = {r["alert"] for g in by_kind(objects, "PrometheusRule")[0]["spec"]["groups"] for r in g["rules"]}
    assert "ShopserveSemanticGpuSaturated" not in alerts
