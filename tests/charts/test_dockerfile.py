"""The Dockerfile, checked by reading it: no Docker engine runs here to build it.

Checks: stages and base image, non-root numeric user equal to the chart's, CPU torch with the
pyproject pin, the install step installs this project (every package of pyproject.toml copied, then
``pip install .``), nothing secret, no compilers in the final stage, a .dockerignore, and the
entrypoints the chart runs (``python -m <module>``) import.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass

import yaml

from pipeline.rollout.manifests import CHART, ROOT, Render
from tests.charts.conftest import Obj, by_kind

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@dataclass
class Instruction:
    stage: str
    op: str
    args: str


def instructions() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, each tagged with its stage."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    out: list[Instruction] = []
    stage = ""
    for line in joined.splitlines():
        if not line.strip():
            continue
        op, _, args = line.strip().partition(" ")
        if op.upper() == "FROM":
            stage = args.split(" AS ")[-1].strip() if " AS " in args else args
        out.append(Instruction(stage, op.upper(), args.strip()))
    return out


def stage(name: str) -> list[Instruction]:
    return [i for i in instructions() if i.stage == name]


def test_multi_stage_on_python_311_slim() -> None:
    ins = instructions()
    froms = [i.args for i in ins if i.op == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]
    arg = next(i.args for i in ins if i.op == "ARG" and i.args.startswith("PYTHON_IMAGE="))
    assert arg.split("=", 1)[1].startswith("python:3.11-slim")
    assert PYPROJECT["project"]["requires-python"].startswith(">=3.11")


def test_final_stage_runs_as_the_charts_non_root_user() -> None:
    users = [i.args for i in stage("runtime") if i.op == "USER"]
    assert len(users) == 1
    uid, _, gid = users[0].partition(":")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert int(uid) == values["podSecurityContext"]["runAsUser"] > 0
    assert int(gid) == values["podSecurityContext"]["runAsGroup"] > 0
    # USER comes after every RUN: nothing later runs as root.
    runtime = stage("runtime")
    assert max(n for n, i in enumerate(runtime) if i.op == "RUN") < next(
        n for n, i in enumerate(runtime) if i.op == "USER")


def test_cpu_torch_with_the_pyproject_pin() -> None:
    torch_pin = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch"))
    runs = " ".join(i.args for i in stage("build") if i.op == "RUN")
    assert f"pip install {torch_pin} --index-url https://download.pytorch.org/whl/cpu" in runs


def test_installs_this_project() -> None:
    build = stage("build")
    copied = {i.args.split()[0] for i in build if i.op == "COPY"}
    assert "pyproject.toml" in copied
    roots = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert roots <= copied, f"packages not copied: {roots - copied}"
    readme = PYPROJECT["project"].get("readme")
    assert readme is None or readme in " ".join(i.args for i in build if i.op == "COPY")
    runs = [i.args for i in build if i.op == "RUN"]
    assert any(re.search(r"pip install \.(\s|$)", r) for r in runs), "no `pip install .`"
    assert not any("-e ." in r or "--editable" in r for r in runs)


def test_final_stage_has_no_compilers_caches_or_secrets() -> None:
    runtime = stage("runtime")
    text = " ".join(i.args for i in runtime)
    for word in ("build-essential", "gcc", "g++", "pip install"):
        assert word not in text, word
    copies = [i.args for i in runtime if i.op == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"]
    assert "PIP_NO_CACHE_DIR=1" in " ".join(i.args for i in stage("build") if i.op == "ENV")
    assert all("rm -rf /var/lib/apt/lists/*" in i.args for i in instructions()
               if i.op == "RUN" and "apt-get install" in i.args)
    secret = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY|PRIVATE)", re.IGNORECASE)
    for i in instructions():
        if i.op in ("ENV", "ARG", "LABEL"):
            assert not secret.search(i.args), i.args
        assert "--mount=type=secret" not in i.args


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".tools", "artifacts", "tests", "**/*.onnx"} <= ignored
    copied = {i.args.split()[0] for i in instructions() if i.op == "COPY" and "--from" not in i.args}
    assert not copied & ignored, "the Dockerfile copies an ignored path"


def chart_entrypoints(rendered: dict[Render, list[Obj]]) -> set[str]:
    """Modules the chart runs with ``python -m``, in every environment and mode."""
    modules = set()
    for objects in rendered.values():
        for isvc in by_kind(objects, "InferenceService"):
            specs = [isvc["spec"].get("transformer"), isvc["spec"]["predictor"]]
            for spec in filter(None, specs):
                for container in spec.get("containers", []):
                    command = container["command"]
                    assert command[:2] == ["python", "-m"], command
                    modules.add(command[2])
    return modules


def test_entrypoints_import(rendered: dict[Render, list[Obj]]) -> None:
    """Every module the chart or the image's CMD runs has a ``__main__`` that imports.

    One child process per module, as in the pods: each component runs alone (and kserve must not
    meet tritonclient.grpc in one process, DESIGN.md, which other tests may have imported).
    """
    modules = chart_entrypoints(rendered)
    assert modules == {"transformers_pre", "predictors.recall"}
    entry = next(i.args for i in instructions() if i.op == "ENTRYPOINT")
    cmd = next(i.args for i in instructions() if i.op == "CMD")
    assert entry == '["python", "-m"]'
    modules.add(yaml.safe_load(cmd)[0])
    children = {
        module: subprocess.Popen(
            [sys.executable, "-c", f"import importlib; importlib.import_module({module + '.__main__'!r})"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for module in sorted(modules)
    }
    for module, child in children.items():
        _, stderr = child.communicate(timeout=120)
        assert child.returncode == 0, f"python -m {module} does not import:\n{stderr[-3000:]}"


def test_image_ports_match_the_chart() -> None:
    exposed = {int(p) for i in instructions() if i.op == "EXPOSE" for p in i.args.split()}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    ports = {*values["search"]["containerPorts"].values(), *values["recall"]["containerPorts"].values()}
    assert exposed == ports
