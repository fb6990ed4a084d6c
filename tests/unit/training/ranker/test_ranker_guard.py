"""The quality guard: relative NDCG drop, its standard error, and the choice of the cheapest
passing variant by a static order that no measured latency can change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.ranker.build import variant_order
from training.ranker.optimise import (
    Variant,
    drop_standard_error,
    ndcg_drop,
    passes_guard,
    select_variant,
    static_cost,
)


@pytest.mark.parametrize(
    ("reference", "candidate", "max_drop", "passes"),
    [
        (0.90, 0.90, 0.01, True),
        (0.90, 0.95, 0.01, True),  # better is fine
        (0.90, 0.891, 0.01, True),  # exactly 1% down
        (0.90, 0.8909, 0.01, False),  # just over 1%
        (0.90, 0.80, 0.15, True),  # configurable budget
        (0.90, float("nan"), 0.01, False),
    ],
)
def test_passes_guard(reference: float, candidate: float, max_drop: float, passes: bool) -> None:
    assert passes_guard(reference, candidate, max_drop) is passes


def test_ndcg_drop_is_relative() -> None:
    assert ndcg_drop(0.8, 0.72) == pytest.approx(0.1)
    assert ndcg_drop(0.8, 0.88) == pytest.approx(-0.1)


def test_ndcg_drop_refuses_a_useless_reference() -> None:
    with pytest.raises(ValueError):
        ndcg_drop(0.0, 0.5)


def _variant(name: str, ndcg: float, ms: float, layers: int = 6, int8: bool = True) -> Variant:
    path = Path(f"{name}.onnx")
    return Variant(name, path, layers, ndcg, ms, fp32_path=Path(f"{name}.fp32.onnx") if int8 else path)


def test_select_variant_picks_the_cheapest_that_passes() -> None:
    variants = [
        _variant("onnx-fp32", 0.900, 100.0, int8=False),
        _variant("onnx-int8", 0.899, 50.0),
        _variant("pruned-int8", 0.850, 25.0, layers=4),  # cheapest but 5.6% worse
    ]
    assert select_variant(variants, 0.900, 0.01).name == "onnx-int8"
    assert select_variant(variants, 0.900, 0.10).name == "pruned-int8"


def test_select_variant_refuses_when_nothing_passes() -> None:
    with pytest.raises(ValueError, match="no variant"):
        select_variant([_variant("onnx-int8", 0.5, 1.0)], 0.9, 0.01)


@pytest.mark.parametrize(
    ("fast", "slow"),
    [
        # The AVX2 build machine measured the 6-layer int8 graph faster than the 4-layer one.
        (_variant("onnx-int8", 0.899, 30.0), _variant("pruned-int8", 0.895, 148.0, layers=4)),
        # An fp32 graph measured faster than the int8 graph of the same model.
        (_variant("onnx-fp32", 0.900, 10.0, int8=False), _variant("onnx-int8", 0.899, 90.0)),
        # A 4-layer fp32 graph faster than the 4-layer int8 one.
        (_variant("pruned-fp32", 0.898, 5.0, layers=4, int8=False),
         _variant("pruned-int8", 0.897, 50.0, layers=4)),
    ],
)
def test_measured_latency_never_decides(fast: Variant, slow: Variant) -> None:
    assert select_variant([fast, slow], 0.900, 0.01).name == slow.name
    assert select_variant([slow, fast], 0.900, 0.01).name == slow.name


def test_the_choice_is_the_same_whatever_the_timings() -> None:
    rng = np.random.default_rng(0)
    names = []
    for _ in range(20):
        variants = [
            _variant("onnx-fp32", 0.900, float(rng.uniform(1, 200)), int8=False),
            _variant("onnx-int8", 0.899, float(rng.uniform(1, 200))),
            _variant("pruned-int8", 0.896, float(rng.uniform(1, 200)), layers=4),
        ]
        names.append(select_variant(variants, 0.900, 0.01).name)
    assert set(names) == {"pruned-int8"}


def test_static_cost_orders_layers_then_precision() -> None:
    costs = [static_cost(4, "int8"), static_cost(4, "fp32"), static_cost(6, "int8"),
             static_cost(6, "fp32")]  # fmt: skip
    assert costs == sorted(costs) and len(set(costs)) == 4
    with pytest.raises(ValueError):
        static_cost(4, "fp16")


def test_variant_order_is_the_static_order() -> None:
    names = ("onnx-fp32", "onnx-int8", "pruned-fp32", "pruned-int8")
    assert variant_order(names, teacher_layers=6, student_layers=4) == [
        "pruned-int8", "pruned-fp32", "onnx-int8", "onnx-fp32"]
    # A student as deep as its teacher is no cheaper: int8 before fp32 still holds.
    assert variant_order(names, teacher_layers=6, student_layers=6)[:2] == ["onnx-int8", "pruned-int8"]
    with pytest.raises(ValueError, match="unknown"):
        variant_order(["onnx-fp16"], teacher_layers=6, student_layers=4)


def test_drop_standard_error_of_identical_models_is_zero() -> None:
    ref = np.random.default_rng(0).uniform(0.5, 1.0, 200)
    assert drop_standard_error(ref, ref) == 0.0
    # A uniform relative loss on every query is the same drop in every resample.
    assert drop_standard_error(ref, ref * 0.99) == pytest.approx(0.0, abs=1e-12)


def test_drop_standard_error_matches_the_textbook_value() -> None:
    rng = np.random.default_rng(1)
    ref = np.full(400, 0.9)
    diff = rng.normal(0.0, 0.05, 400)
    se = drop_standard_error(ref, ref - diff, samples=4000)
    # Constant reference: the drop is mean(diff) / 0.9, its standard error sd(diff) / sqrt(n) / 0.9.
    assert se == pytest.approx(diff.std(ddof=1) / np.sqrt(400) / 0.9, rel=0.08)


def test_drop_standard_error_is_reproducible_and_shrinks_with_queries() -> None:
    rng = np.random.default_rng(2)
    ref = rng.uniform(0.6, 1.0, 800)
    cand = np.clip(ref - rng.normal(0.005, 0.05, 800), 0, 1)
    assert drop_standard_error(ref, cand, seed=3) == drop_standard_error(ref, cand, seed=3)
    assert drop_standard_error(ref, cand) < drop_standard_error(ref[:200], cand[:200])


def test_drop_standard_error_skips_nan_queries_and_refuses_mismatches() -> None:
    ref = np.asarray([0.9, np.nan, 0.8, 0.7])
    cand = np.asarray([0.9, 0.5, 0.8, 0.7])
    assert drop_standard_error(ref, cand) == 0.0
    with pytest.raises(ValueError):
        drop_standard_error(ref, cand[:3])
    with pytest.raises(ValueError):
        drop_standard_error([np.nan], [0.5])
