"""Recommendation-level metrics on Triton's metrics endpoint (GET /metrics, Prometheus text).

The postprocess model (and the fused model) count what they answer through the Python
backend's custom metrics API (`pb_utils.MetricFamily`, present in Triton 2.51's stub:
COUNTER, GAUGE and HISTOGRAM), labelled with the pipeline's version (the ranking network's,
written by the build into `served.json`, builder/previous.py) and that network's name, so two
versions served side by side (`recommend`, `recommend_previous`) are told apart:

- `aerec_recommendation_rows_total` (counter): users (rows) answered;
- `aerec_popularity_fallback_total` (counter): of those, rows SOURCE says `popularity` (a cold
  start, or no positive input for the ranker);
- `aerec_list_length` (histogram: `_bucket`, `_sum`, `_count`): N_RECOMMENDED per row.

Triton merges a family created by several model instances or versions (the same name, kind
and description) into one, each label set its own series.
"""
from __future__ import annotations

import json
import os

import numpy as np

from serving import contract

ROWS = "aerec_recommendation_rows_total"
FALLBACK = "aerec_popularity_fallback_total"
LIST_LENGTH = "aerec_list_length"
LIST_LENGTH_BUCKETS = [0.0, 1.0, 5.0, 10.0, 20.0, 50.0, 100.0]
SERVED_FILE = "served.json"
NAMES = (ROWS, FALLBACK, LIST_LENGTH)


def labels(version_dir: str, model_version: str) -> dict[str, str]:
    """{"network": ranking network, "version": its version} from the build's served.json in
    `version_dir`; a build without one: {"network": "", "version": the step's own version}."""
    path = os.path.join(version_dir, SERVED_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            served = json.load(f)
        network = served.get("ranker") or served.get("rater") or ""
        version = served.get("version")
        return {"network": network, "version": str(version if version is not None else model_version)}
    return {"network": "", "version": str(model_version)}


def row_counts(answers: list[tuple]) -> tuple[int, int, np.ndarray]:
    """(rows, popularity rows, N_RECOMMENDED of every row int [rows]) of one execute's answers
    (serving.lists.Lists.package's tuples: ids, scores, ratings, titles, n_recommended [size, 1],
    source [size, 1] or None)."""
    lengths = [np.asarray(a[4]).reshape(-1) for a in answers]
    sources = [np.asarray(a[5]).reshape(-1) for a in answers if len(a) > 5 and a[5] is not None]
    n = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    cold = sum(int((s == contract.SOURCE_POPULARITY).sum()) for s in sources)
    return len(n), cold, n


class RecommendationMetrics:
    """The three metrics of one model version. `pb_utils`: the stub's module (passed in: it
    exists only inside Triton). Where the API is missing (an older server) it records nothing."""

    def __init__(self, pb_utils, version_dir: str, model_version: str):
        self.enabled = hasattr(pb_utils, "MetricFamily")
        if not self.enabled:
            return
        fam = pb_utils.MetricFamily
        lab = labels(version_dir, model_version)
        self._families = [
            fam(name=ROWS, description="users (rows) answered", kind=fam.COUNTER),
            fam(name=FALLBACK, description="rows ranked by popularity (SOURCE popularity)", kind=fam.COUNTER),
            fam(name=LIST_LENGTH, description="N_RECOMMENDED per row", kind=fam.HISTOGRAM)]
        self.rows = self._families[0].Metric(labels=lab)
        self.fallback = self._families[1].Metric(labels=lab)
        self.length = self._families[2].Metric(labels=lab, buckets=LIST_LENGTH_BUCKETS)
        # The fallback series exists from load on (0 until a popularity row): a request with no
        # cold row then makes no call for it, one round trip to Triton's server process less.
        self.fallback.increment(0)

    def record(self, answers: list[tuple]) -> None:
        """Count one execute's answers (see row_counts)."""
        if not self.enabled:
            return
        rows, cold, lengths = row_counts(answers)
        self.rows.increment(rows)
        if cold:
            self.fallback.increment(cold)
        for n in lengths:
            self.length.observe(float(n))
