"""Drift: PSI on known distributions, reference bins and JSON, the live window."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from shopserve.drift import (
    KNOWN,
    OTHER,
    QUERY_LENGTH,
    QUERY_TERMS,
    RANKER_SCORE,
    SIGNALS,
    UNKNOWN,
    UNKNOWN_USER,
    DriftReference,
    DriftWindow,
    SignalReference,
    build_reference,
    psi,
    query_terms,
    status,
)

# ------------------------------------------------------------------------------------------- PSI


@pytest.mark.parametrize("dist", [[0.5, 0.5], [0.1, 0.2, 0.7], [3, 0, 9, 1]])
def test_psi_of_identical_distributions_is_zero(dist: list[float]) -> None:
    assert psi(dist, dist) == pytest.approx(0.0, abs=1e-12)


def test_psi_takes_counts_or_shares_alike() -> None:
    assert psi([10, 30, 60], [200, 300, 500]) == pytest.approx(psi([0.1, 0.3, 0.6], [0.2, 0.3, 0.5]))


HAND_COMPUTED = [
    # (0.8-0.5)ln(0.8/0.5) + (0.2-0.5)ln(0.2/0.5) = 0.3 ln 1.6 + 0.3 ln 2.5
    ([0.5, 0.5], [0.8, 0.2], 0.3 * math.log(1.6) + 0.3 * math.log(2.5)),  # 0.41589
    # (0.2-0.25)ln(0.8) + (0.3-0.25)ln(1.2) + (0.5-0.5)ln(1) = 0.05 ln 1.5
    ([0.25, 0.25, 0.5], [0.2, 0.3, 0.5], 0.05 * math.log(1.5)),  # 0.02027
]


@pytest.mark.parametrize(("expected", "actual", "value"), HAND_COMPUTED)
def test_psi_hand_computed(expected: list[float], actual: list[float], value: float) -> None:
    assert psi(expected, actual) == pytest.approx(value, rel=1e-9)


def test_psi_hand_computed_value() -> None:
    assert psi([0.5, 0.5], [0.8, 0.2]) == pytest.approx(0.415888, abs=1e-6)


def test_psi_is_symmetric_and_positive() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        e, a = rng.dirichlet(np.ones(6)), rng.dirichlet(np.ones(6))
        assert psi(e, a) == pytest.approx(psi(a, e))
        assert psi(e, a) > 0


def test_psi_grows_with_the_shift() -> None:
    base = [0.5, 0.5]
    values = [psi(base, [0.5 + d, 0.5 - d]) for d in (0.05, 0.1, 0.2, 0.3)]
    assert values == sorted(values)


def test_psi_empty_bin_uses_eps() -> None:
    # expected bin 2 empty: its share becomes eps, so the PSI is finite and eps sets its size.
    eps = 1e-4
    value = psi([0.5, 0.5, 0.0], [0.4, 0.4, 0.2], eps=eps)
    by_hand = (2 * (0.4 - 0.5) * math.log(0.4 / 0.5)) + (0.2 - eps) * math.log(0.2 / eps)
    assert value == pytest.approx(by_hand)
    assert math.isfinite(psi([1.0, 0.0], [0.0, 1.0]))
    assert psi([0.5, 0.5, 0.0], [0.4, 0.4, 0.2], eps=1e-2) < value


@pytest.mark.parametrize(("expected", "actual"), [([0.5, 0.5], [1.0]), ([], []), ([0, 0], [1, 1]),
                                                  ([-1, 2], [1, 1])])
def test_psi_refuses_bad_input(expected: list[float], actual: list[float]) -> None:
    with pytest.raises(ValueError):
        psi(expected, actual)


@pytest.mark.parametrize(("value", "word"), [(0.0, "stable"), (0.099, "stable"), (0.1, "moderate"),
                                             (0.25, "moderate"), (0.26, "drift"), (None, "n/a")])
def test_status_words(value: float | None, word: str) -> None:
    assert status(value) == word


# ------------------------------------------------------------------------------------ references


def test_query_terms() -> None:
    assert query_terms("red nike sneakers, size 42") == ["red", "nike", "sneakers", "size", "42"]
    assert query_terms("") == []


def test_numeric_bins_by_edges() -> None:
    ref = SignalReference.from_numeric([1, 2, 2, 3, 9], edges=[1.5, 2.5])
    assert ref.shares == pytest.approx((0.2, 0.4, 0.4))
    assert ref.bins([0, 1.5, 2, 2.5, 100]) == [0, 1, 1, 2, 2]
    assert ref.samples == 5


def test_quantile_bins_hold_equal_shares() -> None:
    values = np.random.default_rng(1).random(10_000)
    ref = SignalReference.from_quantiles(values, bins=10)
    assert len(ref.labels) == 10
    assert np.allclose(ref.shares, 0.1, atol=1e-3)


def test_quantile_bins_merge_ties() -> None:
    ref = SignalReference.from_quantiles([1.0] * 50 + [0.0] * 50, bins=10)
    assert len(ref.labels) == 2


def test_categorical_top_terms_and_other() -> None:
    values = ["a"] * 5 + ["b"] * 3 + ["c", "d"]
    ref = SignalReference.from_categories(values, top=2)
    assert ref.labels == ("a", "b", OTHER)
    assert ref.shares == pytest.approx((0.5, 0.3, 0.2))
    assert ref.bins(["a", "zzz", "b"]) == [0, 2, 1]


def test_categorical_without_other_refuses_unknown_values() -> None:
    ref = SignalReference.from_categories([KNOWN, UNKNOWN, KNOWN], labels=(KNOWN, UNKNOWN))
    assert ref.shares == pytest.approx((2 / 3, 1 / 3))
    with pytest.raises(KeyError):
        ref.bins(["maybe"])


def _reference() -> DriftReference:
    rng = np.random.default_rng(0)
    queries = ["red shoes", "blue running shoes", "shoes", "wool coat for men", ""] * 20
    known = [True, False, True, True, False] * 20
    return build_reference(queries, known, rng.beta(2, 5, 500), source={"test": 1})


def test_build_reference_has_every_signal() -> None:
    ref = _reference()
    assert set(ref.signals) == set(SIGNALS)
    # The empty (recommendation) query counts for users only.
    assert ref.signals[QUERY_LENGTH].samples == 80
    assert ref.signals[UNKNOWN_USER].samples == 100
    assert ref.signals[UNKNOWN_USER].shares == pytest.approx((0.6, 0.4))
    assert ref.signals[QUERY_TERMS].labels[0] == "shoes"
    assert ref.signals[QUERY_LENGTH].shares[:4] == pytest.approx((0.25, 0.25, 0.25, 0.25))


def test_reference_json_round_trip(tmp_path: Path) -> None:
    ref = _reference()
    ref.save(tmp_path / "reference.json")
    back = DriftReference.load(tmp_path / "reference.json")
    assert back.to_dict() == ref.to_dict()
    assert back.signals[RANKER_SCORE].edges == ref.signals[RANKER_SCORE].edges
    assert back.signals[QUERY_TERMS].bins(["shoes", "nope"]) == ref.signals[QUERY_TERMS].bins(
        ["shoes", "nope"])


def test_reference_refuses_another_format() -> None:
    raw = _reference().to_dict()
    raw["format_version"] = 99
    with pytest.raises(ValueError, match="format"):
        DriftReference.from_dict(raw)


# ------------------------------------------------------------------------------------------ window


def test_window_reports_nothing_below_min_samples() -> None:
    window = DriftWindow(_reference(), size=100, min_samples=10)
    for _ in range(9):
        window.record("red shoes", True, None)
    assert window.psi()[QUERY_LENGTH] is None
    window.record("red shoes", True, None)
    assert window.psi()[QUERY_LENGTH] is not None
    assert window.psi()[RANKER_SCORE] is None  # nothing ranked yet


def test_window_of_the_reference_traffic_is_stable() -> None:
    ref = _reference()
    window = DriftWindow(ref, size=1000, min_samples=50)
    rng = np.random.default_rng(2)
    for _ in range(20):
        for query, known in zip(["red shoes", "blue running shoes", "shoes", "wool coat for men", ""],
                                [True, False, True, True, False], strict=True):
            window.record(query, known, rng.beta(2, 5, 10).tolist() if query else None)
    values = window.psi()
    assert values[QUERY_LENGTH] == pytest.approx(0.0, abs=1e-9)
    assert values[UNKNOWN_USER] == pytest.approx(0.0, abs=1e-9)
    assert values[QUERY_TERMS] == pytest.approx(0.0, abs=1e-9)
    assert values[RANKER_SCORE] < 0.1


def test_window_detects_drift_and_forgets_old_observations() -> None:
    ref = _reference()
    window = DriftWindow(ref, size=50, min_samples=20)
    for _ in range(50):
        window.record("a very long query about something the catalog never had", False, [0.99])
    drifted = window.psi()
    assert all(drifted[s] > 0.25 for s in SIGNALS)
    assert window.samples()[QUERY_LENGTH] == 50
    # The window is bounded: 50 reference-like rows push every drifted one out.
    for _ in range(50):
        window.record("red shoes", True, None)
    assert window.samples()[QUERY_LENGTH] == 50
    assert sum(window.counts(QUERY_LENGTH)) == 50
    assert window.counts(QUERY_LENGTH)[1] == 50  # all two-term queries now
    assert window.psi()[QUERY_LENGTH] < drifted[QUERY_LENGTH]


def test_window_ignores_signals_the_reference_lacks() -> None:
    ref = _reference()
    del ref.signals[RANKER_SCORE]
    window = DriftWindow(ref, size=10, min_samples=1)
    window.record("red shoes", True, [0.5, 0.6])
    assert RANKER_SCORE not in window.psi()
