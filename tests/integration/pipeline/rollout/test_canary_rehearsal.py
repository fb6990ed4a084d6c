"""``shopserve loadtest`` and the canary gate's local rehearsal, on the real servers, with real locust.

One tiny bundle; one recall and one ranker shared by three transformers: stable, a canary made
slow on purpose (``SEARCH_FAULT_DELAY_MS``) and one that fails a share of requests on purpose
(``SEARCH_FAULT_ERROR_RATIO``). The gate runs as the ``shopserve`` command in a child process,
as an operator would run it; the good-canary case lets ``gate --local`` start its own stacks.
Runs are a few seconds per step: enough requests to judge, short enough for a small machine.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shopserve.protocol import SEARCH_MODEL
from tests.servers import ROOT, Server, free_port, start_server

pytestmark = pytest.mark.integration

#: Generous upstream budgets: the test machine is small and shared, and a degraded answer is not
#: what these tests are about.
BUDGETS = {"SEARCH_RANKER_TIMEOUT_MS": "10000", "SEARCH_RECALL_TIMEOUT_MS": "5000",
           "SEARCH_SEMANTIC_TIMEOUT_MS": "5000"}
#: An SLO a healthy tiny stack meets even on a 2-core machine that other test runs keep busy
#: (p95 went past a second there), and a canary slowed by SLOW_MS does not.
SLO = "p95_ms=3000,p99_ms=5000,max_failure_ratio=0,max_degraded_ratio=0.05"
SLOW_MS = 4000
#: Short steps; tolerances wide enough for the noise of a few seconds at small shares on a busy
#: machine (a handful of canary requests per step): the relative check only catches gross
#: regressions here, the SLO catches the slow canary.
GATE_FLAGS = ["--steps", "30,60,100", "--step-seconds", "5", "--users", "4", "--slo", SLO,
              "--min-requests", "3", "--latency-ratio", "3.0", "--latency-slack-ms", "300",
              "--ratio-slack", "0.05", "--max-holds", "2"]


@dataclass
class Rehearsal:
    bundle: Path
    logs: Path
    stable: Server
    slow: Server
    failing: Server


def _search(bundle: Path, logs: Path, name: str, recall: Server, ranker: Server,
            extra: dict[str, str]) -> Server:
    http, grpc = free_port(), free_port()
    return start_server(
        "transformers_pre",
        {"SEARCH_BUNDLE_DIR": str(bundle), "SEARCH_RECALL_HOST": recall.grpc_address,
         "SEARCH_RANKER_HOST": ranker.grpc_address,
         # The ranker launcher serves the bundle's query encoder beside the ranker.
         "SEARCH_SEMANTIC_HOST": ranker.grpc_address, "SEARCH_HTTP_PORT": str(http),
         "SEARCH_GRPC_PORT": str(grpc), **BUDGETS, **extra},
        logs / f"{name}.log", http_port=http, grpc_port=grpc,
    )


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Iterator[Rehearsal]:
    bundle = tiny_bundle
    logs = tmp_path_factory.mktemp("logs")
    servers: list[Server] = []
    try:
        http, grpc = free_port(), free_port()
        recall = start_server("predictors.recall", {
            "RECALL_BUNDLE_DIR": str(bundle / "recall"), "RECALL_HTTP_PORT": str(http),
            "RECALL_GRPC_PORT": str(grpc)}, logs / "recall.log", http_port=http, grpc_port=grpc)
        servers.append(recall)
        http, grpc = free_port(), free_port()
        ranker = start_server("predictors.ranker", {
            "RANKER_BUNDLE": str(bundle / "ranker"), "RANKER_HTTP_PORT": str(http),
            "RANKER_GRPC_PORT": str(grpc), "RANKER_METRICS_PORT": str(free_port())},
            logs / "ranker.log", http_port=http, grpc_port=grpc, timeout=180)
        servers.append(ranker)
        stable = _search(bundle, logs, "stable", recall, ranker, {})
        servers.append(stable)
        slow = _search(bundle, logs, "slow", recall, ranker, {"SEARCH_FAULT_DELAY_MS": str(SLOW_MS)})
        servers.append(slow)
        failing = _search(bundle, logs, "failing", recall, ranker,
                          {"SEARCH_FAULT_ERROR_RATIO": "0.5"})
        servers.append(failing)
        yield Rehearsal(bundle, logs, stable, slow, failing)
    finally:
        for server in reversed(servers):
            server.stop()


def shopserve(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The ``shopserve`` command, in a child process (it starts locust, which monkey-patches)."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    print(f"$ shopserve {' '.join(args)}  ({time.monotonic() - start:.0f}s, exit {done.returncode})")
    print(done.stdout[-6000:], done.stderr[-3000:])
    return done


# ------------------------------------------------------------------------------------ loadtest


def test_loadtest_writes_reports_and_meets_a_reachable_slo(rehearsal: Rehearsal, tmp_path: Path) -> None:
    done = shopserve("loadtest", "--host", rehearsal.stable.http_url, "--bundle", str(rehearsal.bundle),
                     "-u", "3", "-t", "4", "--slo", SLO, "--out", str(tmp_path), "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SLO met" in done.stdout
    with open(tmp_path / "load_stats.csv", newline="") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    # URLs grouped by kind: searches and recommendations (empty query) both in the mix.
    assert {"search", "recommend", "Aggregated"} <= set(rows)
    assert int(rows["Aggregated"]["Request Count"]) > 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    assert all(row["Type"] in ("POST", "") for row in rows.values())
    assert (tmp_path / "load.html").read_text().lstrip().lower().startswith("<!doctype html")
    summary = json.loads((tmp_path / "load-summary.json").read_text())
    # The CSV is final when the run time ends; the summary also counts the requests that were in
    # flight then (at most one per user), which locust lets finish (--stop-timeout).
    assert 0 <= summary["total"]["requests"] - int(rows["Aggregated"]["Request Count"]) <= 3
    assert summary["violations"] == []
    # Every request reached the search model's v2 endpoint and was answered 200 there.
    metrics = _metric(rehearsal.stable, "shopserve_requests_total", f'code="200",model="{SEARCH_MODEL}"')
    assert metrics >= summary["total"]["requests"]


def test_loadtest_exits_non_zero_on_a_missed_slo(rehearsal: Rehearsal, tmp_path: Path) -> None:
    done = shopserve("loadtest", "--host", rehearsal.stable.http_url, "--bundle", str(rehearsal.bundle),
                     "-u", "2", "-t", "3", "--slo", SLO, "--p95-ms", "0.01", "--out", str(tmp_path),
                     "--quiet")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "SLO MISSED" in done.stdout and "p95_ms" in done.stdout
    summary = json.loads((tmp_path / "load-summary.json").read_text())
    assert [v["metric"] for v in summary["violations"]] == ["p95_ms"]
    assert (tmp_path / "load_stats.csv").is_file() and (tmp_path / "load.html").is_file()


def test_loadtest_counts_injected_failures(rehearsal: Rehearsal, tmp_path: Path) -> None:
    done = shopserve("loadtest", "--host", rehearsal.failing.http_url, "--bundle",
                     str(rehearsal.bundle), "-u", "2", "-t", "3", "--rate-per-user", "0", "--slo", SLO,
                     "--out", str(tmp_path), "--quiet")
    assert done.returncode == 1
    summary = json.loads((tmp_path / "load-summary.json").read_text())
    assert summary["total"]["requests"] >= 20  # back to back: injected failures answer at once
    assert 0.15 < summary["total"]["failure_ratio"] < 0.85
    assert summary["violations"][0]["metric"] == "failure_ratio"
    with open(tmp_path / "load_failures.csv", newline="") as handle:
        errors = " ".join(row["Error"] for row in csv.DictReader(handle))
    assert "injected failure" in errors  # the 500 says it was injected, never silently


def _metric(server: Server, name: str, labels: str) -> float:
    import httpx

    text = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(f"{name}{{") and labels in line)


# ------------------------------------------------------------------------------------ the gate


def test_good_canary_is_promoted_through_every_step(rehearsal: Rehearsal, tmp_path: Path) -> None:
    # gate --local starts stable and canary itself; the canary differs by a blend weight.
    done = shopserve("gate", "--local", "--stable-bundle", str(rehearsal.bundle),
                     "--candidate-bundle", str(rehearsal.bundle), *GATE_FLAGS,
                     *[f"--search-env={k}={v}" for k, v in BUDGETS.items()],
                     "--canary-env", "SEARCH_WEIGHT_POPULARITY=0.06", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "quality guard: PROMOTE [ranker ndcg@10]" in done.stdout
    assert "PROMOTED after 3 steps (30%, 60%, 100%)" in done.stdout
    assert "local: canary promoted" in done.stdout
    for step in ("step 1/3", "step 2/3", "step 3/3"):
        assert step in done.stdout
    assert len(list(tmp_path.glob("step-*/load_stats.csv"))) >= 3
    # locust's per-request histogram feeds the Mann-Whitney test of each step.
    assert len(list(tmp_path.glob("step-*/load-requests.json"))) >= 3
    assert "one-sided Mann-Whitney U test p=" in done.stdout


@pytest.mark.parametrize(("canary", "metric"), [("slow", "p9"), ("failing", "failure_ratio")])
def test_bad_canary_is_rolled_back_naming_the_metric(rehearsal: Rehearsal, tmp_path: Path,
                                                     canary: str, metric: str) -> None:
    bad: Server = getattr(rehearsal, canary)
    done = shopserve("gate", "--local", "--stable-bundle", str(rehearsal.bundle),
                     "--candidate-bundle", str(rehearsal.bundle), *GATE_FLAGS,
                     "--stable-url", rehearsal.stable.http_url, "--canary-url", bad.http_url,
                     "--out", str(tmp_path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ROLLED BACK at 30% because of " + metric in done.stdout
    verdict = next(line for line in done.stdout.splitlines() if line.startswith("ROLLED BACK"))
    assert " p=" in verdict and "(95% for the gate over" in verdict  # the test, p-value, level
    assert "local: canary rolled back" in done.stdout
    assert "step 2/3" not in done.stdout


def test_quality_drop_rolls_back_before_any_traffic(rehearsal: Rehearsal, tmp_path: Path) -> None:
    candidate = tmp_path / "candidate"
    for component in ("ranker", "recall", "sequence"):
        (candidate / component).mkdir(parents=True)
        manifest = json.loads((rehearsal.bundle / component / "manifest.json").read_text())
        if component == "ranker":
            manifest["metrics"]["ndcg_at_10"] -= 0.05
        (candidate / component / "manifest.json").write_text(json.dumps(manifest))
    done = shopserve("gate", "--local", "--stable-bundle", str(rehearsal.bundle),
                     "--candidate-bundle", str(candidate), *GATE_FLAGS, "--out", str(tmp_path / "r"))
    assert done.returncode == 1
    assert "ROLLED BACK at 0% because of ranker ndcg@10" in done.stdout
    assert "step 1/3" not in done.stdout


# ------------------------------------------------------------------------- the gate, cluster mode
# The far side of the Kubernetes API cannot run here: tests/fake_kube.py answers GET and PATCH of
# InferenceServices as the API server does. locust measures the real servers above, standing in
# for KServe's prev- (stable) and latest- (canary) tag routes.


def _kubeconfig(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "gate", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "gate"}}],
    }))
    return path


def test_cluster_gate_rolls_back_a_slow_canary_through_the_api(rehearsal: Rehearsal,
                                                              tmp_path: Path) -> None:
    from tests.fake_kube import FakeKubeAPI, knative_search

    with FakeKubeAPI() as api:
        api.put(knative_search(predictor_percent=10), resource_version=3)
        done = shopserve("gate", "-i", "search", "-n", "shopserve", "--kubeconfig",
                         str(_kubeconfig(tmp_path, api.url)), "--url", rehearsal.stable.http_url,
                         "--canary-url", rehearsal.slow.http_url, "--stable-bundle",
                         str(rehearsal.bundle), "--candidate-bundle", str(rehearsal.bundle),
                         *GATE_FLAGS, "--out", str(tmp_path / "r"))
        patches = [p.body["spec"] for p in api.patches()]
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ROLLED BACK at 30% because of p9" in done.stdout
    # The step, then the roll back (Knative: canaryTrafficPercent 0 pins the previous revision).
    assert patches == [{"predictor": {"canaryTrafficPercent": 30}},
                       {"predictor": {"canaryTrafficPercent": 0}}]


def test_cluster_gate_dry_run_prints_every_patch_and_applies_none(rehearsal: Rehearsal,
                                                                 tmp_path: Path) -> None:
    from tests.fake_kube import FakeKubeAPI, knative_search

    with FakeKubeAPI() as api:
        api.put(knative_search(predictor_percent=10), resource_version=3)
        done = shopserve("gate", "-i", "search", "-n", "shopserve", "--kubeconfig",
                         str(_kubeconfig(tmp_path, api.url)), "--dry-run", "--url",
                         rehearsal.stable.http_url, "--canary-url", rehearsal.stable.http_url,
                         "--stable-bundle", str(rehearsal.bundle), "--candidate-bundle",
                         str(rehearsal.bundle), *GATE_FLAGS, "--steps", "50,100",
                         "--out", str(tmp_path / "r"))
        assert api.patches() == []
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PROMOTED after 2 steps" in done.stdout
    path = "PATCH /apis/serving.kserve.io/v1beta1/namespaces/shopserve/inferenceservices/search"
    assert done.stdout.count(path) == 3  # 50%, 100%, promote
    assert '"canaryTrafficPercent": 50' in done.stdout
    assert '"canaryTrafficPercent": null' in done.stdout
    assert "(dry run: not applied)" in done.stdout
