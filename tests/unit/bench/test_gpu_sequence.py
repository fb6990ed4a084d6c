"""The sequence model's GPU rows, run on the CPU: the packaged weights rebuild the serving graph,
which agrees with the ONNX graph Triton serves, and the rows print."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bench import gpu_ranker, gpu_sequence
from pipeline.lifecycle.layout import RESULT_FILE
from pipeline.lifecycle.sequence import ONNX_FILE, package_sequence
from shopserve.artifacts import (
    SEQUENCE_COMPONENT,
    SEQUENCE_EMBEDDINGS_FILE,
    SEQUENCE_ITEM_IDS_FILE,
    SEQUENCE_LENGTH,
    SEQUENCE_TOP_K,
    SEQUENCE_WEIGHTS_FILE,
    load_component,
)
from training.sequence.data import ItemIndex
from training.sequence.export import export_onnx
from training.sequence.model import SASRec

N_ITEMS, LENGTH, DIM, LAYERS, HEADS, TOP_K = 40, 6, 16, 2, 2, 12


@pytest.fixture(scope="module")
def component(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A packaged sequence component of a (randomly initialised) SASRec, weights included."""
    torch.manual_seed(0)
    export = tmp_path_factory.mktemp("export")
    model = SASRec(N_ITEMS, LENGTH, dim=DIM, layers=LAYERS, heads=HEADS, dropout=0.0).eval()
    export_onnx(model, export / ONNX_FILE, TOP_K)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              export / SEQUENCE_WEIGHTS_FILE)
    np.save(export / SEQUENCE_ITEM_IDS_FILE,
            ItemIndex.from_ids(np.arange(1000, 1000 + N_ITEMS)).ids_by_index(), allow_pickle=False)
    np.save(export / SEQUENCE_EMBEDDINGS_FILE, model.embeddings.detach().numpy(), allow_pickle=False)
    (export / RESULT_FILE).write_text(json.dumps({
        "params": {SEQUENCE_LENGTH: LENGTH, SEQUENCE_TOP_K: TOP_K, "dim": DIM, "n_items": N_ITEMS,
                   "layers": LAYERS, "heads": HEADS, "model_file": ONNX_FILE},
        "metrics": {"ndcg_at_10": 0.1}, "data": {}}))
    out = tmp_path_factory.mktemp("bundle") / SEQUENCE_COMPONENT
    package_sequence(export, out, "v1")
    return out


def test_the_weights_are_packaged_with_a_checksum(component: Path) -> None:
    assert SEQUENCE_WEIGHTS_FILE in load_component(component, SEQUENCE_COMPONENT).files


def test_sessions_are_left_padded_valid_indices() -> None:
    batch = gpu_sequence.sessions(50, LENGTH, N_ITEMS)
    assert batch.shape == (50, LENGTH) and batch[:, -1].min() >= 1 and batch.max() <= N_ITEMS
    for row in batch:  # padding (0) only before the first item
        first = int(np.argmax(row > 0))
        assert (row[:first] == 0).all() and (row[first:] > 0).all()


def test_the_rebuilt_graph_agrees_with_the_onnx_graph_on_the_cpu(component: Path) -> None:
    rows = gpu_sequence.run(component, device="cpu", requests=5, batch=16, batch_iters=2)
    assert rows["dtype"] == "float32" and rows["device"] == "cpu"
    assert rows["max_abs_diff_session"] < 1e-4 and rows["max_abs_diff_scores"] < 1e-4
    assert rows["top10_agreement"] == pytest.approx(1.0)
    assert rows["request_p50_ms_eager"] > 0 and rows["sessions_per_s"] > 0
    assert "request_p50_ms_graph" not in rows  # no CUDA here
    table = gpu_sequence.report(rows)
    assert "| p50 per request, CUDA-graph replay | - (no CUDA) |" in table
    assert f"SASRec L={LENGTH}, d={DIM}, {LAYERS} layers, {N_ITEMS} items, top {TOP_K}" in table


def test_the_gpu_script_prints_the_rows_and_exits_zero(
        component: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = gpu_ranker.main(["--sequence", str(component), "--device", "cpu", "--requests", "3",
                            "--batch", "8", "--batch-iters", "1", "--json", str(tmp_path / "r.json")])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("CPU: ") and "| sequence model | |" in out
    assert json.loads((tmp_path / "r.json").read_text())["top10_agreement"] == pytest.approx(1.0)


def test_a_component_without_weights_says_so(component: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "manifest.json").write_text((component / "manifest.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights"):
        gpu_sequence.load_graph(bare, torch.device("cpu"), torch.float32)
