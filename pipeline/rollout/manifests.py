"""Render the Helm chart into ``manifests/<env>[-standard]/``, one file per object, or check them.

``make manifests`` runs ``python -m pipeline.rollout.manifests``; tests/charts runs :func:`check` and fails
when the committed files differ from what the chart renders now. Each environment is rendered in
both KServe deployment modes: its values file as written (Knative) into ``manifests/<env>/``, and
with ``deploymentMode=Standard`` into ``manifests/<env>-standard/``.

Helm is found in ``$HELM``, then ``.tools/bin/helm`` (``make tools``), then ``PATH``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "shopserve"
MANIFESTS = ROOT / "manifests"
RELEASE = "shopserve"
NAMESPACE = "shopserve"
ENVIRONMENTS = ("dev", "staging", "prod")
MODES = ("Knative", "Standard")


@dataclass(frozen=True)
class Render:
    """One rendering of the chart: an environment's values file in one deployment mode."""

    env: str
    mode: str

    @property
    def folder(self) -> str:
        """Folder under ``manifests/``: ``<env>`` for Knative, ``<env>-standard`` for Standard."""
        return self.env if self.mode == "Knative" else f"{self.env}-{self.mode.lower()}"

    @property
    def values_file(self) -> Path:
        """The environment's values file."""
        return CHART / f"values-{self.env}.yaml"


RENDERS: tuple[Render, ...] = tuple(Render(env, mode) for env in ENVIRONMENTS for mode in MODES)


class HelmNotFound(RuntimeError):
    """No helm binary: run ``make tools`` or set ``HELM``."""


def find_helm() -> str:
    """Path of the helm binary: ``$HELM``, then ``.tools/bin/helm``, then ``PATH``."""
    candidates = [os.environ.get("HELM"), str(ROOT / ".tools" / "bin" / "helm"), shutil.which("helm")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise HelmNotFound("helm not found: run `make tools` (installs .tools/bin/helm) or set HELM")


def helm_template(render: Render, extra_args: Sequence[str] = (), helm: str | None = None) -> str:
    """``helm template`` output of one rendering (raises ``CalledProcessError`` with helm's message)."""
    cmd = [
        helm or find_helm(), "template", RELEASE, str(CHART),
        "--namespace", NAMESPACE,
        "--values", str(render.values_file),
        "--set", f"deploymentMode={render.mode}",
        *extra_args,
    ]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


_SOURCE = re.compile(r"^# Source: .*$", re.MULTILINE)


def split_documents(text: str) -> dict[str, str]:
    """One file per object, named ``<kind>-<name>.yaml`` (lower case), in helm's own text."""
    files: dict[str, str] = {}
    for doc in re.split(r"^---\s*$", text, flags=re.MULTILINE):
        body = doc.strip("\n")
        obj = yaml.safe_load(body) if body.strip() else None
        if not obj:
            continue
        name = f"{obj['kind']}-{obj['metadata']['name']}".lower() + ".yaml"
        if name in files:
            raise ValueError(f"two rendered objects map to the file name {name}")
        files[name] = body + "\n"
    return files


def expected(helm: str | None = None) -> dict[str, str]:
    """Every manifest file the chart renders now, by path relative to ``manifests/``."""
    helm = helm or find_helm()
    out: dict[str, str] = {}
    for render in RENDERS:
        for name, text in split_documents(helm_template(render, helm=helm)).items():
            out[f"{render.folder}/{name}"] = text
    return out


def committed(root: Path = MANIFESTS) -> dict[str, str]:
    """The rendered files present under ``root`` (the folders of :data:`RENDERS` only)."""
    out: dict[str, str] = {}
    for render in RENDERS:
        folder = root / render.folder
        if folder.is_dir():
            for path in sorted(folder.glob("*.yaml")):
                out[f"{render.folder}/{path.name}"] = path.read_text()
    return out


def check(root: Path = MANIFESTS, helm: str | None = None) -> list[str]:
    """Differences between the committed manifests and a fresh rendering (empty when in sync)."""
    want, have = expected(helm), committed(root)
    problems = [f"missing: {p}" for p in sorted(want.keys() - have.keys())]
    problems += [f"stale (no longer rendered): {p}" for p in sorted(have.keys() - want.keys())]
    problems += [f"out of date: {p}" for p in sorted(want.keys() & have.keys()) if want[p] != have[p]]
    return problems


def write(root: Path = MANIFESTS, helm: str | None = None) -> dict[str, int]:
    """Render everything into ``root``, removing files no longer rendered; objects per folder."""
    want = expected(helm)
    for render in RENDERS:
        folder = root / render.folder
        folder.mkdir(parents=True, exist_ok=True)
        for path in folder.glob("*.yaml"):
            if f"{render.folder}/{path.name}" not in want:
                path.unlink()
    counts: dict[str, int] = {}
    for rel, text in want.items():
        path = root / rel
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        folder = rel.split("/", 1)[0]
        counts[folder] = counts.get(folder, 0) + 1
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline.rollout.manifests [--check]``."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.rollout.manifests",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when out of date")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = check()
            for problem in problems:
                print(problem, file=sys.stderr)
            if problems:
                print("manifests are out of date: run `make manifests`", file=sys.stderr)
                return 1
            print(f"manifests in sync ({len(RENDERS)} renderings)")
            return 0
        for folder, count in write().items():
            print(f"manifests/{folder}: {count} objects")
        return 0
    except HelmNotFound as exc:
        print(exc, file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(exc.stderr, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
