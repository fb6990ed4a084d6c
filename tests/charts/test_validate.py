"""Every object the chart renders, in every environment and mode, is valid against its schema.

Built-in kinds: kubernetes-validate (the upstream OpenAPI schemas, strict, Kubernetes 1.33).
KServe kinds: the CRD schemas in ../shared/kserve-crds with ``additionalProperties: false`` added.
prometheus-operator kinds: the CRD schemas in ../shared/monitoring-crds, strict the same way, plus
the fields the chart uses, checked by hand (durations, balanced PromQL, the labels alerts carry).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from pipeline.rollout.manifests import RENDERS, Render
from tests.charts.conftest import KUBERNETES_VERSION, VALIDATION_LOG, Obj, strict

BUILTIN = {
    ("v1", "ConfigMap"), ("v1", "ServiceAccount"), ("networking.k8s.io/v1", "NetworkPolicy"),
    ("policy/v1", "PodDisruptionBudget"), ("autoscaling/v2", "HorizontalPodAutoscaler"),
}
MONITORING = {("monitoring.coreos.com/v1", "PodMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
KSERVE = {("serving.kserve.io/v1beta1", "InferenceService"),
          ("serving.kserve.io/v1alpha1", "ServingRuntime")}

PROMETHEUS_DURATION = re.compile(r"^[0-9]+(ms|s|m|h|d|w|y)$")


def check_podmonitor(obj: Obj) -> None:
    """The PodMonitor fields the chart uses, with their types."""
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    spec = obj["spec"]
    assert set(spec) == {"selector", "podMetricsEndpoints"}
    assert set(spec["selector"]) == {"matchLabels"}
    for endpoint in spec["podMetricsEndpoints"]:
        assert set(endpoint) <= {"path", "interval", "relabelings"}
        assert PROMETHEUS_DURATION.match(endpoint["interval"])
        for relabel in endpoint["relabelings"]:
            assert set(relabel) <= {"sourceLabels", "targetLabel", "regex", "replacement", "action"}
            assert relabel.get("action", "replace") in {"keep", "drop", "replace"}


def _balanced(expr: str) -> bool:
    depth = 0
    for char in re.sub(r'"[^"]*"', "", expr):
        depth += {"(": 1, ")": -1, "{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def check_prometheusrule(obj: Obj) -> None:
    """The PrometheusRule fields the chart uses; every expression has balanced brackets."""
    assert set(obj["spec"]) == {"groups"}
    for group in obj["spec"]["groups"]:
        assert set(group) == {"name", "rules"}
        for rule in group["rules"]:
            assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}
            assert PROMETHEUS_DURATION.match(rule["for"])
            assert _balanced(rule["expr"]), rule["expr"]
            # Drift alerts also carry the signal they watch (shopserve.drift.SIGNALS).
            assert set(rule["labels"]) - {"signal"} == {"severity", "environment", "component"}
            assert set(rule["annotations"]) == {"summary", "description"}


@pytest.mark.parametrize("target", RENDERS, ids=lambda r: r.folder)
def test_every_object_is_valid(target: Render, rendered: dict[Render, list[Obj]],
                               kserve_validators: dict[tuple[str, str], Any],
                               monitoring_validators: dict[tuple[str, str], Any]) -> None:
    objects = rendered[target]
    assert objects, "nothing rendered"
    log = VALIDATION_LOG[f"{target.folder:17s}"]
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if key in BUILTIN:
            try:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where}: {exc.message} at {list(exc.absolute_path)}")
        elif key in KSERVE:
            errors = sorted(kserve_validators[key].iter_errors(obj), key=lambda e: list(e.path))
            assert not errors, f"{where}: " + "; ".join(
                f"{e.message} at {'.'.join(map(str, e.absolute_path))}" for e in errors)
        elif key in MONITORING:
            errors = sorted(monitoring_validators[key].iter_errors(obj), key=lambda e: list(e.path))
            assert not errors, f"{where}: " + "; ".join(
                f"{e.message} at {'.'.join(map(str, e.absolute_path))}" for e in errors)
            (check_podmonitor if obj["kind"] == "PodMonitor" else check_prometheusrule)(obj)
        else:
            pytest.fail(f"{where}: kind {key} has no validation; add it to this test")
        assert obj["metadata"]["namespace"] == "shopserve", f"{where} has no namespace"
        log[obj["kind"]] += 1


def test_strict_kserve_schema_rejects_a_misspelt_key(rendered: dict[Render, list[Obj]],
                                                     kserve_validators: dict[tuple[str, str], Any]) -> None:
    """The strict schema is what catches typos: the CRD as published would accept this one."""
    isvc = next(o for o in rendered[RENDERS[0]] if o["kind"] == "InferenceService")
    isvc["spec"]["predictor"]["minReplica"] = 1
    validator = kserve_validators[("serving.kserve.io/v1beta1", "InferenceService")]
    assert any("minReplica" in e.message for e in validator.iter_errors(isvc))
    lenient = jsonschema.Draft7Validator(validator.schema)
    assert lenient.is_valid({"spec": {"predictor": {"minReplicas": 1}}})
    assert strict({"properties": {"a": {}}, "x-kubernetes-preserve-unknown-fields": True}) == {
        "properties": {"a": {}}, "x-kubernetes-preserve-unknown-fields": True}


def test_strict_monitoring_schema_rejects_a_misspelt_key(
        rendered: dict[Render, list[Obj]], monitoring_validators: dict[tuple[str, str], Any]) -> None:
    monitor = copy.deepcopy(next(o for o in rendered[Render("prod", "Knative")] if o["kind"] == "PodMonitor"))
    monitor["spec"]["podMetricsEndpoints"][0]["intervall"] = "30s"
    validator = monitoring_validators[("monitoring.coreos.com/v1", "PodMonitor")]
    assert any("intervall" in e.message for e in validator.iter_errors(monitor))
