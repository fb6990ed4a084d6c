"""values.yaml, values.schema.json and the per-environment files: documented, strict, linted."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest
import yaml

from pipeline.rollout.manifests import CHART, ENVIRONMENTS
from tests.charts.conftest import walk

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
PARAM = re.compile(r"^\s*## @param (\S+) (\S.*)$", re.MULTILINE)


def leaves(node: Any, schema: dict[str, Any] = SCHEMA, prefix: str = "") -> set[str]:
    """Dotted paths of the values a user sets, following the schema: an object with ``properties``
    is walked into, anything else (scalar, list, free map such as nodeSelector) is one value."""
    if "properties" not in schema:
        return {prefix}
    unknown = set(node) - set(schema["properties"])
    assert not unknown, f"{prefix or 'values'}: {unknown} not in values.schema.json"
    return set().union(*(leaves(v, schema["properties"][k], f"{prefix}.{k}" if prefix else k)
                         for k, v in node.items()))


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_helm_lint_strict(env: str, helm: str) -> None:
    result = subprocess.run([helm, "lint", "--strict", str(CHART), "-f", str(CHART / f"values-{env}.yaml")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_every_value_is_documented_and_every_doc_is_a_value() -> None:
    documented = dict(PARAM.findall((CHART / "values.yaml").read_text()))
    values = leaves(VALUES)
    assert not values - set(documented), "values without ## @param"
    assert not set(documented) - values, "## @param naming no value"
    assert all(len(text) > 10 for text in documented.values())


def test_schema_is_closed_at_every_level() -> None:
    """Every object with properties rejects unknown keys; maps constrain their values' type."""
    for path, node in walk(SCHEMA):
        if not isinstance(node, dict) or node.get("type") != "object" or path == "properties.global":
            continue
        if "properties" in node:
            assert node.get("additionalProperties") is False, path
            assert set(node.get("required", [])) <= set(node["properties"]), path
        else:
            assert isinstance(node.get("additionalProperties"), dict), f"{path}: open map"


def test_schema_covers_exactly_the_documented_values() -> None:
    def schema_paths(node: dict[str, Any], prefix: str = "") -> set[str]:
        if "properties" not in node:
            return {prefix}
        return set().union(*(schema_paths(v, f"{prefix}.{k}" if prefix else k)
                             for k, v in node["properties"].items() if k != "global"))
    assert schema_paths(SCHEMA) == leaves(VALUES)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_environment_files_only_use_known_keys(env: str) -> None:
    overrides = yaml.safe_load((CHART / f"values-{env}.yaml").read_text())
    assert overrides["environment"] == env
    for path, _ in walk(overrides):
        node: Any = VALUES
        for part in path.split(".") if path else []:
            part = re.sub(r"\[\d+\]$", "", part)
            if isinstance(node, dict) and part in node:
                node = node[part]
            else:
                assert isinstance(node, (dict, list)), f"{env}: {path} is not in values.yaml"
                break


