"""The chart's PromQL names only series the servers export (``shopserve.metric_names``).

PromQL cannot import Python, so this is where a renamed metric would be caught: every metric name
in the PrometheusRule, the dashboard and the autoscaling queries must be one the servers export,
one of Triton's, or one of the few series of other systems the chart reads on purpose.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
import yaml

from pipeline.rollout.manifests import RENDERS, Render
from shopserve import metric_names
from shopserve.drift import SIGNALS
from shopserve.protocol import QUERY_ENCODER_MODEL, RANKER_MODEL, SEQUENCE_MODEL
from tests.charts.conftest import CHART, Obj, by_kind

#: Series of other systems the chart reads on purpose (Knative queue-proxy, Istio, Prometheus).
EXTERNAL = {"revision_app_request_count", "istio_requests_total", "up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
#: PromQL functions and keywords that look like identifiers before "(" or "{".
PROMQL_WORDS = {"sum", "rate", "max", "min", "avg", "count", "histogram_quantile", "scalar", "by",
                "without", "irate", "increase", "on", "ignoring", "and", "or", "unless", "le"}
SERIES = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{")


def known(name: str) -> bool:
    """Whether a series name is exported by a shopserve server, Triton, or an allowed system."""
    exported = set(metric_names.SHOPSERVE_METRICS) | set(metric_names.TRITON_METRICS) | EXTERNAL
    if name in exported:
        return True
    return any(name.endswith(s) and name[: -len(s)] in exported for s in HISTOGRAM_SUFFIXES)


def series(expr: str) -> set[str]:
    """Metric names selected with a label matcher in a PromQL expression."""
    return {m for m in SERIES.findall(expr) if m not in PROMQL_WORDS}


def test_dashboard_queries_name_exported_series() -> None:
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    names = set().union(*(series(e) for e in exprs))
    assert metric_names.DRIFT_PSI in names
    assert not {n for n in names if not known(n)}, "dashboard reads series no server exports"
    # Each model on Triton has its inference rate and its queue and compute time.
    for model in (RANKER_MODEL, SEQUENCE_MODEL, QUERY_ENCODER_MODEL):
        selected = [e for e in exprs if f'model="{model}"' in e]
        assert {"nv_inference_request_success", "nv_inference_queue_duration_us",
                "nv_inference_compute_infer_duration_us"} <= set().union(*(series(e) for e in selected))
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "dashboard panel ids must be unique"


@pytest.mark.parametrize("target", [r for r in RENDERS if r.env != "dev"], ids=lambda r: r.folder)
def test_alert_expressions_name_exported_series(target: Render,
                                                rendered: dict[Render, list[Obj]]) -> None:
    rules = by_kind(rendered[target], "PrometheusRule")
    exprs = [r["expr"] for g in rules[0]["spec"]["groups"] for r in g["rules"]]
    names = set().union(*(series(e) for e in exprs))
    assert not {n for n in names if not known(n)}, "an alert reads series no server exports"
    groups = {g["name"]: g["rules"] for g in rules[0]["spec"]["groups"]}
    assert {r["labels"]["signal"] for r in groups["shopserve.drift"]} == set(SIGNALS)


def test_drift_thresholds_name_every_signal() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    drift = values["monitoring"]["prometheusRule"]["drift"]
    camel = {s.split("_")[0] + "".join(p.capitalize() for p in s.split("_")[1:]) for s in SIGNALS}
    assert set(drift["thresholds"]) == camel
    assert all(0 < t for t in drift["thresholds"].values())


def test_no_alert_when_drift_alerts_are_off(render: Callable[..., list[Obj]]) -> None:
    objects = render("staging", "Knative", "monitoring.prometheusRule.drift.enabled=false")
    rules = by_kind(objects, "PrometheusRule")
    assert "shopserve.drift" not in {g["name"] for g in rules[0]["spec"]["groups"]}
