"""A perf run's results rendered from a results.json: the report and summary.json stay byte for
byte what they were (tests/fixtures/perf: a results.json in the layout `aerec perf` writes, with
made-up figures; report_*_layout.md and summary_new_layout.json rendered from it before the
results were typed, with the run folder written as OUT; and the same results as runs before the
peers, rules and ranker/rater wrote them, beside docs/perf-reference/summary.json)."""
import json

import pytest

from perf import analyzer, harness, report
from perf.results import LoadPoint, PerfResults


@pytest.fixture(scope="module")
def results_json(fixtures) -> dict:
    return json.loads((fixtures / "perf" / "perf_results.json").read_text())


def old_layout(r: dict) -> dict:
    """`r` as results.json looked before the peers, the lone user's windows and rules, Model
    Analyzer, the re-read ceilings and the ranker beside the rater (one `autoencoder_onnx`)."""
    r = json.loads(json.dumps(r))
    for k in ("runs", "http", "c1_windows", "c1_rules_windows", "model_analyzer"):
        r.pop(k)
    r["networks"] = ["autoencoder_onnx"]
    for k in ("readings", "readings_steal", "ranker_onnx", "rater_onnx"):
        r["baselines"].pop(k)
    r["ensemble"]["recommend_grpc_b64"].pop("ort_inprocess")
    for key in ("recommend_grpc", "recommend_http"):
        r["ensemble"][key].pop("dropped")
        for row in r["ensemble"][key]["rows"]:
            row.pop("stable")
            row.pop("steal")
    r["model_level"] = {k.replace("rater_onnx", "autoencoder_onnx"):
                        dict(v, model=v["model"].replace("rater_onnx", "autoencoder_onnx"))
                        for k, v in r["model_level"].items() if not k.startswith("ranker")}
    for t in [*r["tuning"]["trials"], r["tuning"]["best"], r["tuning"]["default"]]:
        for k in ("score", "batched_users_per_s", "c1_req_per_s", "c1_p50_ms", "c1_p99_ms", "steal",
                  "command_batched", "command_c1"):
            t.pop(k)
        t["server_time"] = {("autoencoder_onnx" if k == "rater_onnx" else k): v
                            for k, v in t["server_time"].items() if k != "ranker_onnx"}
    r["tuning"].pop("p99_budget_ms")
    r["server_time"] = r["tuning"]["default"]["server_time"]
    return r


def rendered(out, results: PerfResults, summary: dict) -> str:
    report.write_report(out, results, summary)
    return (out / "report.md").read_text().replace(str(out), "OUT")


def test_results_json_round_trips_key_for_key(results_json):
    """to_dict writes back exactly the layout read (keys, their order, values), and the typed
    results survive a trip through JSON."""
    results = PerfResults.from_dict(results_json)
    assert json.dumps(results.to_dict(), indent=2) == json.dumps(results_json, indent=2)
    assert PerfResults.from_dict(json.loads(json.dumps(results.to_dict()))) == results
    assert results.ensemble["recommend_grpc"].dropped[0].concurrency == 64
    assert results.tuning.best.pipeline == "fused" and results.tuning.default.pipeline == "ensemble"
    # An old results.json reads and writes back as it was, but for the budget: None and written.
    old = old_layout(results_json)
    assert PerfResults.from_dict(old).to_dict() == dict(old, tuning=dict(old["tuning"], p99_budget_ms=None))
    # The first lone-user windows had no wait before them; the first trials no more than a command.
    first = dict(old, c1_windows=[{k: v for k, v in w.items() if k != "waited_s"} for w in results_json["c1_windows"]])
    first["tuning"] = {k: {"tuning": t["tuning"], "throughput": t["throughput"], "p99_ms": t["p99_ms"],
                           "command": t["command"]} for k, t in old["tuning"].items() if k != "trials"}
    first["tuning"]["trials"] = [first["tuning"]["default"], first["tuning"]["best"]]
    assert PerfResults.from_dict(first).to_dict() == dict(first, tuning=dict(first["tuning"], p99_budget_ms=None))


def test_report_and_summary_from_results_json_are_unchanged(results_json, fixtures, tmp_path):
    results = PerfResults.from_dict(json.loads(json.dumps(PerfResults.from_dict(results_json).to_dict())))
    summary = harness.summarise(results)
    assert json.dumps(summary, indent=2) == (fixtures / "perf" / "summary_new_layout.json").read_text()
    assert rendered(tmp_path, results, summary) == (fixtures / "perf" / "report_new_layout.md").read_text()


def test_report_from_an_old_results_json_and_the_reference_summary_is_unchanged(results_json, fixtures, tmp_path):
    reference = json.loads((fixtures.parent.parent / "docs" / "perf-reference" / "summary.json").read_text())
    assert (rendered(tmp_path, PerfResults.from_dict(old_layout(results_json)), reference)
            == (fixtures / "perf" / "report_old_layout.md").read_text())


def test_perf_analyzer_csv_parses_into_load_points_in_ms():
    text = ("Concurrency,Inferences/Second,Client Send,p50 latency,p90 latency,p95 latency,p99 latency,"
            "Avg latency,Server Queue,Server Compute Infer\n"
            "1,812.5,10,1100,1300,1400,1700,1150,50,\n")
    (point,) = analyzer.parse_csv(text)
    assert point == LoadPoint(concurrency=1, throughput=812.5, p50_ms=1.1, p90_ms=1.3, p95_ms=1.4, p99_ms=1.7,
                              avg_ms=1.15, server_queue_ms=0.05, server_compute_ms=None)
    # A parsed row is written without stable/steal; a measured one with them, then users/s if set.
    assert list(point.to_dict())[-1] == "server_compute_ms"
    assert list(point.measured(True, None).in_users().to_dict())[-3:] == ["stable", "steal", "users_per_s"]
    assert LoadPoint.from_dict(point.measured(False, 0.1).to_dict()) == point.measured(False, 0.1)
