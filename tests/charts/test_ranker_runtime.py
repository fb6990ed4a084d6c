"""`ranker.server`: the search InferenceService's ranker on Triton (default) or on TorchServe.

TorchServe renders KServe's `kserve-torchserve` predictor (model format `pytorch`, protocol v2, the
bundle's TorchServe model store as storageUri) and every other part of the ranker pod unchanged:
resources, hardening, scheduling, canaries. The Triton ServingRuntime stays for the sequence model
(`seq-recommender`) and the query encoder (`query-encoder`), unless both are disabled too. Each
rendering is validated against the strict KServe CRD schemas, like the environment renders.
"""

from __future__ import annotations

from typing import Any

import pytest

from shopserve.protocol import QUERY_ENCODER_MODEL, SEARCH_MODEL, SEQUENCE_MODEL
from tests.charts.conftest import Obj, by_kind, one

TS = "ranker.server=torchserve"


def _valid(objects: list[Obj], kserve_validators: dict[tuple[str, str], Any]) -> None:
    for obj in objects:
        validator = kserve_validators.get((obj["apiVersion"], obj["kind"]))
        if validator is not None:
            errors = [e.message for e in validator.iter_errors(obj)]
            assert not errors, (obj["kind"], obj["metadata"]["name"], errors[:3])


@pytest.mark.parametrize("mode", ["Knative", "Standard"])
def test_torchserve_predictor(mode: str, render: Any, kserve_validators: dict[tuple[str, str], Any]) -> None:
    objects = render("dev", mode, TS)
    _valid(objects, kserve_validators)
    predictor = one(objects, "InferenceService", SEARCH_MODEL)["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "pytorch"}
    # The transformer calls the ranker over v2 gRPC: KServe's TorchServe wrapper serves it for grpc-v2.
    assert model["protocolVersion"] == "grpc-v2"
    assert model["storageUri"] == "s3://shopserve-models/bundles/20261120.090000/ranker/torchserve"
    # KServe picks its kserve-torchserve runtime by the format; Triton's flags are not passed on.
    assert "runtime" not in model and "args" not in model
    assert {e["name"]: e["value"] for e in model["env"]}["LOG_LOCATION"].startswith("/tmp/")
    assert model["securityContext"]["readOnlyRootFilesystem"] is True
    assert model["resources"]["limits"]["memory"]
    assert predictor["annotations"]["prometheus.io/port"] == "8082"
    # The Triton ServingRuntime is rendered for the sequence model and the query encoder only.
    [runtime] = by_kind(objects, "ServingRuntime")
    for isvc_name in (SEQUENCE_MODEL, QUERY_ENCODER_MODEL):
        model = one(objects, "InferenceService", isvc_name)["spec"]["predictor"]["model"]
        assert model["runtime"] == runtime["metadata"]["name"]
    # Either one keeps it; without both, no Triton ServingRuntime at all.
    for off in ("sequence", "semantic"):
        assert by_kind(render("dev", mode, TS, f"{off}.enabled=false"), "ServingRuntime")
    assert not by_kind(render("dev", mode, TS, "sequence.enabled=false", "semantic.enabled=false"),
                       "ServingRuntime")


def test_triton_stays_the_default(render: Any) -> None:
    objects = render("dev", "Knative")
    model = one(objects, "InferenceService", SEARCH_MODEL)["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "triton"} and model["protocolVersion"] == "grpc-v2"
    assert model["args"] == ["--model-config-name=cpu"]
    assert by_kind(objects, "ServingRuntime")


@pytest.mark.parametrize("mode", ["Knative", "Standard"])
def test_torchserve_canary_serves_the_candidate_store(
    mode: str, render: Any, kserve_validators: dict[tuple[str, str], Any]
) -> None:
    objects = render("staging", mode, TS, "ranker.gpu.count=0")
    _valid(objects, kserve_validators)
    spec = one(objects, "InferenceService", SEARCH_MODEL)["spec"]
    candidate = "s3://shopserve-models/bundles/20261122.090000/ranker/torchserve"
    if mode == "Knative":
        assert spec["predictor"]["canaryTrafficPercent"] == 10
        assert spec["predictor"]["model"]["storageUri"] == candidate
    else:
        [canary] = spec["canary"]
        assert canary["trafficPercent"] == 10
        assert canary["predictor"]["model"]["storageUri"] == candidate
        assert canary["predictor"]["model"]["modelFormat"] == {"name": "pytorch"}
        assert spec["predictor"]["model"]["storageUri"].endswith("20261120.090000/ranker/torchserve")


def test_torchserve_with_a_gpu_fails(template_error: Any) -> None:
    assert "set ranker.gpu.count=0" in template_error("staging", "Knative", TS)


def test_schema_rejects_an_unknown_server(template_error: Any) -> None:
    assert "ranker.server" in template_error("dev", "Knative", "ranker.server=tfserving")
