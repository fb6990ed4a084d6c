"""Query embedding at request time: the ``query-encoder`` on the local Triton, fp32 against int8.

The semantic path embeds every search query before it can retrieve, so its cost is paid on every
request (goal: p50 <= 5 ms on the 2-core machine). The bundle's ``semantic`` component serves an
int8 query tower on the CPU when the build's recall guard passed it (``model.onnx``) and the fp32
graph on the GPU (``model-fp32.onnx``). This benchmark serves both on the CPU, side by side:

1. it writes a second ``semantic`` component whose CPU configuration serves the fp32 graph (the
   same files otherwise, manifest re-written with their checksums) into a temporary folder;
2. it starts the ranker launcher (``python -m predictors.ranker``: Triton with ``bert-ranker``
   and ``query-encoder``) once per precision, both at once on their own ports;
3. it sends the held-out queries one at a time, tokenised with the bundle's ``tokenizer.json`` as
   the transformer does, over v2 gRPC with ``tritonclient`` to each in turn (interleaved, so both
   see the same machine), ``--repeats`` times, and prints the median of the repeats' p50 and p99;
4. Triton's own statistics of those requests (mean queue and compute time, and the whole time
   in the server), which separate the server's share from the client's and the network's;
5. for reference, the same graphs in this process with ONNX Runtime (one thread, as Triton's CPU
   instance runs them): the compute alone, without Triton and gRPC;
6. beside each, the int8 guard's record from the manifest (Recall@50 on the held-out queries).

The transformer's own share of the semantic stage (tokenising, the FAISS search) is in
``make bench-stack``'s ``semantic`` columns.

Run: ``make bench-semantic`` or ``python -m bench.semantic [--bundle artifacts/demo]
[--queries 200] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
from tokenizers import Tokenizer

from pipeline.local import StackPorts
from pipeline.observe.harness import cpu_model
from pipeline.supervisor import Component, Stack
from predictors.ranker.encoder_repo import EncoderServing, encoder_profiles, write_encoder_repository
from predictors.ranker.triton_repo import GPU_MODEL_FILE, MODEL_FILE, VERSION
from shopserve.artifacts import (
    CATALOG_COMPONENT,
    MANIFEST,
    RANKER_COMPONENT,
    SEMANTIC_COMPONENT,
    SEMANTIC_TOKENIZER_FILE,
    load_component,
    write_manifest,
)
from shopserve.protocol import ATTENTION_MASK, INPUT_IDS, QUERY_EMBEDDING, QUERY_ENCODER_MODEL
from training.data.generator import Dataset, split_queries

GOAL_P50_MS = 5.0


def fp32_component(component: Path, out: Path) -> Path:
    """A copy of a ``semantic`` component whose CPU configuration serves the fp32 graph (the
    component as the build writes it when the int8 guard fails), its manifest re-written."""
    manifest = load_component(component, SEMANTIC_COMPONENT)
    graphs = component / QUERY_ENCODER_MODEL / VERSION
    fp32 = graphs / GPU_MODEL_FILE
    if not fp32.is_file():
        raise SystemExit(f"{component}: no {GPU_MODEL_FILE} (the bundle serves fp32 on the CPU "
                         "already: nothing to compare)")
    out.mkdir(parents=True)
    for name in manifest.files:
        if not name.startswith(f"{QUERY_ENCODER_MODEL}/"):
            shutil.copyfile(component / name, out / name)
    params = dict(manifest.params)
    serving = params.get("serving", {})
    config = EncoderServing.from_onnx(
        fp32, max_query_length=int(params["max_query_length"]), vocab_size=int(params["vocab_size"]),
        max_batch_size=int(serving.get("max_batch_size", 64)),
        instances=int(serving.get("instances", 1)), threads=int(serving.get("cpu_threads", 1)))
    write_encoder_repository(out, fp32, config)
    params["profiles"] = encoder_profiles("fp32")
    write_manifest(out, SEMANTIC_COMPONENT, manifest.version, data=manifest.data, params=params,
                   metrics=manifest.metrics, parent=manifest.parent)
    return out


def tokenised(component: Path, texts: list[str]) -> list[dict[str, np.ndarray]]:
    """The encoder's inputs for each query, as the transformer builds them."""
    tokenizer = Tokenizer.from_file(str(component / SEMANTIC_TOKENIZER_FILE))
    out = []
    for text in texts:
        ids = np.asarray([tokenizer.encode(text).ids], dtype=np.int64)
        out.append({INPUT_IDS: ids, ATTENTION_MASK: np.ones_like(ids)})
    return out


