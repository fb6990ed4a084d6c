"""Every container of every environment has startup, readiness and liveness probes, and a pod stops
gracefully: ``terminationGracePeriodSeconds`` > preStop sleep + the server's own drain.

Containers are those the chart writes: the transformer's and recall's ``containers`` and the Triton
ServingRuntime's, once for every predictor that runs on it (the ranker's, the sequence model's and
the query encoder's ``model``, canaries included, is merged into it by KServe, so it inherits its
probes and preStop;
its pod, and so ``terminationGracePeriodSeconds``, is the predictor's). Knative forbids lifecycle
hooks and ``terminationGracePeriodSeconds`` (its queue-proxy drains a pod), so the graceful-stop
fields are checked in Standard mode and asserted absent in Knative mode.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.rollout.manifests import RENDERS, Render
from shopserve.protocol import QUERY_ENCODER_MODEL, SEARCH_MODEL, SEQUENCE_MODEL
from tests.charts.conftest import ROOT, Obj, by_kind, one

PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def _serve_grace_period() -> int:
    """``grace_period``'s default of ``shopserve.serving.serve``, read from the source (importing
    the module would import kserve, which may not share this process with tritonclient.grpc)."""
    tree = ast.parse((ROOT / "shopserve" / "serving.py").read_text())
    serve = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "serve")
    names = [a.arg for a in serve.args.kwonlyargs]
    default = serve.args.kw_defaults[names.index("grace_period")]
    assert isinstance(default, ast.Constant)
    return int(default.value)


def _pods(isvc: Obj) -> Iterator[tuple[str, Obj]]:
    spec = isvc["spec"]
    yield "predictor", spec["predictor"]
    if "transformer" in spec:
        yield "transformer", spec["transformer"]
    for i, canary in enumerate(spec.get("canary", [])):
        yield f"canary[{i}]", canary["predictor"]


def containers(objects: list[Obj]) -> Iterator[tuple[str, Obj, Obj | None]]:
    """(where, container, its pod spec) of every container the chart renders. A Triton runtime's
    container is yielded once per predictor pod that names the runtime (the ranker's, the
    sequence model's and the query encoder's, canaries included), with that pod; with none, once
    with None."""
    for isvc in by_kind(objects, "InferenceService"):
        name = isvc["metadata"]["name"]
        for component, pod in _pods(isvc):
            for index, container in enumerate(pod.get("containers", [])):
                yield f"{name}.{component}.containers[{index}]", container, pod
    for runtime in by_kind(objects, "ServingRuntime"):
        runtime_name = runtime["metadata"]["name"]
        users = [(f"{isvc['metadata']['name']}.{component}", pod)
                 for isvc in by_kind(objects, "InferenceService") for component, pod in _pods(isvc)
                 if pod.get("model", {}).get("runtime") == runtime_name]
        for index, container in enumerate(runtime["spec"]["containers"]):
            for user, pod in users or [("", None)]:
                yield f"{runtime_name}.containers[{index}] ({user or 'no predictor'})", container, pod


@pytest.mark.parametrize("target", RENDERS, ids=lambda r: r.folder)
def test_every_container_has_all_three_probes(target: Render,
                                              rendered: dict[Render, list[Obj]]) -> None:
    found = list(containers(rendered[target]))
    # transformer, recall, Triton for the ranker, the sequence model and the query encoder (and
    # canaries)
    assert len(found) >= 5
    assert {where.split(" (")[1].split(".")[0] for where, _, _ in found if " (" in where} == {
        SEARCH_MODEL, SEQUENCE_MODEL, QUERY_ENCODER_MODEL}
    for where, container, _ in found:
        for probe in PROBES:
            assert probe in container, f"{target.folder}: {where} has no {probe}"
            spec = container[probe]
            assert spec.get("periodSeconds", 0) >= 1 and spec.get("failureThreshold", 0) >= 1
        # Liveness ("restart me") never on the readiness endpoint ("send me traffic").
        live = container["livenessProbe"].get("httpGet", {}).get("path")
        assert live in (None, "/v2/health/live"), where
        for probe in ("startupProbe", "readinessProbe"):
            assert container[probe].get("httpGet", {}).get("path") in (None, "/v2/health/ready")
        # The model load gets far longer than a liveness failure takes to restart the container.
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, where


@pytest.mark.parametrize("target", RENDERS, ids=lambda r: r.folder)
def test_probes_use_a_port_the_mode_allows(target: Render,
                                           rendered: dict[Render, list[Obj]]) -> None:
    for where, container, _ in containers(rendered[target]):
        ports = [p["containerPort"] for p in container.get("ports", [])]
        for probe in PROBES:
            handler = container[probe].get("httpGet") or container[probe].get("tcpSocket")
            assert handler, f"{where}.{probe}: httpGet or tcpSocket"
            if target.mode == "Knative":
                # Knative rejects a probe on any port but the container's single one.
                assert handler["port"] == ports[0], f"{where}.{probe}"
            else:
                assert "httpGet" in container[probe], f"{where}.{probe}: HTTP in Standard mode"


def _server_grace(where: str, container: Obj) -> int:
    args = container.get("args", [])
    timeouts = [a.split("=", 1)[1] for a in args if a.startswith("--exit-timeout-secs=")]
    if "tritonserver" in args:
        assert len(timeouts) == 1, f"{where}: Triton needs --exit-timeout-secs"
        return int(timeouts[0])
    return _serve_grace_period()


@pytest.mark.parametrize("target", RENDERS, ids=lambda r: r.folder)
def test_graceful_stop(target: Render, rendered: dict[Render, list[Obj]]) -> None:
    for where, container, pod in containers(rendered[target]):
        if target.mode == "Knative":
            assert "lifecycle" not in container, f"{where}: Knative forbids lifecycle hooks"
            assert pod is None or "terminationGracePeriodSeconds" not in pod, where
            continue
        sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert sleep >= 1, where
        assert pod is not None
        grace = pod["terminationGracePeriodSeconds"]
        assert grace > sleep + _server_grace(where, container), (
            f"{where}: terminationGracePeriodSeconds {grace} <= preStop {sleep} + server drain")


def test_serve_grace_period_is_read() -> None:
    assert _serve_grace_period() == 10


def test_a_short_grace_period_is_caught(render: Any) -> None:
    objects = render("dev", "Standard", "search.termination.gracePeriodSeconds=12")
    with pytest.raises(AssertionError, match="terminationGracePeriodSeconds 12"):
        test_graceful_stop(Render("dev", "Standard"), {Render("dev", "Standard"): objects})


def test_a_short_sequence_grace_period_is_caught(render: Any) -> None:
    """The sequence model's pod runs the shared runtime's preStop and Triton drain."""
    objects = render("prod", "Standard", "sequence.termination.gracePeriodSeconds=14")
    with pytest.raises(AssertionError, match=f"{SEQUENCE_MODEL}.predictor.*terminationGracePeriodSeconds 14"):
        test_graceful_stop(Render("prod", "Standard"), {Render("prod", "Standard"): objects})


def test_a_short_query_encoder_grace_period_is_caught(render: Any) -> None:
    """The query encoder's pod runs the shared runtime's preStop and Triton drain too."""
    objects = render("prod", "Standard", "semantic.termination.gracePeriodSeconds=14")
    with pytest.raises(AssertionError,
                       match=f"{QUERY_ENCODER_MODEL}.predictor.*terminationGracePeriodSeconds 14"):
        test_graceful_stop(Render("prod", "Standard"), {Render("prod", "Standard"): objects})


@pytest.mark.parametrize("isvc_name", [SEQUENCE_MODEL, QUERY_ENCODER_MODEL])
@pytest.mark.parametrize("mode", ["Knative", "Standard"])
def test_triton_model_predictors_inherit_the_runtime_probes(mode: str, isvc_name: str,
                                                            render: Any) -> None:
    """The seq-recommender and query-encoder predictors name the Triton runtime and set no probes
    of their own, so KServe's merge gives them the runtime's startup, readiness and liveness
    probes (canaries included)."""
    objects = render("staging", mode, "semantic.canary.enabled=true",
                     "semantic.canary.storageUri=s3://b/new/semantic")
    runtime = by_kind(objects, "ServingRuntime")[0]
    isvc = one(objects, "InferenceService", isvc_name)
    for component, pod in _pods(isvc):
        assert pod["model"]["runtime"] == runtime["metadata"]["name"], component
        assert not set(PROBES) & set(pod["model"]), component
    assert set(PROBES) <= set(runtime["spec"]["containers"][0])
