"""NOTES.txt: the first v2 request and how to watch the canary, per mode.

`helm template` does not render NOTES.txt and `helm install --dry-run` needs a cluster, so the test
renders a copy of the chart in which the notes are the data of a ConfigMap.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.rollout.manifests import CHART
from shopserve.protocol import (
    QUERY,
    QUERY_ENCODER_MODEL,
    RECALL_MODEL,
    SEARCH_MODEL,
    SEQUENCE_MODEL,
    USER_ID,
)


def render_notes(helm: str, tmp_path: Path, env: str, mode: str) -> str:
    chart = tmp_path / "shopserve"
    if not chart.exists():
        shutil.copytree(CHART, chart)
        notes = (chart / "templates" / "NOTES.txt").read_text().splitlines()
        body = "\n".join(f"    {line}" if line.strip() else "" for line in notes)
        (chart / "templates" / "zz-notes.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n" + body + "\n")
    out = subprocess.run(
        [helm, "template", "shopserve", str(chart), "-n", "shopserve",
         "-f", str(chart / f"values-{env}.yaml"), "--set", f"deploymentMode={mode}",
         "--show-only", "templates/zz-notes.yaml"],
        capture_output=True, text=True, check=True).stdout
    return str(yaml.safe_load(out)["data"]["notes"])


@pytest.mark.parametrize(("env", "mode"), [("dev", "Knative"), ("prod", "Knative"), ("prod", "Standard")])
def test_notes(env: str, mode: str, helm: str, tmp_path: Path) -> None:
    notes = render_notes(helm, tmp_path, env, mode)
    assert f"/v2/models/{SEARCH_MODEL}/infer" in notes
    assert f'"name": "{QUERY}"' in notes and f'"name": "{USER_ID}"' in notes
    assert f"KServe {mode} mode" in notes
    assert (f"get inferenceservices {SEARCH_MODEL} {RECALL_MODEL} {SEQUENCE_MODEL} "
            f"{QUERY_ENCODER_MODEL} -w") in notes
    if env == "dev":
        assert "cold start" in notes and "(none active now)" in notes
    else:
        assert "ranker: the candidate takes 10% of its traffic" in notes
        assert "sequence: the candidate takes 10% of its traffic" in notes
        # The query encoder stays on the stable bundle (it must match the transformer's index).
        assert "semantic: the candidate" not in notes
        watch = "get revisions" if mode == "Knative" else "canaryStatuses"
        assert watch in notes


def _notes_with(helm: str, tmp_path: Path, *sets: str) -> str:
    chart = tmp_path / "shopserve"
    render_notes(helm, tmp_path, "dev", "Knative")  # copies the chart
    args = [a for s in sets for a in ("--set", s)]
    out = subprocess.run(
        [helm, "template", "shopserve", str(chart), "-n", "shopserve",
         "-f", str(chart / "values-dev.yaml"), *args,
         "--show-only", "templates/zz-notes.yaml"],
        capture_output=True, text=True, check=True).stdout
    return str(yaml.safe_load(out)["data"]["notes"])


def test_notes_without_the_sequence_model(helm: str, tmp_path: Path) -> None:
    notes = _notes_with(helm, tmp_path, "sequence.enabled=false")
    assert f"get inferenceservices {SEARCH_MODEL} {RECALL_MODEL} {QUERY_ENCODER_MODEL} -w" in notes
    assert f"no {SEQUENCE_MODEL}; recommendations come from MF and popularity" in notes


def test_notes_without_the_query_encoder(helm: str, tmp_path: Path) -> None:
    notes = _notes_with(helm, tmp_path, "semantic.enabled=false")
    assert f"get inferenceservices {SEARCH_MODEL} {RECALL_MODEL} {SEQUENCE_MODEL} -w" in notes
    assert f"no {QUERY_ENCODER_MODEL}; search candidates come from BM25 and MF only" in notes


def test_notes_of_a_query_encoder_canary(helm: str, tmp_path: Path) -> None:
    notes = _notes_with(helm, tmp_path, "semantic.canary.enabled=true",
                        "semantic.canary.storageUri=s3://b/new/semantic")
    assert "semantic: the candidate takes 10% of its traffic" in notes
    assert f"serving.kserve.io/inferenceservice={QUERY_ENCODER_MODEL}" in notes
