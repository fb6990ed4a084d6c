"""The committed manifests/ are what the chart renders now (`make manifests` regenerates them)."""

from __future__ import annotations

from pathlib import Path

from pipeline.rollout import manifests


def test_manifests_are_up_to_date(helm: str) -> None:
    problems = manifests.check(helm=helm)
    assert not problems, "run `make manifests`:\n" + "\n".join(problems)


def test_check_notices_a_stale_file(helm: str, tmp_path: Path) -> None:
    manifests.write(tmp_path, helm=helm)
    assert manifests.check(tmp_path, helm=helm) == []
    victim = tmp_path / "prod" / "inferenceservice-search.yaml"
    victim.write_text(victim.read_text().replace("canaryTrafficPercent: 10", "canaryTrafficPercent: 20"))
    (tmp_path / "dev" / "configmap-left-over.yaml").write_text("kind: ConfigMap\n")
    assert manifests.check(tmp_path, helm=helm) == [
        "stale (no longer rendered): dev/configmap-left-over.yaml",
        "out of date: prod/inferenceservice-search.yaml",
    ]
