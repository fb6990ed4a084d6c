"""The pure parts of ``shopserve drill`` and ``shopserve soak``: degraded reasons, recovery time,
the loss rule, the per-window and per-minute summaries, the capacity search and the RSS table."""

from __future__ import annotations

import math

import pytest

from pipeline.local import parse_env
from pipeline.observe.drill import FAULTS, Row, format_row, lost, parse_faults, recovery_s, summarise
from pipeline.observe.harness import (
    PROCESSES,
    REFUSED,
    Record,
    highest_rate,
    parse_degraded,
    percentile,
    refused_connection,
    stage_of,
)
from pipeline.observe.soak import (
    Interval,
    growth,
    growth_share,
    interval,
    meets_objective,
    minute_bounds,
    rss_table,
)


def ranked(t: float) -> Record:
    return Record(t, 0.05, 200)


def degraded(t: float, *reasons: str) -> Record:
    return Record(t, 0.05, 200, "", reasons or ("ranker",))


def refused(t: float) -> Record:
    return Record(t, 0.001, None, REFUSED)


def failed(t: float, status: int | None = 500, error: str = "") -> Record:
    return Record(t, 0.5, status, error)


@pytest.mark.parametrize(("value", "expected"), [
    ("", ()),
    (None, ()),
    (3, ()),
    ("ranker", ("ranker",)),
    ("recall,ranker", ("recall", "ranker")),
    (" ranker:timeout , recall ,", ("ranker:timeout", "recall")),
])
def test_parse_degraded(value: object, expected: tuple[str, ...]) -> None:
    assert parse_degraded(value) == expected


@pytest.mark.parametrize(("reason", "stage"), [
    ("ranker", "ranker"), ("ranker:timeout", "ranker"), ("recall:unavailable", "recall")])
def test_stage_of(reason: str, stage: str) -> None:
    assert stage_of(reason) == stage


@pytest.mark.parametrize(("record", "ok", "is_refused", "is_failed", "fully_ranked"), [
    (ranked(0), True, False, False, True),
    (degraded(0, "recall"), True, False, False, True),
    (degraded(0, "ranker:timeout"), True, False, False, False),
    (refused(0), False, True, False, False),
    (failed(0, 503), False, False, True, False),
    (failed(0, None, "ReadTimeout"), False, False, True, False),
    (Record(0, 0.1, 200, "bad body"), False, False, True, False),
])
def test_record_kinds(record: Record, ok: bool, is_refused: bool, is_failed: bool,
                      fully_ranked: bool) -> None:
    assert (record.ok, record.refused, record.failed, record.fully_ranked) == (
        ok, is_refused, is_failed, fully_ranked)


def test_recovery_is_zero_when_nothing_was_degraded() -> None:
    assert recovery_s([ranked(t) for t in range(10, 20)], 10.0, 3) == 0.0


def test_recovery_starts_at_the_first_streak_after_the_first_bad_answer() -> None:
    # Ranked answers before the degradation shows (a race with the fault) do not count, nor does
    # a streak shorter than asked for.
    records = ([ranked(10.1), degraded(10.5), degraded(11.0), ranked(11.5), degraded(12.0)]
               + [ranked(12.5 + 0.5 * i) for i in range(3)])
    assert recovery_s(records, 10.0, 3) == pytest.approx(2.5)


def test_recovery_is_none_when_answers_never_recover() -> None:
    records = [degraded(10.0), ranked(10.5), ranked(11.0), degraded(11.5)]
    assert recovery_s(records, 10.0, 3) is None


def test_recovery_ignores_records_before_the_fault_and_takes_a_predicate() -> None:
    records = [degraded(5.0), ranked(10.0), degraded(10.2, "recall"), ranked(11.0), ranked(12.0)]
    assert recovery_s(records, 10.0, 2) == 0.0
    assert recovery_s(records, 10.0, 2, lambda r: r.ok and not r.degraded) == pytest.approx(1.0)


