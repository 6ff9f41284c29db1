"""A Grafana dashboard (JSON model, Prometheus data source) over what a served repository
exports on Triton's metrics endpoint: the recommendation metrics of serving/metrics.py, per
pipeline version, and Triton's own per-model counters.

`aerec deploy kubernetes` writes it as grafana/aerec-dashboard.json; import it in Grafana
(Dashboards > New > Import) or provision it from a ConfigMap. Every panel's PromQL names only
metrics a live server exports (tests/server/test_side_by_side.py scrapes one).
"""
from __future__ import annotations

import json
import re

from serving.metrics import FALLBACK, LIST_LENGTH, ROWS

DASHBOARD_FILE = "grafana/aerec-dashboard.json"
WINDOW = "5m"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# (title, unit, [(PromQL, legend)]): rates per pipeline version and Triton's per-model counters.
PANELS = [
    ("Users answered per second, by version", "reqps",
     [(f"sum by (version) (rate({ROWS}[{WINDOW}]))", "version {{version}}")]),
    ("Popularity fallback share, by version", "percentunit",
     [(f"sum by (version) (rate({FALLBACK}[{WINDOW}])) / clamp_min(sum by (version) (rate({ROWS}[{WINDOW}])), 1e-9)",
       "version {{version}}")]),
    ("Mean list length (N_RECOMMENDED), by version", "short",
     [(f"sum by (version) (rate({LIST_LENGTH}_sum[{WINDOW}])) / "
       f"clamp_min(sum by (version) (rate({LIST_LENGTH}_count[{WINDOW}])), 1e-9)", "version {{version}}")]),
    ("Lists of 5 items or fewer per second, by version", "reqps",
     [(f'sum by (version) (rate({LIST_LENGTH}_bucket{{le="5"}}[{WINDOW}]))', "version {{version}} (<= 5)")]),
    ("Successful requests per second, by model and version", "reqps",
     [(f"sum by (model, version) (rate(nv_inference_request_success[{WINDOW}]))", "{{model}} v{{version}}")]),
    ("Queue time per request (us), by model", "µs",
     [(f"sum by (model) (rate(nv_inference_queue_duration_us[{WINDOW}])) / "
       f"clamp_min(sum by (model) (rate(nv_inference_request_success[{WINDOW}])), 1e-9)", "{{model}}")]),
]

# A metric name in PromQL: an identifier followed by `{`, `[` or `)`, that is no function name.
_NAME = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?=[{\[])")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (a selector: a name before `{` or `[`)."""
    return set(_NAME.findall(expr))


def dashboard() -> dict:
    """The dashboard's JSON model: one timeseries panel per PANELS entry, two per row."""
    panels = []
    for i, (title, unit, targets) in enumerate(PANELS):
        panels.append({
            "id": i + 1, "type": "timeseries", "title": title, "datasource": DATASOURCE,
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(ord("A") + j), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
                        for j, (expr, legend) in enumerate(targets)]})
    return {
        "title": "aerec recommendations", "uid": "aerec-recommendations", "schemaVersion": 39, "version": 1,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "30s", "tags": ["aerec", "triton"],
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus"}]},
        "panels": panels}


def dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"
