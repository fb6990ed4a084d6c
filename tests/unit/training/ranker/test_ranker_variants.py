"""The optimise step builds variants cheapest first and stops at the first that passes; the
package step records the rule, the guard's standard error and the int8 options in the manifest."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from training.ranker.build import (
    REFERENCE,
    RankerBuildConfig,
    RankerData,
    Row,
    TrainedTeacher,
    evaluation_table,
    optimise_variants,
    package,
)
from training.ranker.evaluate import cross_encoder_scorer, rerank
from training.ranker.modeling import TorchScorer, load_tokenizer
from training.ranker.optimise import INT8_WEIGHT_LIMIT
from training.ranker.pairs import CandidateList, PairCatalog, Query, flatten
from training.ranker.train import TrainConfig

COLOURS = ["red", "blue", "green", "black", "white", "grey"]
MAX_LENGTH = 16


def _list(key: int, colour: str) -> CandidateList:
    titles = [f"{c} cotton sock" for c in COLOURS]
    grades = np.asarray([3 if c == colour else 0 for c in COLOURS], dtype=np.int64)
    ids = np.arange(10 * key, 10 * key + len(COLOURS), dtype=np.int64)
    judged = {int(i): int(g) for i, g in zip(ids, grades, strict=True)}
    return CandidateList(Query(key, f"{colour} sock", "exact", judged), ids, titles, grades)


@pytest.fixture(scope="module")
def prepared() -> RankerData:
    tokenizer = load_tokenizer()
    train = [_list(i, COLOURS[i % len(COLOURS)]) for i in range(12)]
    evaluation = [_list(100 + i, c) for i, c in enumerate(COLOURS)]
    catalog = PairCatalog(np.zeros(0, np.int64), [], [], [])
    return RankerData(catalog, train, evaluation, flatten(train), tokenizer, MAX_LENGTH,
                      {"eval_queries": len(evaluation)})  # fmt: skip


@pytest.fixture(scope="module")
def trained(prepared: RankerData) -> TrainedTeacher:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=prepared.tokenizer.vocab_size, hidden_size=32,
                        num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64, num_labels=1, attn_implementation="eager")
    teacher = BertForSequenceClassification(config).eval()
    score = cross_encoder_scorer(prepared.tokenizer, TorchScorer(teacher), MAX_LENGTH)
    return TrainedTeacher(teacher, [Row(REFERENCE, rerank(prepared.eval_lists, score), layers=2)])


def _config(**overrides: object) -> RankerBuildConfig:
    settings: dict[str, object] = {
        "keep_layers": (0,), "variants": ("onnx-fp32", "onnx-int8", "pruned-int8"),
        "distill": TrainConfig(max_steps=2, batch_size=8, progress=False), "threads": 1,
    }
    return replace(RankerBuildConfig.tiny(), **{**settings, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def first_pass(prepared, trained, tmp_path_factory):
    """Guard off (any drop passes): the cheapest variant passes and the build stops there."""
    work = tmp_path_factory.mktemp("first")
    return optimise_variants(prepared, trained, _config(max_ndcg_drop=1.0), work), work


def test_the_build_stops_at_the_cheapest_passing_variant(first_pass) -> None:
    result, work = first_pass
    assert [v.name for v in result.variants] == ["pruned-int8"]
    assert result.student is not None
    # The teacher was never exported: nothing after the student could have been chosen.
    assert not (work / "teacher.fp32.onnx").exists()


def test_variants_are_evaluated_cheapest_first_until_one_passes(prepared, trained, tmp_path) -> None:
    # Nothing passes a guard that asks for an improvement: every variant, in the static order.
    result = optimise_variants(prepared, trained, _config(max_ndcg_drop=-1.0), tmp_path)
    assert [v.name for v in result.variants] == ["pruned-int8", "onnx-int8", "onnx-fp32"]
    assert [r.name for r in result.rows][-3:] == ["pruned-int8", "onnx-int8", "onnx-fp32"]


def test_every_variant_on_request(prepared, trained, tmp_path) -> None:
    config = _config(max_ndcg_drop=1.0, evaluate_every_variant=True, variants=("onnx-int8", "pruned-int8"))
    result = optimise_variants(prepared, trained, config, tmp_path)
    assert [v.name for v in result.variants] == ["pruned-int8", "onnx-int8"]


def test_each_variant_carries_the_standard_error_of_its_drop(first_pass) -> None:
    result, _ = first_pass
    (variant,) = result.variants
    assert variant.ndcg_drop_se is not None and variant.ndcg_drop_se >= 0
    assert result.rows[-1].ndcg_drop_se == variant.ndcg_drop_se


@pytest.fixture(scope="module")
def manifest(first_pass, tmp_path_factory) -> dict:
    result, _ = first_pass
    out = tmp_path_factory.mktemp("ranker")
    package(result, out, _config(max_ndcg_drop=1.0), version="test")
    return json.loads((out / "manifest.json").read_text())


def test_manifest_records_the_selection_rule(manifest: dict) -> None:
    selection = manifest["params"]["selection"]
    assert manifest["params"]["variant"] == "pruned-int8"
    assert selection["order"] == ["pruned-int8", "onnx-int8", "onnx-fp32"]
    assert selection["evaluated"] == ["pruned-int8"]
    assert selection["not_evaluated"] == ["onnx-int8", "onnx-fp32"]
    assert "never" in selection["rule"] and "latency" in selection["rule"]


def test_manifest_records_the_quantisation(manifest: dict) -> None:
    int8 = manifest["params"]["int8"]
    assert int8["reduce_range"] is True and int8["per_channel"] is True
    assert int8["weight_abs_max"] <= INT8_WEIGHT_LIMIT
    assert manifest["params"]["build"]["int8_reduce_range"] is True
    assert manifest["params"]["build"]["int8_per_channel"] is True
    assert manifest["params"]["profiles"]["cpu"]["precision"] == "int8"


def test_manifest_records_the_guard_with_its_standard_error(manifest: dict) -> None:
    guard = manifest["metrics"]["guard"]
    assert guard["max_drop"] == 1.0 and guard["queries"] == len(COLOURS)
    assert guard["drop_se"] is not None and guard["drop_se"] >= 0
    row = next(r for r in manifest["metrics"]["evaluation"] if r["name"] == "pruned-int8")
    assert row["ndcg_drop_se"] == guard["drop_se"] and row["passes_guard"] is True


def test_evaluation_table_shows_the_standard_error() -> None:
    rows = [{"name": "torch-fp32", "layers": 6, "ndcg_at_10": 0.9, "ndcg_drop": 0.0},
            {"name": "pruned-int8", "layers": 4, "ndcg_at_10": 0.895, "ndcg_drop": 0.0056,
             "ndcg_drop_se": 0.0021, "passes_guard": True}]  # fmt: skip
    table = evaluation_table(rows)
    assert "| +0.56% ± 0.21% | pass |" in table
    assert "| +0.00% |" in table