# --------------------------------------------------------------------------------------------------
# Negative: mistakes fail the render with a message that says what to fix.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sets", "message"), [
    (["recall.topk=100"], "Additional property topk is not allowed"),
    (["serach.workers=2"], "Additional property serach is not allowed"),
    (["ranker.canary.trafficPercent=101"], "ranker.canary.trafficPercent"),
    (["search.canary.trafficPercent=-1"], "search.canary.trafficPercent"),
    (["recall.canary.trafficPercent=150"], "recall.canary.trafficPercent"),
    (["deploymentMode=Serverless"], "deploymentMode"),
    (["containerSecurityContext.readOnlyRootFilesystem=false"], "readOnlyRootFilesystem"),
    (["podSecurityContext.runAsNonRoot=false"], "runAsNonRoot"),
    (["search.logLevel=TRACE"], "search.logLevel"),
    (["recall.index=annoy"], "recall.index"),
    (["ranker.modelConfigName=c p u"], "ranker.modelConfigName"),
    (["sequence.canary.trafficPercent=101"], "sequence.canary.trafficPercent"),
    (["sequence.modelConfigName=c p u"], "sequence.modelConfigName"),
    (["sequence.termination.preStopSleepSeconds=5"],
     "Additional property preStopSleepSeconds is not allowed"),
    (["sequence.storageUri=bucket/sequence"], "sequence.storageUri"),
    (["sequence.enabled=yes"], "sequence.enabled"),
    (["semantic.canary.trafficPercent=101"], "semantic.canary.trafficPercent"),
    (["semantic.modelConfigName=c p u"], "semantic.modelConfigName"),
    (["semantic.termination.preStopSleepSeconds=5"],
     "Additional property preStopSleepSeconds is not allowed"),
    (["semantic.storageUri=bucket/semantic"], "semantic.storageUri"),
    (["semantic.enabled=yes"], "semantic.enabled"),
    (["search.semanticHost=query-encoder"], "search.semanticHost"),
    (["search.semanticTimeoutMs=0"], "search.semanticTimeoutMs"),
    (["search.semanticCandidates=0"], "search.semanticCandidates"),
    (["search.semanticEnabled=yes"], "search.semanticEnabled"),
])
def test_schema_rejects(sets: list[str], message: str, template_error: Any) -> None:
    assert message in template_error("dev", "Knative", *sets)


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_staging_and_prod_without_a_gpu_ranker_fail(env: str, template_error: Any) -> None:
    error = template_error(env, "Knative", "ranker.gpu.count=0")
    assert f"environment {env} needs a GPU ranker: set ranker.gpu.count >= 1" in error


@pytest.mark.parametrize(("mode", "sets", "message"), [
    ("Standard", ["search.canary.enabled=true", "search.canary.imageTag=0.2.0"],
     "covers predictors only"),
    ("Knative", ["search.canary.enabled=true"], "search.canary.imageTag"),
    ("Knative", ["ranker.canary.enabled=true"], "ranker.canary.storageUri"),
    ("Standard", ["recall.canary.enabled=true"], "recall.canary.storageUri"),
    ("Knative", ["recall.autoscaling.minReplicas=5", "recall.autoscaling.maxReplicas=2"],
     "recall.autoscaling.minReplicas (5) exceeds maxReplicas (2)"),
    ("Knative", ["ranker.modelConfigName="], "set ranker.modelConfigName=cpu"),
    ("Knative", ["sequence.modelConfigName="], "set sequence.modelConfigName=cpu"),
    ("Standard", ["sequence.canary.enabled=true"], "sequence.canary.storageUri"),
    ("Knative", ["sequence.autoscaling.minReplicas=3", "sequence.autoscaling.maxReplicas=2"],
     "sequence.autoscaling.minReplicas (3) exceeds maxReplicas (2)"),
    ("Knative", ["semantic.modelConfigName="], "set semantic.modelConfigName=cpu"),
    ("Standard", ["semantic.canary.enabled=true"], "semantic.canary.storageUri"),
    ("Knative", ["semantic.autoscaling.minReplicas=3", "semantic.autoscaling.maxReplicas=2"],
     "semantic.autoscaling.minReplicas (3) exceeds maxReplicas (2)"),
])
def test_inconsistent_values_fail(mode: str, sets: list[str], message: str, template_error: Any) -> None:
    assert message in template_error("dev", mode, *sets)


def test_a_disabled_sequence_model_is_not_checked(render: Any) -> None:
    """Values of a sequence model that is not rendered cannot fail the release."""
    objects = render("dev", "Knative", "sequence.enabled=false", "sequence.modelConfigName=")
    assert "seq-recommender" not in {o["metadata"]["name"] for o in objects}


def test_a_disabled_query_encoder_is_not_checked(render: Any) -> None:
    """Values of a query encoder that is not rendered cannot fail the release."""
    objects = render("dev", "Knative", "semantic.enabled=false", "semantic.modelConfigName=",
                     "semantic.canary.enabled=true")
    assert "query-encoder" not in {o["metadata"]["name"] for o in objects}
