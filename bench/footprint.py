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
import statistics
from pathlib import Path

from pipeline.local import DEFAULT_BUNDLE, StackPorts, stack_components
from pipeline.observe.harness import PROCESSES, cpu_model, find_process
from pipeline.supervisor import Stack


def libtorch_maps(pid: int) -> int:
    """Lines of the process's memory map that belong to libtorch (0: torch is not loaded)."""
    try:
        return sum("libtorch" in line for line in Path(f"/proc/{pid}/maps").read_text().splitlines())
    except OSError:
        return -1


def measure_once(bundle: Path, log_dir: Path, code_root: Path | None) -> dict[str, dict[str, float]]:
    """Start the stack once; per process row: RSS MB, ready seconds, libtorch map lines."""
    extra = {"PYTHONSAFEPATH": "1", "PYTHONPATH": str(code_root)} if code_root else {}
    components = [dataclasses.replace(c, env={**c.env, **extra})
                  for c in stack_components(bundle, StackPorts.free())]
    rows: dict[str, dict[str, float]] = {}
    with Stack(components, log_dir) as stack:
        ready = stack.start()
        for label, component, exe, model in PROCESSES:
            proc = find_process(stack, component, exe, model)
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
    for label, *_ in PROCESSES:
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