def triton_ms(client: grpcclient.InferenceServerClient, feeds: dict[str, np.ndarray]) -> float:
    """Milliseconds of one v2 gRPC inference."""
    inputs = []
    for name in (INPUT_IDS, ATTENTION_MASK):
        tensor = grpcclient.InferInput(name, list(feeds[name].shape), "INT64")
        tensor.set_data_from_numpy(feeds[name])
        inputs.append(tensor)
    start = time.perf_counter()
    result = client.infer(QUERY_ENCODER_MODEL, inputs,
                          outputs=[grpcclient.InferRequestedOutput(QUERY_EMBEDDING)])
    elapsed = (time.perf_counter() - start) * 1000.0
    if result.as_numpy(QUERY_EMBEDDING) is None:
        raise RuntimeError("no embedding in the answer")
    return elapsed


def server_side_ms(client: grpcclient.InferenceServerClient) -> dict[str, float]:
    """Triton's own account of the query encoder's requests so far (its statistics extension):
    mean milliseconds per request in the queue, in compute (input, inference, output) and in all
    (``success``: from the request's arrival to its response)."""
    stats = client.get_inference_statistics(QUERY_ENCODER_MODEL, as_json=True)
    inference = stats["model_stats"][0]["inference_stats"]

    def mean(key: str) -> float:
        entry = inference.get(key, {})
        count = int(entry.get("count", 0))
        return int(entry.get("ns", 0)) / count / 1e6 if count else float("nan")

    return {"queue": mean("queue"),
            "compute": mean("compute_input") + mean("compute_infer") + mean("compute_output"),
            "total": mean("success")}


