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


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundles")
    for version, parent in ((PARENT, None), (VERSION, PARENT)):
        for component in ("catalog", "recall", "ranker"):
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


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_dry_run_renders_the_bundle_storage_uri(helm: str, registry: Path, env: str) -> None:
    rendered = _deploy(helm, registry, "--env", env, "--bundle", VERSION, "--image-tag", "9.9.9")
    root = f"{DEFAULT_STORAGE_PREFIX}/{VERSION}"
    assert _uris(rendered) == {root, f"{root}/ranker", f"{root}/recall"}
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
