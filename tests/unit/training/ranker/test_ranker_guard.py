"""The quality guard: relative NDCG drop and the choice of the cheapest passing variant."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.ranker.optimise import Variant, ndcg_drop, passes_guard, select_variant


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


def _variant(name: str, ndcg: float, ms: float, layers: int = 6) -> Variant:
    return Variant(name, Path(f"{name}.onnx"), layers, ndcg, ms)


def test_select_variant_picks_the_fastest_that_passes() -> None:
    variants = [
        _variant("onnx-fp32", 0.900, 100.0),
        _variant("onnx-int8", 0.899, 50.0),
        _variant("pruned-int8", 0.850, 25.0, layers=4),  # fastest but 5.6% worse
    ]
    assert select_variant(variants, 0.900, 0.01).name == "onnx-int8"
    assert select_variant(variants, 0.900, 0.10).name == "pruned-int8"


def test_select_variant_refuses_when_nothing_passes() -> None:
    with pytest.raises(ValueError, match="no variant"):
        select_variant([_variant("onnx-int8", 0.5, 1.0)], 0.9, 0.01)


def test_fewer_layers_win_over_a_noisy_timing() -> None:
    # A busy machine measured the 4-layer model slower; it is still less work at equal precision.
    variants = [
        _variant("onnx-int8", 0.899, 40.0),
        _variant("pruned-int8", 0.895, 45.0, layers=4),
    ]
    assert select_variant(variants, 0.900, 0.01).name == "pruned-int8"
