"""What each serving process of the local stack costs: resident memory, start-to-ready time, and
whether it maps libtorch.

Starts the stack of ``make up`` on a bundle (search transformer, recall predictor, the ranker's
launcher and the Triton server it starts, with Triton's Python-backend model process), waits until
every component is ready, then reads ``/proc`` for each process. Repeats and prints medians.

``--code-root DIR`` runs the components from another checkout (for example a ``git worktree`` of an
older commit), so old and new code are measured side by side on the same bundle in one run:

    python -m bench.footprint --bundle artifacts/demo --code-root /tmp/before --label before
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
from pathlib import Path

import psutil

from pipeline.local import DEFAULT_BUNDLE, StackPorts, stack_components
from pipeline.supervisor import Stack

#: Processes of the stack, by how we find them: (row label, component, executable name or None
#: for the component's own process).
PROCESSES = (
    ("search (transformers_pre)", "search", None),
    ("recall (predictors.recall)", "recall", None),
    ("ranker launcher (predictors.ranker)", "ranker", None),
    ("tritonserver", "ranker", "tritonserver"),
    ("Triton Python-backend model (stub)", "ranker", "triton_python_backend_stub"),
)


def cpu_model() -> str:
    """The CPU's model name and its vector flags (AVX2, AVX-512, AVX-512 VNNI)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("model name")), platform.processor() or "unknown")
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    present = set(flags.split())
    vector = ", ".join(f"{label} {'yes' if flag in present else 'no'}" for label, flag in
                       (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AVX-512 VNNI", "avx512_vnni")))
    return f"{name}; {psutil.cpu_count()} CPUs; {vector}"


def libtorch_maps(pid: int) -> int:
    """Lines of the process's memory map that belong to libtorch (0: torch is not loaded)."""
    try:
        return sum("libtorch" in line for line in Path(f"/proc/{pid}/maps").read_text().splitlines())
    except OSError:
        return -1


def find(stack: Stack, component: str, exe: str | None) -> psutil.Process | None:
    """The component's own process, or its descendant whose executable is named ``exe``."""
    root = psutil.Process(stack.processes[component].pid)
    if exe is None:
        return root
    for child in root.children(recursive=True):
        try:
            if child.name() == exe or Path(child.exe()).name == exe:
                return child
        except psutil.Error:
            continue
    return None


def measure_once(bundle: Path, log_dir: Path, code_root: Path | None) -> dict[str, dict[str, float]]:
    """Start the stack once; per process row: RSS MB, ready seconds, libtorch map lines."""
    extra = {"PYTHONSAFEPATH": "1", "PYTHONPATH": str(code_root)} if code_root else {}
    components = [dataclasses.replace(c, env={**c.env, **extra})
                  for c in stack_components(bundle, StackPorts.free())]
    rows: dict[str, dict[str, float]] = {}
    with Stack(components, log_dir) as stack:
        ready = stack.start()
        for label, component, exe in PROCESSES:
            proc = find(stack, component, exe)
            if proc is None:
                continue
            rows[label] = {"rss_mb": proc.memory_info().rss / 2**20,
                           "ready_s": ready[component], "libtorch": libtorch_maps(proc.pid)}
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--code-root", type=Path, default=None,
                        help="run the components from this checkout instead of this one")
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    runs = [measure_once(args.bundle.resolve(), args.bundle.resolve().parent / "logs-footprint",
                         args.code_root.resolve() if args.code_root else None)
            for _ in range(args.repeats)]
    print(f"CPU: {cpu_model()}")
    print(f"code: {args.label}; bundle {args.bundle}; medians of {args.repeats} starts\n")
    print("| process | RSS MB | start to ready s | libtorch mapped |")
    print("| --- | ---: | ---: | --- |")
    for label, _, _ in PROCESSES:
        seen = [run[label] for run in runs if label in run]
        if not seen:
            print(f"| {label} | - | - | (no such process) |")
            continue
        rss = statistics.median(r["rss_mb"] for r in seen)
        ready = statistics.median(r["ready_s"] for r in seen)
        maps = max(int(r["libtorch"]) for r in seen)
        print(f"| {label} | {rss:.0f} | {ready:.1f} | {'yes (' + str(maps) + ')' if maps else 'no'} |")


if __name__ == "__main__":
    main()