def test_refused_connections_are_not_fully_ranked() -> None:
    records = [refused(10.0), refused(10.5), ranked(11.0), ranked(11.5)]
    assert recovery_s(records, 10.0, 2) == pytest.approx(1.0)


def _row(failed_: int, refused_: int) -> Row:
    return Row("x", 10, failed_, refused_, {}, 0.0, 0.0, 50.0)


@pytest.mark.parametrize(("failed_", "refused_", "allowed", "expected"), [
    (0, 0, False, 0),
    (0, 3, False, 3),   # a ranker or recall fault may not refuse anything
    (0, 3, True, 0),    # a restarting transformer may refuse new connections
    (2, 3, True, 2),    # but must answer what it accepted
    (2, 3, False, 5),
])
def test_loss_rule(failed_: int, refused_: int, allowed: bool, expected: int) -> None:
    assert lost(_row(failed_, refused_), allowed) == expected


def test_only_the_transformer_restart_may_refuse() -> None:
    assert {n for n, f in FAULTS.items() if f.refusals_allowed} == {"transformer"}


def test_summarise_counts_the_window_only() -> None:
    records = [ranked(1.0), failed(10.0, 503), refused(10.1), degraded(10.2, "ranker"),
               degraded(10.3, "recall", "ranker"), failed(10.4, None, "ReadTimeout"),
               ranked(10.5), ranked(10.6), ranked(20.0)]
    row = summarise("f", records, 10.0, 20.0, streak=2, restarts={"recall": 1})
    assert (row.requests, row.failed, row.refused) == (7, 2, 1)
    assert row.degraded == {"ranker": 2, "recall": 1}
    assert row.errors == {"HTTP 503": 1, "ReadTimeout": 1}
    assert row.ranked_again_s == pytest.approx(0.5)
    line = format_row(row, lost(row, False))
    assert line.startswith("| f | 7 | 2 | 1 | ranker 29% (2), recall 14% (1) | 0.5 |")
    assert "recall 1" in line and line.endswith("| LOST 3 |")


def test_parse_faults() -> None:
    assert [f.name for f in parse_faults("recall, model")] == ["recall", "model"]
    with pytest.raises(ValueError, match="unknown fault"):
        parse_faults("recall,disk")
    with pytest.raises(ValueError):
        parse_faults("")


def test_parse_env() -> None:
    assert parse_env(["A=1", "B=x=y"]) == {"A": "1", "B": "x=y"}
    with pytest.raises(ValueError):
        parse_env(["A"])


def test_percentile_nearest_rank() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0
    assert percentile(list(map(float, range(1, 101))), 0.99) == 99.0
    assert math.isnan(percentile([], 0.99))


@pytest.mark.parametrize(("total", "expected"), [
    (20.0, [(0.0, 20.0)]),
    (60.0, [(0.0, 60.0)]),
    (150.0, [(0.0, 60.0), (60.0, 120.0), (120.0, 150.0)]),
])
def test_minute_bounds(total: float, expected: list[tuple[float, float]]) -> None:
    assert minute_bounds(total) == expected


def test_soak_interval_and_growth() -> None:
    records = [ranked(0.5), degraded(1.0, "recall"), failed(2.0), refused(3.0), ranked(70.0)]
    row = interval("0-1", records, 0.0, 60.0)
    assert (row.requests, row.failed, row.refused, row.degraded) == (4, 1, 1, 1)
    assert row.degraded_share == 0.25
    assert growth(100.0, 105.0) == "+5.0%"
    assert growth(None, 105.0) == "-"


def test_a_refused_connection_is_found_down_the_exception_chain() -> None:
    # What httpx raises for a closed port: anyio's OSError from the ConnectionRefusedError.
    try:
        try:
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)")
        except OSError as inner:
            raise OSError("All connection attempts failed") from inner
    except OSError as exc:
        assert refused_connection(exc)
    assert not refused_connection(OSError("All connection attempts failed"))
    assert not refused_connection(TimeoutError("timed out"))


