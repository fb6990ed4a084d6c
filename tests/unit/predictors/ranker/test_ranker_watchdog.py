"""The local ranker's model watchdog: probe verdicts, when it recovers, backoff, logging, and the
launcher's Triton flags that make a reload possible."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from predictors.ranker.server import (
    ModelWatchdog,
    RankerSettings,
    TritonServer,
    classify_probe,
    probe_body,
    server_command,
    triton_dist,
)
from shopserve.protocol import RANKER, RANKER_MODEL

DEAD = (500, '{"error":"Stub process \'bert-ranker_0_0\' is not healthy."}')
OK = (200, '{"outputs": []}')


@pytest.mark.parametrize(("status", "body", "verdict"), [
    (200, "", "ok"),
    (500, DEAD[1], "dead"),
    (500, '{"error":"inference failed: onnxruntime"}', "failing"),
    (400, '{"error":"Model version not ready"}', "failing"),
    (None, "", "unknown"),
])  # fmt: skip
def test_classify_probe(status: int | None, body: str, verdict: str) -> None:
    assert classify_probe(status, body) == verdict


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _watchdog(answers: list[tuple[int | None, str]], clock: Clock, recover_error: bool = False
              ) -> tuple[ModelWatchdog, list[float]]:
    recovered: list[float] = []

    def recover() -> None:
        recovered.append(clock.now)
        if recover_error:
            raise RuntimeError("load of bert-ranker: 400 initialize failed")

    def probe() -> tuple[int | None, str]:
        return answers.pop(0)

    return ModelWatchdog(probe, recover, failures=3, backoff_s=1.0, max_backoff_s=4.0,
                         clock=clock), recovered


def test_a_healthy_model_is_left_alone() -> None:
    clock = Clock()
    watchdog, recovered = _watchdog([OK] * 5, clock)
    assert not any(watchdog.check() for _ in range(5))
    assert recovered == [] and watchdog.recoveries == 0


def test_a_dead_stub_is_recovered_at_once_and_the_outage_is_timed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    watchdog, recovered = _watchdog([OK, DEAD, OK], clock)
    caplog.set_level(logging.WARNING)
    assert not watchdog.check()
    clock.now += 1
    assert watchdog.check()
    assert recovered == [101.0]
    clock.now += 0.5
    assert not watchdog.check()
    assert watchdog.recovery_times == [0.5]
    assert "recovering it (recovery 1)" in caplog.text and "is not healthy" in caplog.text
    assert "answers again, 0.50 s" in caplog.text


def test_error_answers_recover_only_after_several_in_a_row() -> None:
    clock = Clock()
    failing = (500, '{"error":"inference failed"}')
    watchdog, recovered = _watchdog([failing, failing, OK, failing, failing, failing], clock)
    assert [watchdog.check() for _ in range(6)] == [False, False, False, False, False, True]
    assert len(recovered) == 1


def test_no_answer_is_no_reason_to_reload() -> None:
    # A busy or restarting server: the process supervisor, not the watchdog, handles its exit.
    clock = Clock()
    watchdog, recovered = _watchdog([(None, "")] * 10, clock)
    assert not any(watchdog.check() for _ in range(10))
    assert recovered == []


def test_a_failed_recovery_is_retried_with_a_capped_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    watchdog, recovered = _watchdog([DEAD] * 40, clock, recover_error=True)
    caplog.set_level(logging.WARNING)
    for _ in range(40):
        watchdog.check()
        clock.now += 0.5
    gaps = [b - a for a, b in zip(recovered, recovered[1:], strict=False)]
    assert gaps[:3] == [1.0, 2.0, 4.0] and set(gaps[3:]) == {4.0}
    assert "recovery failed" in caplog.text and "initialize failed" in caplog.text


def test_backoff_resets_once_the_model_answers() -> None:
    clock = Clock()
    watchdog, recovered = _watchdog([DEAD, DEAD, DEAD, OK, DEAD], clock)
    for _ in range(5):
        watchdog.check()
        clock.now += 0.5
    # recovered at once, retried after 1 s, answered, then a new crash recovered at once.
    assert recovered == [100.0, 101.0, 102.0]


def test_a_probe_that_raises_does_not_kill_the_thread() -> None:
    calls = []

    def probe() -> tuple[int | None, str]:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("boom")
        return OK

    watchdog = ModelWatchdog(probe, lambda: None, interval_s=0.01)
    watchdog.start()
    try:
        deadline = time.monotonic() + 5
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        watchdog.stop()
    assert len(calls) >= 3


def test_probe_is_one_tiny_valid_request() -> None:
    body = json.loads(probe_body())
    assert [t["name"] for t in body["inputs"]] == [t.name for t in RANKER.inputs]
    for tensor in body["inputs"]:
        assert tensor["datatype"] == "INT64" and tensor["shape"] == [1, 2]
        assert len(tensor["data"]) == 2


def test_triton_runs_with_explicit_model_control(tmp_path: Path) -> None:
    command = server_command(triton_dist(), tmp_path / "b", tmp_path / "r", RankerSettings())
    assert "--model-control-mode=explicit" in command
    assert f"--load-model={RANKER_MODEL}" in command


def test_health_interval_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert RankerSettings().health_interval_s == 1.0
    monkeypatch.setenv("RANKER_HEALTH_INTERVAL_S", "0")
    settings = RankerSettings()
    assert settings.health_interval_s == 0
    watchdog = TritonServer(RankerSettings(health_interval_s=0.25)).watchdog()
    assert watchdog.interval_s == 0.25


def test_reload_unloads_then_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    import predictors.ranker.server as server_module

    calls: list[str] = []

    def fake_call(url: str, body: bytes | None = None, timeout_s: float = 5.0
                  ) -> tuple[int | None, str]:
        calls.append(url.rsplit("/", 1)[1])
        if calls[-1] == "ready":  # unloading: not ready
            return 400, ""
        if calls[-1] == "index":  # unloading, then unloaded
            state = "UNLOADING" if calls.count("index") == 1 else "UNAVAILABLE"
            return 200, json.dumps([{"name": RANKER_MODEL, "version": "1", "state": state}])
        return (200, "") if calls[-1] == "unload" else (400, "failed to load 'bert-ranker'")

    monkeypatch.setattr(server_module, "http_call", fake_call)
    server = TritonServer(RankerSettings(http_port=1))
    with pytest.raises(RuntimeError, match="load of bert-ranker: 400 failed to load"):
        server.reload_model()
    assert calls == ["unload", "ready", "index", "index", "load"]
