"""``shopserve drill`` and ``shopserve soak`` end to end: the real three servers under the real
supervisor on the tiny bundle, driven as a user would (``python -m pipeline.cli``), bounded in time.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Generous upstream budgets: the test machine is small and shared, and a drill on default budgets
#: would measure the machine's load, not the faults.
BUDGETS = ["--search-env", "SEARCH_RANKER_TIMEOUT_MS=5000",
           "--search-env", "SEARCH_RECALL_TIMEOUT_MS=2000"]


def _shopserve(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout)


@pytest.mark.timeout(420)
def test_drill_recall_and_model_faults_lose_nothing(tiny_bundle: Path, tmp_path: Path) -> None:
    done = _shopserve("drill", "--bundle", str(tiny_bundle), "--faults", "recall,model",
                      "--rate", "5", "--quiet-seconds", "3", "--settle-timeout", "60",
                      "--log-dir", str(tmp_path / "logs"), *BUDGETS, timeout=400)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert out.startswith("CPU: ")
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| ([^|]+?) \| \d+ \|.*$", out, re.M)}
    assert set(rows) == {"before the faults", "recall kill -9", "ranker model process kill -9"}
    for label in ("recall kill -9", "ranker model process kill -9"):
        cells = [c.strip() for c in rows[label].strip("|").split("|")]
        requests, failed, refused = int(cells[1]), int(cells[2]), int(cells[3])
        assert requests >= 5 and failed == 0 and refused == 0, rows[label]
        assert cells[5] != "never", rows[label]  # fully ranked again
        assert cells[-1] == "ok"
    assert "recall 1" in rows["recall kill -9"]  # the supervisor restarted it
    assert "[supervisor] restarting recall (signal SIGKILL)" in done.stderr
    assert "no request lost" in out


#: A soak in seconds: a short warm-up, and no memory verdict (a 20 s soak says nothing of growth).
SHORT_SOAK = ["--warmup-seconds", "3", "--max-rss-growth", "1000"]


@pytest.mark.timeout(300)
def test_soak_prints_minutes_and_rss(tiny_bundle: Path, tmp_path: Path) -> None:
    done = _shopserve("soak", "--bundle", str(tiny_bundle), "--seconds", "20", "--rate", "5",
                      "--log-dir", str(tmp_path / "logs"), *SHORT_SOAK, *BUDGETS, timeout=280)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "capacity" not in out  # --rate skips the measurement
    assert "after a 3 s warm-up at that rate (not in the tables" in out
    assert "| minute | requests | failed | refused | degraded | p99 ms |" in out
    minute = re.search(r"^\| 0-0\.33 \| (\d+) \| 0 \| 0 \| [\d.]+% \| \d+ \|$", out, re.M)
    assert minute and int(minute.group(1)) >= 80, out  # 5 req/s for 20 s, the warm-up left out
    assert re.search(r"^\| total \| \d+ \| 0 \| 0 \|", out, re.M), out
    assert "RSS MB per process after the warm-up (start) and at the end of each minute:" in out
    assert "| process | start | 0.33 | growth |" in out
    for label in ("search (transformers_pre)", "recall (predictors.recall)",
                  "ranker launcher (predictors.ranker)", "tritonserver",
                  "Triton Python-backend model (stub)"):
        assert re.search(rf"^\| {re.escape(label)} \| \d+ \| \d+ \| [+-][\d.]+% \|$", out, re.M), out
    assert "RSS growth over 1000%: none" in out
    assert "no failures in" in out


@pytest.mark.timeout(300)
def test_soak_measures_capacity_with_open_loop_probes(tiny_bundle: Path, tmp_path: Path) -> None:
    done = _shopserve("soak", "--bundle", str(tiny_bundle), "--seconds", "5",
                      "--capacity-warmup-seconds", "2", "--capacity-probe-seconds", "3",
                      "--capacity-max-probes", "2", "--log-dir", str(tmp_path / "logs"),
                      *SHORT_SOAK, *BUDGETS, timeout=280)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "capacity: highest open-loop rate with no failure and <= 1% degraded answers" in out
    probes = re.findall(r"^  probe (\d+): ([\d.]+) req/s: (\d+) requests, \d+ failed, "
                        r"\d+ refused, [\d.]+% degraded, p99 .* -> (met|missed)"
                        r"(?: \(stopped early\))?$", out, re.M)
    assert [p[0] for p in probes] == ["1", "2"], out
    assert probes[0][1] == "2", out
    # A probe sends at least 20 requests (at 2 req/s it lasts 10 s, not 3); a met one sent them all.
    assert all(int(n) >= 20 for _, _, n, verdict in probes if verdict == "met"), out
    best = max(float(rate) for _, rate, _, verdict in probes if verdict == "met")
    assert re.search(rf"^capacity {best:g} req/s \(2 probes, \d+ s\)$", out, re.M), out
    assert f"soaking at half the capacity: {best / 2:g} req/s" in out
    assert "no failures in" in out
