"""A perf run's results rendered from a results.json: the report and summary.json stay byte for
byte what they were (tests/fixtures/perf: a results.json in the layout `aerec perf` writes, and
the same results as runs before the peers, rules and ranker/rater wrote them)."""
import json

import pytest

from perf import harness, report


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


def rendered(out, results, summary) -> str:
    report.write_report(out, results, summary)
    return (out / "report.md").read_text().replace(str(out), "OUT")


def test_report_and_summary_from_results_json_are_unchanged(results_json, fixtures, tmp_path):
    summary = harness.summarise(results_json)
    assert json.dumps(summary, indent=2) == (fixtures / "perf" / "summary_new_layout.json").read_text()
    assert rendered(tmp_path, results_json, summary) == (fixtures / "perf" / "report_new_layout.md").read_text()


def test_report_from_an_old_results_json_and_the_reference_summary_is_unchanged(results_json, fixtures, tmp_path):
    reference = json.loads((fixtures.parent.parent / "docs" / "perf-reference" / "summary.json").read_text())
    assert (rendered(tmp_path, old_layout(results_json), reference)
            == (fixtures / "perf" / "report_old_layout.md").read_text())