def test_recovery_is_judged_up_to_when_the_drill_settled() -> None:
    # Fully ranked all along, then one answer sent after the drill saw the stack settled comes
    # back degraded: it counts in the row, not against the recovery.
    records = [ranked(10 + i / 10) for i in range(12)] + [degraded(11.5)]
    row = summarise("recall kill -9", records, 10.0, 12.0, streak=10, settled=11.1)
    assert row.requests == 13 and row.degraded == {"ranker": 1}
    assert row.ranked_again_s == 0.0
    assert summarise("recall kill -9", records, 10.0, 12.0, streak=10).ranked_again_s is None


class FakeStack:
    """A stack whose capacity is ``capacity`` req/s: a probe meets any rate up to it."""

    def __init__(self, capacity: float) -> None:
        self.capacity = capacity
        self.offered: list[float] = []

    def meets(self, rate: float) -> bool:
        self.offered.append(rate)
        return rate <= self.capacity


@pytest.mark.parametrize(("capacity", "offered", "found"), [
    # Doubling from 2 until a miss, then bisected on the 0.5 grid.
    (5.3, [2, 4, 8, 6, 5, 5.5], 5.0),
    (6.0, [2, 4, 8, 6, 7, 6.5], 6.0),
    # Under the first rate: halved until one is met, then bisected.
    (0.8, [2, 1, 0.5], 0.5),
    (1.4, [2, 1, 1.5], 1.0),
])
def test_highest_rate_doubles_then_bisects(capacity: float, offered: list[float],
                                           found: float) -> None:
    stack = FakeStack(capacity)
    assert highest_rate(stack.meets, 2.0, resolution=0.5, max_probes=10) == found
    assert stack.offered == offered


def test_highest_rate_is_bounded_by_its_probes() -> None:
    always = FakeStack(math.inf)
    assert highest_rate(always.meets, 2.0, resolution=0.5, max_probes=4) == 16.0  # a lower bound
    assert always.offered == [2, 4, 8, 16]
    never = FakeStack(0.0)
    assert highest_rate(never.meets, 2.0, resolution=0.5, max_probes=10, floor=0.25) is None
    assert never.offered == [2, 1, 0.5, 0.25]
    with pytest.raises(ValueError, match="max_probes"):
        highest_rate(never.meets, 2.0, resolution=0.5, max_probes=0)


@pytest.mark.parametrize(("row", "expected"), [
    (Interval("2 req/s", 100, 0, 0, 1, 90.0), True),  # 1% degraded is allowed
    (Interval("2 req/s", 100, 0, 0, 2, 90.0), False),
    (Interval("2 req/s", 100, 1, 0, 0, 90.0), False),  # one failure misses
    (Interval("2 req/s", 100, 0, 1, 0, 90.0), False),  # one refusal too
    (Interval("2 req/s", 0, 0, 0, 0, math.nan), False),  # nothing sent proves nothing
])
def test_capacity_objective(row: Interval, expected: bool) -> None:
    assert meets_objective(row, 0.01) is expected


def test_rss_table_has_a_column_per_minute_and_the_growth() -> None:
    labels = [label for label, *_ in PROCESSES]
    start = dict.fromkeys(labels, 100.0)
    later = {**start, labels[-1]: 110.0}
    gone = {**later, labels[0]: None}
    lines = rss_table([("start", start), ("1", later), ("2", gone)]).splitlines()
    assert lines[0] == "| process | start | 1 | 2 | growth |"
    assert lines[1] == "| --- | ---: | ---: | ---: | ---: |"
    assert lines[2] == f"| {labels[0]} | 100 | 100 | - | - |"
    assert lines[-1] == f"| {labels[-1]} | 100 | 110 | 110 | +10.0% |"
    assert growth_share(100.0, 110.0) == pytest.approx(0.1)
    assert growth_share(None, 110.0) is None
