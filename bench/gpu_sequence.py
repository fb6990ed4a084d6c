"""The sequence recommender's GPU rows: its weights on the GPU in fp16 against its ONNX graph.

Run by ``python -m bench.gpu_ranker --sequence <bundle>/sequence`` on a machine with an NVIDIA GPU
and PyTorch (from the repository: it rebuilds the model with :class:`training.sequence.model.SASRec`
and the serving graph's masking and TopK, :class:`training.sequence.export.ServingGraph`). From the
bundle's ``sequence`` component it reads the weights (``weights.safetensors``), the manifest's
architecture and the ONNX graph Triton serves, then:

1. scores seeded shopper sessions (1 to ``L`` recent items, left-padded) with the graph on ONNX
   Runtime (CPU, fp32) and with the weights on the device (fp16 on a GPU, fp32 on a CPU): the
   largest absolute difference of the session vectors and of the next-item scores, and the share
   of the graph's top-10 next items the device also ranks in its top 10;
2. times one request (one session: what the transformer sends per recommendation) eagerly and as
   a CUDA-graph replay, p50 of ``--requests`` calls;
3. sessions per second at ``--batch`` sessions a call (a shop's worth of sessions at once).

Without CUDA it runs on the CPU in fp32 with small counts, so it can be tested anywhere.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import load_file

from bench.gpu_ranker import graph_replay, plan, time_requests
from shopserve.artifacts import MANIFEST, SEQUENCE_LENGTH, SEQUENCE_TOP_K, SEQUENCE_WEIGHTS_FILE
from training.sequence.export import ServingGraph
from training.sequence.model import SASRec

#: Sessions scored to compare the device with the graph.
CHECK_SESSIONS = 256
#: Next items compared (the transformer shows at most a page of them).
AGREEMENT_K = 10


def sessions(n: int, length: int, n_items: int, seed: int = 0) -> np.ndarray:
    """``n`` seeded sessions: 1 to ``length`` item indices in ``1..n_items``, left-padded with 0."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, length), dtype=np.int64)
    for row, size in enumerate(rng.integers(1, length + 1, size=n)):
        out[row, length - size:] = rng.integers(1, n_items + 1, size=size)
    return out


def load_graph(component: Path, device: torch.device, dtype: torch.dtype) -> tuple[ServingGraph,
                                                                                   dict[str, Any]]:
    """The serving graph (model, masking, TopK) rebuilt from the component's weights."""
    params = json.loads((component / MANIFEST).read_text())["params"]
    weights = component / SEQUENCE_WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: the component has no weights (packaged before they "
                                "were exported: rebuild the bundle)")
    model = SASRec(int(params["n_items"]), int(params[SEQUENCE_LENGTH]), dim=int(params["dim"]),
                   layers=int(params["layers"]), heads=int(params["heads"]), dropout=0.0)
    model.load_state_dict(load_file(str(weights)))
    graph = ServingGraph(model.eval(), int(params[SEQUENCE_TOP_K])).to(device=device)
    graph.model.to(dtype=dtype)
    return graph, params


def onnx_graph(component: Path) -> Path:
    """The ONNX graph Triton serves (``seq-recommender/<version>/model.onnx``)."""
    found = sorted(component.rglob("model.onnx"))
    if not found:
        raise FileNotFoundError(f"{component}: no model.onnx")
    return found[0]


def _run(graph: ServingGraph, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.inference_mode():
        return graph(batch)


def run(component: Path, *, device: str | None = None, requests: int | None = None,
        batch: int | None = None, batch_iters: int | None = None) -> dict[str, Any]:
    """Check and time the sequence model; the figures as a dict (see the module docstring)."""
    dev, dtype, requests, batch, batch_iters = plan(device, requests, batch, batch_iters,
                                                    cpu_requests=30, cpu_batch=64)
    on_gpu = dev.type == "cuda"
    graph, params = load_graph(component, dev, dtype)
    length, n_items = int(params[SEQUENCE_LENGTH]), int(params["n_items"])

    check = sessions(CHECK_SESSIONS, length, n_items)
    session = ort.InferenceSession(str(onnx_graph(component)), providers=["CPUExecutionProvider"])
    ref_items, ref_scores, ref_session = session.run(None, {session.get_inputs()[0].name: check})
    items, scores, vector = (t.float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy()
                             for t in _run(graph, torch.from_numpy(check).to(dev)))
    agreement = statistics.mean(
        len(set(a[:AGREEMENT_K].tolist()) & set(b[:AGREEMENT_K].tolist())) / AGREEMENT_K
        for a, b in zip(ref_items, items, strict=True))

    one = [[torch.from_numpy(check[i % CHECK_SESSIONS:i % CHECK_SESSIONS + 1]).to(dev)]
           for i in range(requests)]
    eager = time_requests(lambda req: _run(graph, req[0]), one, dev, warmup=min(20, requests))
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if on_gpu else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "sequence_length": length, "n_items": n_items, "layers": int(params["layers"]),
        "dim": int(params["dim"]), "top_k": int(params[SEQUENCE_TOP_K]),
        "max_abs_diff_session": float(np.abs(vector - ref_session).max()),
        "max_abs_diff_scores": float(np.abs(scores - ref_scores).max()),
        "top10_agreement": float(agreement),
        "request_p50_ms_eager": float(np.percentile(eager, 50)),
    }
    if on_gpu:
        replay = graph_replay(lambda seq: graph(seq), one[0])
        replayed = replay(one[1])
        with torch.inference_mode():
            direct = graph(one[1][0])
        result["graph_matches_eager"] = bool(torch.equal(replayed[0], direct[0]))
        result["request_p50_ms_graph"] = float(np.percentile(
            time_requests(replay, one, dev, warmup=min(20, requests)), 50))
    big = [[torch.from_numpy(sessions(batch, length, n_items, seed=1 + i)).to(dev)]
           for i in range(batch_iters)]
    times = time_requests(lambda req: _run(graph, req[0]), big, dev, warmup=1)
    result["batch"] = batch
    result["sessions_per_s"] = float(batch / (statistics.median(times) / 1e3))
    return result


def report(result: dict[str, Any]) -> str:
    """The sequence model's rows as a Markdown table."""
    graph = result.get("request_p50_ms_graph")
    rows = [
        ("model", f"SASRec L={result['sequence_length']}, d={result['dim']}, "
                  f"{result['layers']} layers, {result['n_items']} items, top {result['top_k']}"),
        ("device, precision", f"{result['device']}, {result['dtype']} (torch {result['torch']})"),
        ("max |session - ONNX fp32|", f"{result['max_abs_diff_session']:.4f}"),
        ("max |next scores - ONNX fp32|", f"{result['max_abs_diff_scores']:.4f}"),
        (f"top-{AGREEMENT_K} next items shared with ONNX", f"{result['top10_agreement']:.1%}"),
        ("p50 per request (1 session), eager", f"{result['request_p50_ms_eager']:.3f} ms"),
        ("p50 per request, CUDA-graph replay",
         f"{graph:.3f} ms" if graph is not None else "- (no CUDA)"),
        (f"sessions/s at batch {result['batch']}", f"{result['sessions_per_s']:,.0f}"),
    ]
    return "\n".join(["| sequence model | |", "| --- | --- |",
                      *(f"| {name} | {value} |" for name, value in rows)])
