"""The seq-recommender serving graph: ONNX Runtime equals torch, top-K holds only new items, the
component files and manifest fields of ``export_sequence``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from shopserve.artifacts import (
    SEQUENCE_EMBEDDINGS_FILE,
    SEQUENCE_ITEM_IDS_FILE,
    SEQUENCE_LENGTH,
    SEQUENCE_TOP_K,
    SEQUENCE_WEIGHTS_FILE,
)
from shopserve.protocol import NEXT_ITEMS, NEXT_SCORES, SEQUENCE, SESSION_EMBEDDING
from training.data.generator import GeneratorConfig, generate
from training.sequence.build import SEQUENCE_ONNX_FILE, export_sequence, train_sequence_model
from training.sequence.data import PADDING
from training.sequence.export import ServingGraph, check_export, export_onnx, run_onnx
from training.sequence.model import SASRec
from training.sequence.train import SequenceConfig

N_ITEMS, LENGTH, TOP_K = 300, 12, 20


@pytest.fixture(scope="module")
def model() -> SASRec:
    torch.manual_seed(0)
    model = SASRec(N_ITEMS, LENGTH, dim=32, layers=2, heads=2, dropout=0.2).eval()
    with torch.no_grad():  # away from the near-uniform initialisation: spread-out scores
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        model.item_embedding.weight[PADDING].zero_()
    return model


@pytest.fixture(scope="module")
def exported(model: SASRec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(model, tmp_path_factory.mktemp("seq") / "model.onnx", TOP_K)


def _random_sequences(batch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    seqs = rng.integers(1, N_ITEMS + 1, (batch, LENGTH))
    for b in range(batch):
        seqs[b, : rng.integers(0, LENGTH)] = PADDING  # left padding of every amount
    seqs[0] = PADDING  # an empty session
    seqs[-1] = rng.permutation(np.arange(1, N_ITEMS + 1))[:LENGTH]  # a full one, no padding
    return seqs


@pytest.mark.parametrize(("batch", "seed"), [(1, 0), (2, 1), (17, 2)])
def test_onnx_equals_torch(model: SASRec, exported: Path, batch: int, seed: int) -> None:
    check = check_export(model, exported, _random_sequences(batch, seed))
    assert check.max_abs_diff <= 1e-4
    assert check.same_items == 1.0
    assert check.items_valid


def test_outputs_follow_the_contract(model: SASRec, exported: Path) -> None:
    seqs = _random_sequences(9, 3)
    out = run_onnx(exported, seqs)
    assert list(out) == [t.name for t in SEQUENCE.outputs]
    assert out[NEXT_ITEMS].dtype == np.int64 and out[NEXT_ITEMS].shape == (9, TOP_K)
    assert out[NEXT_SCORES].dtype == np.float32 and out[NEXT_SCORES].shape == (9, TOP_K)
    assert out[SESSION_EMBEDDING].shape == (9, 32)
    assert (np.diff(out[NEXT_SCORES], axis=1) <= 0).all()  # descending
    # The contract's scoring rule: score of item i = session_embedding . E[i].
    table = model.embeddings.detach().numpy()
    recomputed = np.einsum("bd,bkd->bk", out[SESSION_EMBEDDING], table[out[NEXT_ITEMS]])
    np.testing.assert_allclose(recomputed, out[NEXT_SCORES], atol=1e-4)


def test_top_k_excludes_padding_and_every_input_item(exported: Path) -> None:
    seqs = _random_sequences(32, 4)
    items = run_onnx(exported, seqs)[NEXT_ITEMS]
    assert (items != PADDING).all()
    for row, top in zip(seqs, items, strict=True):
        assert not np.isin(top, row).any()
        assert np.unique(top).shape[0] == TOP_K


def test_top_k_must_leave_room_for_new_items(model: SASRec) -> None:
    with pytest.raises(ValueError, match="top_k"):
        ServingGraph(model, N_ITEMS - LENGTH + 1)


def test_export_sequence_writes_the_component(tmp_path: Path) -> None:
    world = generate(GeneratorConfig.tiny())
    config = SequenceConfig(max_length=8, dim=16, layers=1, heads=1, epochs=2, top_k=50,
                            progress=False, threads=1)
    trained = train_sequence_model(world.events.log, world.items.item_id, config)
    out = export_sequence(trained, tmp_path / "sequence")

    ids = np.load(tmp_path / "sequence" / SEQUENCE_ITEM_IDS_FILE, allow_pickle=False)
    table = np.load(tmp_path / "sequence" / SEQUENCE_EMBEDDINGS_FILE, allow_pickle=False)
    assert ids.dtype == np.int64 and ids[0] == -1
    assert ids[1:].tolist() == sorted(world.items.item_id.tolist())
    assert table.dtype == np.float32 and table.shape == (len(ids), 16)
    assert not table[PADDING].any()
    np.testing.assert_array_equal(table, trained.model.embeddings.detach().numpy())
    # The weights, for the GPU rows: the model's state, tensor for tensor (safetensors, no pickle).
    weights = load_file(str(tmp_path / "sequence" / SEQUENCE_WEIGHTS_FILE))
    state = trained.model.state_dict()
    assert weights.keys() == state.keys()
    assert all(torch.equal(weights[k], state[k].cpu()) for k in state)

    params, metrics = out["params"], out["metrics"]
    assert params[SEQUENCE_LENGTH] == 8 and params[SEQUENCE_TOP_K] == 50
    assert {"dim", "n_items", "layers", "heads", "seed", "epochs"} <= set(params)
    assert params["n_items"] == len(ids) - 1
    for key in ("ndcg_at_10", "hit_rate_at_10", "mrr"):
        assert 0.0 <= metrics[key] <= 1.0
    assert out["data"]["evaluated_shoppers"] == metrics["users"] > 0

    check = check_export(trained.model, tmp_path / "sequence" / SEQUENCE_ONNX_FILE,
                         np.array([[0] * 5 + [1, 2, 3], list(range(10, 18))]))
    assert check.max_abs_diff <= 1e-4 and check.items_valid
