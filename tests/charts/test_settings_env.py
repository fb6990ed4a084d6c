"""The chart's env names and the components' settings fields match one to one, both ways.

One concept, three spellings: Helm ``recall.topK`` <-> env ``RECALL_TOP_K`` <-> field ``top_k``.
Every settings field is either set from values (the mechanical spelling above), fixed by the chart
(the table below), or set through a flag the KServe controller owns (also below); nothing else.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from pipeline.rollout.manifests import CHART, RENDERS, Render
from shopserve.settings import KSERVE_FLAGS as KNOWN
from shopserve.settings import RecallSettings, SearchSettings, load_search
from tests.charts.conftest import Obj, one

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())

#: Fields the chart sets itself in the ConfigMap: pod facts, not choices. (``recall_host`` is a value,
#: ``search.recallHost``, whose empty default the chart fills with mf-recall's in-cluster address.)
CHART_FIXED = {
    "search": {
        "bind_host": "every address in a pod",
        "bundle_dir": "KServe mounts storageUri at /mnt/models",
        "recall_model": "shopserve.protocol.RECALL_MODEL",
        "ranker_model": "shopserve.protocol.RANKER_MODEL",
        "sequence_model": "shopserve.protocol.SEQUENCE_MODEL",
        "semantic_model": "shopserve.protocol.QUERY_ENCODER_MODEL",
    },
    "recall": {
        "model_name": "the InferenceService name, shopserve.protocol.RECALL_MODEL",
        "bind_host": "every address in a pod",
        "bundle_dir": "KServe mounts storageUri at /mnt/models",
        "http_port": "recall.containerPorts.http, also the container port",
        "grpc_port": "recall.containerPorts.grpc, also the container port",
    },
}
#: Fields set by the flags KServe injects into a transformer; the chart passes them explicitly.
KSERVE_FLAGS = {
    "search": {
        "model_name": "--model_name (the InferenceService name)",
        "ranker_host": "--predictor_host (search.rankerHost or the search predictor)",
        "http_port": "--http_port (search.containerPorts.http)",
        "grpc_port": "--grpc_port (search.containerPorts.grpc)",
    },
    "recall": {},
}
COMPONENTS: dict[str, tuple[type[BaseSettings], str]] = {
    "search": (SearchSettings, "SEARCH_"),
    "recall": (RecallSettings, "RECALL_"),
}


def camel(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(p.capitalize() for p in rest)


def snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def configmap_env(objects: list[Obj], component: str) -> dict[str, str]:
    return one(objects, "ConfigMap", f"shopserve-{component}")["data"]


@pytest.mark.parametrize("component", COMPONENTS)
def test_spellings_are_mechanical(component: str) -> None:
    settings, _ = COMPONENTS[component]
    for field in settings.model_fields:
        assert snake(camel(field)) == field


@pytest.mark.parametrize("target", RENDERS, ids=lambda r: r.folder)
@pytest.mark.parametrize("component", COMPONENTS)
def test_every_env_var_is_a_settings_field(component: str, target: Render,
                                           rendered: dict[Render, list[Obj]]) -> None:
    settings, prefix = COMPONENTS[component]
    env = configmap_env(rendered[target], component)
    for name in env:
        assert name.startswith(prefix), f"{name} lacks the {prefix} prefix"
        field = name[len(prefix):].lower()
        assert field in settings.model_fields, f"{name} sets no field of {settings.__name__}"
        assert field not in KSERVE_FLAGS[component], f"{name} would lose to the KServe flag"
    # The containers get their env only from that ConfigMap (plus non-settings variables).
    isvc = one(rendered[target], "InferenceService", "search" if component == "search" else "mf-recall")
    spec = isvc["spec"]["transformer" if component == "search" else "predictor"]
    container = spec["containers"][0]
    assert container["envFrom"] == [{"configMapRef": {"name": f"shopserve-{component}"}}]
    assert not [e for e in container.get("env", []) if e["name"].startswith(prefix)]


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_settings_field_is_settable(component: str, rendered: dict[Render, list[Obj]]) -> None:
    settings, prefix = COMPONENTS[component]
    objects = rendered[Render("dev", "Knative")]
    env = configmap_env(objects, component)
    values = VALUES[component]
    for field in settings.model_fields:
        fixed = field in CHART_FIXED[component]
        flag = field in KSERVE_FLAGS[component]
        # A flag may take its value from values (search.rankerHost); it is still set by the flag.
        from_values = camel(field) in values and not flag
        assert fixed + flag + from_values == 1, f"{field}: fixed={fixed} flag={flag} values={from_values}"
        assert (f"{prefix}{field.upper()}" in env) == (not flag), f"{field} env/flag mismatch"
    assert not set(CHART_FIXED[component]) - set(settings.model_fields)
    assert not set(KSERVE_FLAGS[component]) - set(settings.model_fields)


@pytest.mark.parametrize("component", COMPONENTS)
def test_values_reach_the_env_and_validate(component: str, render: Any) -> None:
    """Each value lands in its variable, and the settings class accepts what the chart writes."""
    settings, prefix = COMPONENTS[component]
    values = VALUES[component]
    keys = [camel(f) for f in settings.model_fields if camel(f) in values]
    changed: dict[str, Any] = {}
    sets = []
    for key in keys:
        value = values[key]
        new: Any
        if isinstance(value, bool):
            new = not value
        elif isinstance(value, int):
            new = value + 1
        elif isinstance(value, float):  # a step that stays in [0, 1] for a bounded share
            new = round(value + 0.25 if value < 0.75 else value - 0.25, 2)
        elif key == "logLevel":
            new = "WARNING"
        elif key == "index":
            new = "ivf"
        else:
            continue
        changed[key] = new
        # --set-json keeps floats numbers (plain --set would make them strings).
        sets.append(f"{component}.{key}:={new}" if isinstance(new, float) else f"{component}.{key}={new}")
    env = configmap_env(render("dev", "Knative", *sets), component)
    for key, new in changed.items():
        expected = str(new).lower() if isinstance(new, bool) else str(new)  # YAML/Go spelling
        assert env[f"{prefix}{snake(key).upper()}"] == expected, key
    parsed = settings.model_validate({k[len(prefix):].lower(): v for k, v in env.items()})
    for key, new in changed.items():
        assert getattr(parsed, snake(key)) == new, key


def test_transformer_flags(rendered: dict[Render, list[Obj]]) -> None:
    """The KServe flags the chart passes are exactly the ones settings.KSERVE_FLAGS knows."""
    for target in RENDERS:
        isvc = one(rendered[target], "InferenceService", "search")
        args = isvc["spec"]["transformer"]["containers"][0]["args"]
        flags = {a[2:] for a in args if a.startswith("--")}
        assert flags <= set(KNOWN)
        parsed = load_search(args)
        assert parsed.ranker_host == args[args.index("--predictor_host") + 1]
        assert parsed.http_port == 8080 and parsed.grpc_port == 8081 and parsed.model_name == "search"
