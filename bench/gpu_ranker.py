"""The packaged ranker on a GPU in plain PyTorch: its scores checked, its speed measured.

Two uses:

* **On the GPU machine** (needs only PyTorch and numpy; ``transformers`` and ``safetensors`` are
  used when present), in a folder made by ``--pack``::

      python gpu_ranker.py                  # or: python gpu_ranker.py --dir FOLDER

  It loads the packaged ranker's fp16 weights (``model.safetensors`` with its ``BertConfig`` JSON,
  ``config.json``), scores the build's evaluation pairs (``eval_pairs.npz``: pre-tokenised, so no
  tokenizer is needed) and checks them against the scores the CPU ONNX graphs gave the same pairs
  at package time: the largest absolute difference from the fp32 graph the weights came from, and
  NDCG@10 (exponential gain ``2**grade - 1``, log2 discount, ties by list position, as the build
  computes it) of this run, the fp32 graph and the graph the CPU profile serves (int8 when
  quantised). Then it times one 50-pair request (p50, inputs already on the device) eagerly and
  as a CUDA-graph replay (``torch.cuda.CUDAGraph``), and pairs/s at batch 1024, in fp16. It prints
  the CPU model, the GPU name and the torch version with the table, and exits 1 when the scores
  differ by more than ``--tolerance``.

  Without CUDA it runs on the CPU in fp32 with smaller counts (no CUDA-graph row): that is how
  the tests run it.

* **The sequence recommender's rows**, from the repository on the GPU machine (it rebuilds SASRec
  from the bundle's ``sequence/weights.safetensors`` with the project's model code,
  :mod:`bench.gpu_sequence`)::

      python -m bench.gpu_ranker --sequence artifacts/demo/sequence

  checks the fp16 session vectors and next items against the ONNX graph Triton serves and prints
  p50 per one-session request, eager and as a CUDA-graph replay, and sessions/s at batch 1024.

* **In the project**, to make that folder from a bundle::

      python -m bench.gpu_ranker --pack OUTDIR --bundle artifacts/demo

  copies the ranker component's ``fp16/`` export (checksums verified against its manifest) and
  this script into ``OUTDIR``, nothing else, and prints its size (it must stay under 64 MiB). A
  bundle packaged before the export existed gets one made from its own fp32 graph and catalog
  (the same code the package step runs, :mod:`training.ranker.fp16`); the bundle is not changed.

The model is rebuilt in plain PyTorch by default (:class:`PlainBert`, the Hugging Face parameter
names, ``scaled_dot_product_attention``: nothing data-dependent, so it captures into a CUDA graph);
``--impl transformers`` rebuilds it as ``BertForSequenceClassification`` instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# The export's file names; training.ranker.fp16 writes them (a test checks that both agree).
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
EVAL_FILE = "eval_pairs.npz"
SCORE_FP32 = "score_onnx_fp32"
SCORE_CPU = "score_onnx_cpu"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: The pack folder's size limit.
MAX_PACK_MIB = 64.0
#: A request of the search transformer: one query's candidates.
REQUEST_PAIRS = 50
NDCG_K = 10


# ------------------------------------------------------------------------------------ the model


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)


class _DenseNorm(nn.Module):
    def __init__(self, inner: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(inner, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)  # noqa: N815 (the Hugging Face name)


class _Attention(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.self = _SelfAttention(hidden)
        self.output = _DenseNorm(hidden, hidden, eps)


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, inner)


class _Layer(nn.Module):
    def __init__(self, hidden: int, inner: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.attention = _Attention(hidden, eps)
        self.intermediate = _Intermediate(hidden, inner)
        self.output = _DenseNorm(inner, hidden, eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, hidden = x.shape
        attn = self.attention.self

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, length, self.heads, hidden // self.heads).transpose(1, 2)

        context = F.scaled_dot_product_attention(split(attn.query(x)), split(attn.key(x)),
                                                 split(attn.value(x)), attn_mask=mask)
        context = context.transpose(1, 2).reshape(b, length, hidden)
        out = self.attention.output
        x = out.LayerNorm(x + out.dense(context))
        # Exact (erf) GELU, as BERT and the exported graph's BiasGelu compute it.
        h = F.gelu(self.intermediate.dense(x))
        return self.output.LayerNorm(x + self.output.dense(h))


class _Embeddings(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        hidden = config["hidden_size"]
        self.word_embeddings = nn.Embedding(config["vocab_size"], hidden)
        self.position_embeddings = nn.Embedding(config["max_position_embeddings"], hidden)
        self.token_type_embeddings = nn.Embedding(config["type_vocab_size"], hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=config["layer_norm_eps"])  # noqa: N815


class _Encoder(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            _Layer(config["hidden_size"], config["intermediate_size"],
                   config["num_attention_heads"], config["layer_norm_eps"])
            for _ in range(config["num_hidden_layers"])
        )


class _Pooler(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)


class _Bert(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)
        self.pooler = _Pooler(config["hidden_size"])


class PlainBert(nn.Module):
    """BERT with a one-logit head in plain PyTorch, with ``BertForSequenceClassification``'s
    parameter names, so the exported state dict loads as is.

    Args:
        config: The ``BertConfig`` JSON of the export (``hidden_act`` must be ``gelu``).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"hidden_act {config['hidden_act']!r}: only gelu is implemented")
        self.bert = _Bert(config)
        self.classifier = nn.Linear(config["hidden_size"], config.get("num_labels", 1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        """Scores ``[B]`` of ``[B, L]`` pairs (int64 ids, 0/1 mask, 0/1 segments)."""
        emb = self.bert.embeddings
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = emb.LayerNorm(emb.word_embeddings(input_ids) + emb.position_embeddings(positions)
                          + emb.token_type_embeddings(token_type_ids))  # fmt: skip
        mask = attention_mask[:, None, None, :].bool()  # True: attend
        for layer in self.bert.encoder.layer:
            x = layer(x, mask)
        pooled = torch.tanh(self.bert.pooler.dense(x[:, 0]))
        return self.classifier(pooled)[:, 0]


class _TransformersBert(nn.Module):
    """``transformers``' ``BertForSequenceClassification`` behind :class:`PlainBert`'s call."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        known = {k: v for k, v in config.items() if k not in ("torch_dtype", "dtype")}
        self.model = BertForSequenceClassification(BertConfig.from_dict(known))

    def load_state_dict(self, state: Any, strict: bool = True, assign: bool = False) -> Any:
        return self.model.load_state_dict(state, strict=strict, assign=assign)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).logits[:, 0]


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as numpy arrays (``safetensors`` when installed, else
    the format read directly: an 8-byte header length, a JSON header, the raw little-endian data).
    """
    try:
        from safetensors.numpy import load_file
    except ImportError:
        pass
    else:
        return load_file(str(path))
    dtypes = {"F16": np.float16, "F32": np.float32, "BF16": None, "I64": np.int64, "I32": np.int32}
    raw = Path(path).read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = dtypes.get(entry["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: dtype {entry['dtype']} not supported without safetensors")
        start, end = entry["data_offsets"]
        data = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"), count=(end - start)
                             // np.dtype(dtype).itemsize, offset=8 + size + start)  # fmt: skip
        out[name] = data.reshape(entry["shape"])
    return out


def load_model(folder: Path, device: torch.device, dtype: torch.dtype, impl: str = "plain") -> nn.Module:
    """The exported ranker in ``folder`` on ``device`` in ``dtype``, in eval mode.

    Args:
        folder: Holds :data:`WEIGHTS_FILE` and :data:`CONFIG_FILE`.
        device: Where to run.
        dtype: ``torch.float16`` (GPU) or ``torch.float32``.
        impl: ``plain`` (:class:`PlainBert`) or ``transformers``.
    """
    config = json.loads((Path(folder) / CONFIG_FILE).read_text())
    model: nn.Module = PlainBert(config) if impl == "plain" else _TransformersBert(config)
    state = {k: torch.from_numpy(np.array(v, dtype=np.float32))
             for k, v in read_safetensors(Path(folder) / WEIGHTS_FILE).items()}  # fmt: skip
    result = model.load_state_dict(state, strict=False)
    # Buffers such as position_ids are not weights; every parameter must load.
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise ValueError(f"weights do not fit the model: missing {missing[:5]}, "
                         f"unexpected {list(result.unexpected_keys)[:5]}")
    return model.to(device=device, dtype=dtype).eval()


# ------------------------------------------------------------------------------------ checks


def ndcg_at_k(scores: np.ndarray, grades: np.ndarray, offsets: np.ndarray, k: int = NDCG_K) -> float:
    """Mean NDCG@k over the lists (exponential gain ``2**grade - 1``, log2 discount, ties by list
    position); lists without a positive grade are left out."""
    values = []
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
        gains = 2.0 ** grades[start:end].astype(np.float64) - 1.0
        ideal = np.sort(gains)[::-1][:k]
        if not ideal.sum() > 0:
            continue
        ranked = gains[np.argsort(-scores[start:end].astype(np.float64), kind="stable")][:k]
        dcg = (ranked * discounts[: len(ranked)]).sum()
        values.append(float(dcg / (ideal * discounts[: len(ideal)]).sum()))
    return float(np.mean(values)) if values else math.nan


def score_all(model: nn.Module, pairs: dict[str, np.ndarray], device: torch.device,
              batch: int = 512) -> np.ndarray:
    """The model's scores of every pair, fp32 ``[N]``."""
    out = []
    with torch.inference_mode():
        for start in range(0, pairs[INPUTS[0]].shape[0], batch):
            feeds = [torch.from_numpy(pairs[n][start:start + batch].astype(np.int64)).to(device)
                     for n in INPUTS]  # fmt: skip
            out.append(model(*feeds).float().cpu().numpy())
    return np.concatenate(out)


# ------------------------------------------------------------------------------------ timing


def plan(device: str | None, requests: int | None, batch: int | None, batch_iters: int | None,
         *, cpu_requests: int, cpu_batch: int) -> tuple[torch.device, torch.dtype, int, int, int]:
    """The device (CUDA when present), its precision (fp16 on a GPU, fp32 on a CPU) and the
    counts: the ones given, else 500 requests and 50 batches of 1024 on a GPU, the CPU's small
    ones there (3 batches)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = dev.type == "cuda"
    return (dev, torch.float16 if gpu else torch.float32,
            requests or (500 if gpu else cpu_requests), batch or (1024 if gpu else cpu_batch),
            batch_iters or (50 if gpu else 3))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _requests(pairs: dict[str, np.ndarray], size: int, count: int,
              device: torch.device) -> list[list[torch.Tensor]]:
    """``count`` requests of ``size`` consecutive evaluation pairs (wrapping around), on the device."""
    n = pairs[INPUTS[0]].shape[0]
    out = []
    for i in range(count):
        rows = (np.arange(size) + i * size) % n
        out.append([torch.from_numpy(pairs[name][rows].astype(np.int64)).to(device) for name in INPUTS])
    return out


def time_requests(call: Callable[[list[torch.Tensor]], Any], requests: list[list[torch.Tensor]],
                  device: torch.device, warmup: int) -> list[float]:
    """Milliseconds of each call, after ``warmup`` untimed calls."""
    for req in requests[:warmup]:
        call(req)
    _sync(device)
    times = []
    for req in requests:
        start = time.perf_counter()
        call(req)
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def graph_replay(model: nn.Module,
                 example: list[torch.Tensor]) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """A request function that copies its inputs into static tensors and replays a CUDA graph of
    the model captured on ``example``'s shapes."""
    static = [t.clone() for t in example]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):  # warm-up on a side stream, as torch.cuda.graphs asks
            model(*static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        out = model(*static)

    def replay(req: list[torch.Tensor]) -> torch.Tensor:
        for dst, src in zip(static, req, strict=True):
            dst.copy_(src)
        graph.replay()
        return out

    return replay


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(folder: Path, *, device: str | None = None, impl: str = "plain", requests: int | None = None,
        batch: int | None = None, batch_iters: int | None = None, warmup: int = 10) -> dict[str, Any]:
    """Check the exported ranker in ``folder`` against the CPU graphs and time it.

    Args:
        folder: A pack folder (or a ranker component's ``fp16/``).
        device: ``cuda``, ``cpu``, ... (default: CUDA when available).
        impl: ``plain`` or ``transformers``.
        requests: Timed 50-pair requests (default 500 on a GPU, 20 on the CPU).
        batch: Pairs per large batch (default 1024 on a GPU, 128 on the CPU).
        batch_iters: Timed large batches (default 50 on a GPU, 3 on the CPU).
        warmup: Untimed requests first.

    Returns:
        The environment, the checks and the timings (``None`` where not measured).
    """
    dev, dtype, requests, batch, batch_iters = plan(device, requests, batch, batch_iters,
                                                    cpu_requests=20, cpu_batch=128)
    gpu = dev.type == "cuda"
    folder = Path(folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    with np.load(folder / EVAL_FILE, allow_pickle=False) as data:
        pairs = {name: data[name] for name in data.files}
    model = load_model(folder, dev, dtype, impl)

    scores = score_all(model, pairs, dev)
    grades, offsets = pairs["grades"], pairs["offsets"]
    result: dict[str, Any] = {
        "cpu": cpu_model(),
        "gpu": torch.cuda.get_device_name(dev) if gpu else None,
        "torch": torch.__version__,
        "device": str(dev),
        "dtype": str(dtype).replace("torch.", ""),
        "impl": impl,
        "layers": config["num_hidden_layers"],
        "hidden_size": config["hidden_size"],
        "heads": config["num_attention_heads"],
        "sequence_length": int(pairs[INPUTS[0]].shape[1]),
        "pairs": int(scores.shape[0]),
        "lists": int(offsets.shape[0] - 1),
        "max_abs_diff": float(np.abs(scores - pairs[SCORE_FP32]).max()),
        "ndcg_at_10": ndcg_at_k(scores, grades, offsets),
        "ndcg_at_10_onnx_fp32": ndcg_at_k(pairs[SCORE_FP32], grades, offsets),
        "ndcg_at_10_onnx_cpu": ndcg_at_k(pairs[SCORE_CPU], grades, offsets),
    }

    reqs = _requests(pairs, REQUEST_PAIRS, requests + warmup, dev)
    with torch.inference_mode():
        eager = time_requests(lambda r: model(*r), reqs, dev, warmup)
    result["eager_ms_p50"] = statistics.median(eager)
    result["graph_ms_p50"] = None
    if gpu:
        replay = graph_replay(model, reqs[0])
        result["graph_ms_p50"] = statistics.median(time_requests(replay, reqs, dev, warmup))
        # The graph's scores must be the eager ones: replay is only faster, never different.
        with torch.inference_mode():
            same = torch.allclose(replay(reqs[1]).float(), model(*reqs[1]).float(), atol=1e-3)
        result["graph_matches_eager"] = bool(same)
    big = _requests(pairs, batch, batch_iters + 2, dev)
    with torch.inference_mode():
        times = time_requests(lambda r: model(*r), big, dev, 2)
    result["batch"] = batch
    result["pairs_per_s"] = batch * len(times) / (sum(times) / 1e3)
    return result


def report(result: dict[str, Any], tolerance: float) -> str:
    """The result as the lines and markdown table the script prints."""
    def ms(value: float | None) -> str:
        return "n/a (no CUDA)" if value is None else f"{value:.3f}"

    lines = [
        f"CPU: {result['cpu']}",
        f"GPU: {result['gpu'] or 'none'}",
        f"torch {result['torch']}, device {result['device']}, {result['dtype']}, impl {result['impl']}",
        f"model: {result['layers']} layers, hidden {result['hidden_size']}, {result['heads']} heads, "
        f"sequence {result['sequence_length']}; {result['pairs']} evaluation pairs in "
        f"{result['lists']} lists",
        "",
        "| measure | value |",
        "|---|---|",
        f"| max abs score difference vs ONNX fp32 (CPU) | {result['max_abs_diff']:.4f} |",
        f"| NDCG@10 {result['dtype']} (this run) | {result['ndcg_at_10']:.4f} |",
        f"| NDCG@10 ONNX fp32 (CPU) | {result['ndcg_at_10_onnx_fp32']:.4f} |",
        f"| NDCG@10 ONNX CPU profile graph | {result['ndcg_at_10_onnx_cpu']:.4f} |",
        f"| p50 ms per {REQUEST_PAIRS}-pair request, eager | {ms(result['eager_ms_p50'])} |",
        f"| p50 ms per {REQUEST_PAIRS}-pair request, CUDA-graph replay | {ms(result['graph_ms_p50'])} |",
        f"| pairs/s at batch {result['batch']} | {result['pairs_per_s']:,.0f} |",
    ]
    ok = result["max_abs_diff"] <= tolerance and result.get("graph_matches_eager", True)
    lines += ["", f"scores {'match' if ok else 'DO NOT match'} the CPU graph within {tolerance:g}"
              + ("" if result.get("graph_matches_eager", True) else "; graph replay differs from eager")]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ packing


def _folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 2**20


def pack(out: Path, bundle: Path, threads: int = 2) -> float:
    """Write the GPU folder: the ranker's fp16 export, its evaluation pairs and this script.

    Args:
        out: The folder to write (created; files of the same names replaced).
        bundle: A bundle folder (``<bundle>/ranker`` is read, never written).
        threads: ONNX Runtime threads when the export must be made from the bundle's graphs.

    Returns:
        The folder's size in MiB.

    Raises:
        ValueError: the folder would not fit in :data:`MAX_PACK_MIB`, or the bundle's files do
            not match its manifest.
    """
    # The project is needed only here: the packed script runs without it.
    from shopserve.artifacts import RANKER_COMPONENT, check_files, read_manifest
    from training.ranker import fp16

    assert (fp16.WEIGHTS_FILE, fp16.CONFIG_FILE, fp16.EVAL_FILE, fp16.SCORE_FP32, fp16.SCORE_CPU) == (
        WEIGHTS_FILE, CONFIG_FILE, EVAL_FILE, SCORE_FP32, SCORE_CPU), "export names changed"
    ranker = Path(bundle) / RANKER_COMPONENT
    manifest = read_manifest(ranker)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = (WEIGHTS_FILE, CONFIG_FILE, EVAL_FILE)
    listed = {f"{fp16.FP16_DIR}/{name}" for name in names}
    if listed <= set(manifest.files):
        bad = check_files(ranker, {k: v for k, v in manifest.files.items() if k in listed})
        if bad:
            raise ValueError(f"{ranker}: files do not match the manifest: {bad}")
        for name in names:
            shutil.copyfile(ranker / fp16.FP16_DIR / name, out / name)
        print(f"copied {ranker / fp16.FP16_DIR} (bundle {manifest.version})")
    else:
        _export_from_bundle(Path(bundle), manifest, out, threads)
    shutil.copyfile(Path(__file__), out / Path(__file__).name)
    size = _folder_mib(out)
    print(f"{out}: {size:.1f} MiB ({', '.join(sorted(p.name for p in out.iterdir()))})")
    if size >= MAX_PACK_MIB:
        raise ValueError(f"{out} is {size:.1f} MiB, over the {MAX_PACK_MIB:g} MiB limit")
    return size


def _export_from_bundle(bundle: Path, manifest: Any, out: Path, threads: int) -> None:
    """The export for a bundle packaged without one: weights from its fp32 graph, evaluation
    lists rebuilt from its catalog with the build's own parameters."""
    from dataclasses import fields

    from shopserve.artifacts import CATALOG_COMPONENT, MAX_SEQUENCE_LENGTH, RANKER_COMPONENT
    from training.data.generator import Dataset
    from training.ranker import fp16
    from training.ranker.build import RankerBuildConfig, prepare_data

    ranker = bundle / RANKER_COMPONENT
    params = manifest.params
    build = params.get("build") or {}
    simple = {f.name for f in fields(RankerBuildConfig)} - {"train", "distill", "triton"}
    config = RankerBuildConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                                  for k, v in build.items() if k in simple})  # fmt: skip
    prepared = prepare_data(Dataset.load(bundle / CATALOG_COMPONENT), config)
    max_length = int(params[MAX_SEQUENCE_LENGTH])
    if prepared.max_length != max_length or len(prepared.eval_lists) != manifest.data.get("eval_queries"):
        raise ValueError(f"{bundle}: the rebuilt evaluation data differs from the build's "
                         f"(max length {prepared.max_length} vs {max_length}, "
                         f"{len(prepared.eval_lists)} lists vs {manifest.data.get('eval_queries')})")
    profiles = params["profiles"]
    print(f"{ranker}: no fp16 export in the manifest; exporting from {profiles['gpu']['model']}")
    fp16.package_fp16(out, fp32_graph=ranker / profiles["gpu"]["model"],
                      cpu_graph=ranker / profiles["cpu"]["model"], max_length=max_length,
                      eval_lists=prepared.eval_lists, tokenizer=prepared.tokenizer, threads=threads,
                      source=profiles["gpu"]["model"])  # fmt: skip


# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    """Run the check and timings (default) or ``--pack`` a folder; the exit status says how."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent,
                        help="folder with the export (default: this script's)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: CUDA if present)")
    parser.add_argument("--impl", choices=("plain", "transformers"), default="plain")
    parser.add_argument("--requests", type=int, default=None, help="timed 50-pair requests")
    parser.add_argument("--batch", type=int, default=None, help="pairs per large batch")
    parser.add_argument("--batch-iters", type=int, default=None, help="timed large batches")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="largest absolute score difference accepted (default 0.05)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("--pack", type=Path, default=None, metavar="OUTDIR",
                        help="write the GPU folder from --bundle instead (needs the project)")
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/demo"))
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--sequence", type=Path, default=None, metavar="COMPONENT",
                        help="the sequence model's rows instead, from a bundle's sequence "
                             "component (run from the repository: bench.gpu_sequence)")
    args = parser.parse_args(argv)
    if args.pack is not None:
        pack(args.pack, args.bundle, args.threads)
        return 0
    if args.sequence is not None:
        # Imported here: the packed script runs without the project; these rows need it.
        from bench import gpu_sequence

        print(f"CPU: {cpu_model()}")
        rows = gpu_sequence.run(args.sequence, device=args.device, requests=args.requests,
                                batch=args.batch, batch_iters=args.batch_iters)
        print(gpu_sequence.report(rows))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
        # fp16 session vectors against the fp32 graph; a CUDA graph that replays what eager does.
        ok = rows["max_abs_diff_session"] <= (args.tolerance or 0.05) and rows.get(
            "graph_matches_eager", True)
        return 0 if ok else 1
    result = run(args.dir, device=args.device, impl=args.impl, requests=args.requests,
                 batch=args.batch, batch_iters=args.batch_iters)
    # The fp16 weights against the fp32 graph: about 0.01 on the demo ranker in fp32 on the CPU
    # (weights rounded), 0.014 in fp16 on an H200 (activations too).
    tolerance = args.tolerance if args.tolerance is not None else 0.05
    print(report(result, tolerance))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    ok = result["max_abs_diff"] <= tolerance and result.get("graph_matches_eager", True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