def ort_ms(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> float:
    """Milliseconds of one in-process ONNX Runtime run."""
    start = time.perf_counter()
    session.run([QUERY_EMBEDDING], feeds)
    return (time.perf_counter() - start) * 1000.0


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def launcher(name: str, bundle: Path, semantic: Path, ports: StackPorts) -> Component:
    """The ranker launcher serving ``semantic``'s query encoder beside the bundle's ranker."""
    return Component(name, "predictors.ranker", ports.ranker_http, {
        "RANKER_BUNDLE": str(bundle / RANKER_COMPONENT),
        "RANKER_SEMANTIC_BUNDLE": str(semantic),
        "RANKER_SEQUENCE_BUNDLE": "",
        "RANKER_HTTP_PORT": str(ports.ranker_http),
        "RANKER_GRPC_PORT": str(ports.ranker_grpc),
        "RANKER_METRICS_PORT": str(ports.ranker_metrics),
    })


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/demo"))
    parser.add_argument("--queries", type=int, default=200, help="held-out queries per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/semantic.md"))
    args = parser.parse_args(argv)

    bundle = args.bundle.resolve()
    component = bundle / SEMANTIC_COMPONENT
    if not (component / MANIFEST).is_file():
        raise SystemExit(f"{bundle} has no semantic component: `make demo-bundle` first")
    manifest = load_component(component, SEMANTIC_COMPONENT)
    encoder = manifest.params.get("encoder", {})
    texts = held_out_texts(bundle, manifest.params.get("split", {}), args.queries)
    feeds = tokenised(component, texts)
    graphs = component / QUERY_ENCODER_MODEL / VERSION

    with tempfile.TemporaryDirectory(prefix="shopserve-bench-semantic-") as tmp:
        fp32_copy = fp32_component(component, Path(tmp) / SEMANTIC_COMPONENT)
        served = {"fp32": fp32_copy, "int8": component}
        ports = {name: StackPorts.free() for name in served}
        components = [launcher(f"ranker-{name}", bundle, folder, ports[name])
                      for name, folder in served.items()]
        sessions = {"fp32": _session(graphs / GPU_MODEL_FILE), "int8": _session(graphs / MODEL_FILE)}
        triton: dict[str, list[tuple[float, float]]] = {name: [] for name in served}
        local: dict[str, list[tuple[float, float]]] = {name: [] for name in served}
        with Stack(components, Path(tmp) / "logs") as stack:
            stack.start()
            clients = {name: grpcclient.InferenceServerClient(f"127.0.0.1:{ports[name].ranker_grpc}")
                       for name in served}
            for name in served:  # warm-up: first calls load kernels and fill caches
                for feed in feeds[:20]:
                    triton_ms(clients[name], feed)
                    ort_ms(sessions[name], feed)
            for _ in range(args.repeats):
                times = {name: ([], []) for name in served}
                for feed in feeds:  # interleaved: both precisions see the same moments
                    for name in served:
                        times[name][0].append(triton_ms(clients[name], feed))
                        times[name][1].append(ort_ms(sessions[name], feed))
                for name, (over_grpc, in_process) in times.items():
                    triton[name].append((_pct(over_grpc, 50), _pct(over_grpc, 99)))
                    local[name].append((_pct(in_process, 50), _pct(in_process, 99)))
            server = {name: server_side_ms(clients[name]) for name in served}

    lengths = [int(f[INPUT_IDS].shape[1]) for f in feeds]
    int8 = encoder.get("int8") or {}
    recall = {"fp32": int8.get("fp32_recall_at_50", manifest.metrics.get("semantic_recall_at_50")),
              "int8": int8.get("int8_recall_at_50")}
    lines = [
        f"CPU: {cpu_model()}",
        f"Bundle {bundle.name} (semantic {manifest.version}); {len(feeds)} held-out queries one at "
        f"a time, median {statistics.median(lengths):.0f} tokens (max {max(lengths)}); median of "
        f"{args.repeats} repeats; Triton: the ranker launcher's local tritonserver "
        f"(nvidia-pytriton), one CPU instance, 1 ONNX Runtime thread, beside bert-ranker; "
        f"in process: the same graph, ONNX Runtime, 1 thread",
        f"The bundle serves {encoder.get('cpu_precision', 'fp32')} on the CPU (int8 guard: "
        f"Recall@50 drop <= {int8.get('max_recall_drop', float('nan'))}, "
        f"{'passed' if int8.get('passes') else 'not passed'}). Goal: p50 <= {GOAL_P50_MS:.0f} ms.",
        "",
        "| query tower | Recall@50 (held out) | Triton gRPC p50 ms | Triton gRPC p99 ms | "
        "in Triton mean ms (queue / compute / all) | in process p50 ms | in process p99 ms | "
        "goal p50 <= 5 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in served:
        t50 = statistics.median(r[0] for r in triton[name])
        t99 = statistics.median(r[1] for r in triton[name])
        l50 = statistics.median(r[0] for r in local[name])
        l99 = statistics.median(r[1] for r in local[name])
        r = "n/a" if recall[name] is None else f"{recall[name]:.3f}"
        inside = server[name]
        lines.append(f"| {name} | {r} | {t50:.2f} | {t99:.2f} | {inside['queue']:.2f} / "
                     f"{inside['compute']:.2f} / {inside['total']:.2f} | {l50:.2f} | {l99:.2f} | "
                     f"{'met' if t50 <= GOAL_P50_MS else 'not met'} |")
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# `make bench-semantic`\n\n{text}\n")
    print(f"written to {args.out}", file=sys.stderr)


def held_out_texts(bundle: Path, split: dict, n: int) -> list[str]:
    """The first ``n`` held-out queries of the bundle's data set (all classes), by the split the
    semantic component was measured on."""
    dataset = Dataset.load(bundle / CATALOG_COMPONENT)
    _, test_ids = split_queries(dataset, split.get("eval_fraction", 0.2), split.get("seed", 0))
    rows = dataset.queries.query_id.searchsorted(test_ids[:n])
    return [str(t) for t in dataset.queries.text[rows]]


if __name__ == "__main__":
    main()
