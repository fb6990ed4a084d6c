"""``shopserve deploy --dry-run``: the chart rendered per environment with the bundle's storageUri."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.lifecycle.registry import write_bundle_manifest
from pipeline.rollout.deploy import DEFAULT_STORAGE_PREFIX, plan_deploy
from pipeline.rollout.manifests import ENVIRONMENTS, ROOT
from shopserve.artifacts import write_manifest

PARENT = "20260101.000000"
VERSION = "20260102.000000"
#: Bundles with a sequence component (older than VERSION, which stays ``latest``): SEQ_VERSION and
#: its parent SEQ_PARENT; FIRST_SEQ, whose parent PARENT has none.
SEQ_PARENT = "20251201.000000"
SEQ_VERSION = "20251202.000000"
FIRST_SEQ = "20251203.000000"
#: Bundles with a semantic component: SEM_VERSION and its parent SEM_PARENT; FIRST_SEM, whose parent
#: PARENT has none.
SEM_PARENT = "20251101.000000"
SEM_VERSION = "20251102.000000"
FIRST_SEM = "20251103.000000"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundles")
    plain = ("catalog", "recall", "ranker")
    for version, parent, components in (
        (SEQ_PARENT, None, (*plain, "sequence")), (SEQ_VERSION, SEQ_PARENT, (*plain, "sequence")),
        (FIRST_SEQ, PARENT, (*plain, "sequence")),
        (SEM_PARENT, None, (*plain, "semantic")), (SEM_VERSION, SEM_PARENT, (*plain, "semantic")),
        (FIRST_SEM, PARENT, (*plain, "semantic")),
        (PARENT, None, plain), (VERSION, PARENT, plain),
    ):
        for component in components:
            folder = root / version / component
            folder.mkdir(parents=True)
            (folder / "file.bin").write_bytes(version.encode())
            write_manifest(folder, component, version, parent=parent)
        write_bundle_manifest(root / version, version, parent=parent, metrics={"x": 1})
    return root


def _deploy(helm: str, registry: Path, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "deploy", "--registry", str(registry), "--helm", helm,
         "--dry-run", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def _uris(rendered: str) -> set[str]:
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("storageUri", "uri") and isinstance(value, str):
                    found.add(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for doc in yaml.safe_load_all(rendered):
        walk(doc)
    return {u for u in found if u.startswith("s3://")}


def _isvcs(rendered: str) -> set[str]:
    return {d["metadata"]["name"] for d in yaml.safe_load_all(rendered)
            if d and d["kind"] == "InferenceService"}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_dry_run_renders_the_bundle_storage_uri(helm: str, registry: Path, env: str) -> None:
    rendered = _deploy(helm, registry, "--env", env, "--bundle", VERSION, "--image-tag", "9.9.9")
    root = f"{DEFAULT_STORAGE_PREFIX}/{VERSION}"
    # No sequence component in this bundle: no seq-recommender, and the transformer knows it.
    assert _uris(rendered) == {root, f"{root}/ranker", f"{root}/recall"}
    assert _isvcs(rendered) == {"search", "mf-recall"}
    assert 'SEARCH_SEQUENCE_ENABLED: "false"' in rendered
    # No semantic component either: no query-encoder, BM25 and MF candidates only.
    assert 'SEARCH_SEMANTIC_ENABLED: "false"' in rendered
    assert "ghcr.io/shopserve/shopserve:9.9.9" in rendered
    assert "canaryTrafficPercent" not in rendered


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_dry_run_canary_keeps_the_parent_stable(helm: str, registry: Path, env: str) -> None:
    rendered = _deploy(helm, registry, "--env", env, "--bundle", "latest", "--canary", "25")
    new, stable = f"{DEFAULT_STORAGE_PREFIX}/{VERSION}", f"{DEFAULT_STORAGE_PREFIX}/{PARENT}"
    uris = _uris(rendered)
    assert stable in uris
    # Knative: the canary's URI is what the new revision serves; the stable one keeps 75%.
    assert {f"{new}/ranker", f"{new}/recall"} <= uris
    assert rendered.count("canaryTrafficPercent: 25") == 2


def test_standard_mode_canary_lists_the_candidate(helm: str, registry: Path) -> None:
    plan = plan_deploy("staging", VERSION, registry=registry, canary=10)
    cmd = [helm, *plan.helm_args(dry_run=True), "--set", "deploymentMode=Standard"]
    rendered = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    uris = _uris(rendered)
    assert f"{DEFAULT_STORAGE_PREFIX}/{PARENT}/ranker" in uris
    assert f"{DEFAULT_STORAGE_PREFIX}/{VERSION}/ranker" in uris


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"env": "qa"}, "--env must be one of"),
    ({"canary": 0}, "1..99"),
    ({"canary": 10, "bundle": PARENT}, "has no parent"),
])
def test_plan_refuses_bad_requests(registry: Path, kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"env": "dev", "bundle": VERSION, **kwargs}
    with pytest.raises(ValueError, match=message):
        plan_deploy(str(args.pop("env")), str(args.pop("bundle")), registry=registry, **args)  # type: ignore[arg-type]


def test_full_rollout_command_is_helm_upgrade_install(registry: Path) -> None:
    plan = plan_deploy("prod", VERSION, registry=registry, image_tag="1.2.3")
    args = plan.helm_args(dry_run=False)
    assert args[:3] == ["upgrade", "--install", "shopserve"]
    assert f"{ROOT}/charts/shopserve/values-prod.yaml" in args
    assert f"ranker.storageUri={DEFAULT_STORAGE_PREFIX}/{VERSION}/ranker" in args
    assert "ranker.canary.enabled=false" in args


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_dry_run_serves_the_bundle_sequence_component(helm: str, registry: Path, env: str) -> None:
    rendered = _deploy(helm, registry, "--env", env, "--bundle", SEQ_VERSION)
    root = f"{DEFAULT_STORAGE_PREFIX}/{SEQ_VERSION}"
    assert _uris(rendered) == {root, f"{root}/ranker", f"{root}/recall", f"{root}/sequence"}
    assert _isvcs(rendered) == {"search", "mf-recall", "seq-recommender"}
    assert 'SEARCH_SEQUENCE_ENABLED: "true"' in rendered
    assert "canaryTrafficPercent" not in rendered  # the values files' example canaries end


def test_dry_run_canary_covers_the_sequence_model_when_both_bundles_have_it(
        helm: str, registry: Path) -> None:
    rendered = _deploy(helm, registry, "--env", "staging", "--bundle", SEQ_VERSION, "--canary", "25")
    new, stable = f"{DEFAULT_STORAGE_PREFIX}/{SEQ_VERSION}", f"{DEFAULT_STORAGE_PREFIX}/{SEQ_PARENT}"
    assert {f"{new}/ranker", f"{new}/recall", f"{new}/sequence", stable} <= _uris(rendered)
    assert rendered.count("canaryTrafficPercent: 25") == 3


def test_canary_of_a_first_sequence_model_keeps_it_off(registry: Path) -> None:
    """The stable bundle has no sequence model to split against: it waits for the full rollout."""
    plan = plan_deploy("prod", FIRST_SEQ, registry=registry, canary=10)
    assert plan.sequence and not plan.stable_sequence
    values = plan.set_values()
    assert "sequence.enabled=false" in values
    assert not [v for v in values if v.startswith("sequence.") and v != "sequence.enabled=false"]
    full = plan_deploy("prod", FIRST_SEQ, registry=registry).set_values()
    assert f"sequence.storageUri={DEFAULT_STORAGE_PREFIX}/{FIRST_SEQ}/sequence" in full
    assert {"sequence.enabled=true", "sequence.canary.enabled=false"} <= set(full)


def test_canary_against_a_stable_bundle_not_in_the_registry(registry: Path) -> None:
    plan = plan_deploy("prod", SEQ_VERSION, registry=registry, canary=10, stable="20250101.000000")
    assert "sequence.enabled=false" in plan.set_values()


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_dry_run_serves_the_bundle_semantic_component(helm: str, registry: Path, env: str) -> None:
    rendered = _deploy(helm, registry, "--env", env, "--bundle", SEM_VERSION)
    root = f"{DEFAULT_STORAGE_PREFIX}/{SEM_VERSION}"
    assert _uris(rendered) == {root, f"{root}/ranker", f"{root}/recall", f"{root}/semantic"}
    assert _isvcs(rendered) == {"search", "mf-recall", "query-encoder"}
    assert 'SEARCH_SEMANTIC_ENABLED: "true"' in rendered
    assert "canaryTrafficPercent" not in rendered


@pytest.mark.parametrize("mode", ["Knative", "Standard"])
def test_canary_keeps_the_query_encoder_on_the_stable_bundle(helm: str, registry: Path, mode: str) -> None:
    """The transformer serves the stable bundle's item embeddings during a canary: only the stable
    bundle's encoder embeds queries into their space."""
    plan = plan_deploy("staging", SEM_VERSION, registry=registry, canary=25)
    assert plan.semantic and plan.stable_semantic
    stable = f"{DEFAULT_STORAGE_PREFIX}/{SEM_PARENT}"
    values = plan.set_values()
    assert {"semantic.enabled=true", f"semantic.storageUri={stable}/semantic",
            "semantic.canary.enabled=false"} <= set(values)
    cmd = [helm, *plan.helm_args(dry_run=True), "--set", f"deploymentMode={mode}"]
    rendered = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    [encoder] = [d for d in yaml.safe_load_all(rendered)
                 if d and d["kind"] == "InferenceService" and d["metadata"]["name"] == "query-encoder"]
    assert encoder["spec"]["predictor"]["model"]["storageUri"] == f"{stable}/semantic"
    assert "canary" not in encoder["spec"] and "canaryTrafficPercent" not in encoder["spec"]["predictor"]
    assert f"{DEFAULT_STORAGE_PREFIX}/{SEM_VERSION}/semantic" not in _uris(rendered)


def test_canary_of_a_first_semantic_component_keeps_it_off(registry: Path) -> None:
    """The stable bundle, which the transformer serves, has no item embeddings: the semantic path
    waits for the full rollout."""
    plan = plan_deploy("prod", FIRST_SEM, registry=registry, canary=10)
    assert plan.semantic and not plan.stable_semantic
    values = plan.set_values()
    assert "semantic.enabled=false" in values
    assert not [v for v in values if v.startswith("semantic.") and v != "semantic.enabled=false"]
    full = plan_deploy("prod", FIRST_SEM, registry=registry).set_values()
    assert f"semantic.storageUri={DEFAULT_STORAGE_PREFIX}/{FIRST_SEM}/semantic" in full
    assert {"semantic.enabled=true", "semantic.canary.enabled=false"} <= set(full)


def test_canary_against_an_unknown_stable_bundle_keeps_the_query_encoder_off(registry: Path) -> None:
    plan = plan_deploy("prod", SEM_VERSION, registry=registry, canary=10, stable="20250101.000000")
    assert "semantic.enabled=false" in plan.set_values()
