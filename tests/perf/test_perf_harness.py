"""The perf pieces against real parts: perf_analyzer (the wheel's binary) driving a real server
with input data made from real held-out ML-100K users; the roofline's FLOP count by hand."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from builder.config import TrainConfig
from builder.export import export_onnx_fp32
from builder.train import make_model
from perf import analyzer, baselines, harness, inputs, load, report, steal
from perf.results import LoadPoint, LoneUserWindow, TuningTrial

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(small_model_server):
    return small_model_server


def test_input_data_is_real_held_out_users(u1, tmp_path):
    users = inputs.held_out_users(u1.test, u1.train, 5)
    assert all(u1.test[u].nnz > 0 and u1.train[u].nnz > 0 for u in users)
    data = inputs.ensemble_ratings_data(u1.train, u1.item_ids, users)["data"]
    first = data[0]
    row = u1.train[users[0]]
    assert first["ITEM_IDS"]["content"] == u1.item_ids[row.indices].tolist()
    assert first["RATINGS"]["shape"] == [row.nnz] and all(isinstance(v, float) for v in first["RATINGS"]["content"])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_perf_analyzer_measures_the_ensemble(server, u1, tmp_path, protocol):
    users = inputs.held_out_users(u1.test, u1.train, 16)
    data = inputs.write(inputs.ensemble_ratings_data(u1.train, u1.item_ids, users), tmp_path / "data.json")
    url = server.grpc_url if protocol == "grpc" else server.http_url
    run = analyzer.run("recommend", url, protocol, data, tmp_path / "out.csv", concurrency="2", interval_ms=500)
    (row,) = run.rows
    assert row.concurrency == 2 and row.throughput > 0 and row.stable is not None
    assert 0 < row.p50_ms <= row.p99_ms
    assert "--input-data" in run.command and str(data) in run.command
    # Every row says how much CPU the host took during its window (Linux: always known).
    assert 0 <= run.steal <= 1 and row.steal == run.steal


def test_high_concurrency_http_is_driven_by_a_few_async_threads(server, u1, tmp_path):
    """64 requests in flight over HTTP: the load perf_analyzer's blocking mode starved itself on."""
    users = inputs.held_out_users(u1.test, u1.train, 16)
    data = inputs.write(inputs.ensemble_ratings_data(u1.train, u1.item_ids, users), tmp_path / "data.json")
    run = analyzer.run("recommend", server.http_url, "http", data, tmp_path / "out.csv", concurrency="64",
                       interval_ms=500, timeout_s=120)
    (row,) = run.rows
    assert row.concurrency == 64 and row.throughput > 0
    assert run.command[run.command.index("--max-threads") + 1] == str(analyzer.CLIENT_THREADS)
    assert "--async" in run.command
    low = analyzer.run("recommend", server.http_url, "http", data, tmp_path / "low.csv", concurrency="2",
                       interval_ms=500)
    assert "--async" not in low.command   # the lone and few users keep one blocking thread each


def test_missing_perf_analyzer_is_named(monkeypatch):
    monkeypatch.setattr(analyzer.shutil, "which", lambda name: None)
    monkeypatch.setattr(analyzer.sys, "executable", "/nonexistent/bin/python")
    with pytest.raises(analyzer.PerfAnalyzerMissing, match="tritonclient\\[all\\]==2.50.0"):
        analyzer.binary()


def test_flops_per_user_counts_every_weight_matrix(tmp_path):
    model = make_model(TrainConfig(model="deeprec", hidden=[32, 16], last_activation=False), 100).eval()
    export_onnx_fp32(model, 100, tmp_path / "m.onnx")
    # 100->32->16->32->100: 2 * (100*32 + 32*16 + 16*32 + 32*100)
    assert baselines.flops_per_user(tmp_path / "m.onnx") == 2 * (3200 + 512 + 512 + 3200)


def test_load_generator_counts_errors_and_successes(server):
    host, port = server.http_url.split(":")
    good = load.triton_bodies([([50, 172], [5.0, 4.0])])
    bad = [json.dumps({"inputs": [{"name": "TOP_K", "datatype": "INT32", "shape": [1, 1], "data": [10]}]}).encode()]
    ok = load.drive(host, int(port), "/v2/models/recommend/infer", good, 2, 1.0)
    assert ok.requests > 0 and ok.errors == 0
    err = load.drive(host, int(port), "/v2/models/recommend/infer", bad, 1, 0.5)
    assert err.requests == 0 and err.errors > 0 and "empty request" in err.first_error


def test_torch_baselines_on_real_users(u1):
    users = inputs.held_out_users(u1.test, u1.train, 8)
    x = u1.train[users].toarray().astype(np.float32)
    model = make_model(TrainConfig(model="deeprec", hidden=[32]), x.shape[1]).eval()
    torch.set_num_threads(2)
    assert baselines.torch_one_per_forward(model, x, 0.1) > 0
    assert baselines.torch_batched(model, x, 64, 0.1) > 0


def test_steal_share_from_proc_stat_fields():
    # user nice system idle iowait irq softirq steal: 30 of 100 jiffies stolen.
    before = [100, 0, 10, 500, 0, 0, 0, 40]
    after = [150, 0, 20, 510, 0, 0, 0, 70]
    assert steal.steal_share(before, after) == pytest.approx(30 / 100)
    assert steal.steal_share(before, before) is None and steal.steal_share(None, after) is None
    with steal.Window() as w:
        sum(range(2_000_000))
    assert w.steal is None or 0 <= w.steal <= 1


def test_wait_quiet_gives_up_after_its_limit():
    # A threshold no probe can meet: it must stop after max_seconds (one probe may overrun).
    res = steal.wait_quiet(threshold=-1.0, max_seconds=0.5, probe_seconds=0.1)
    assert 0.5 <= res["waited_s"] <= 1.0 and (res["steal"] is None or 0 <= res["steal"] <= 1)
    assert steal.wait_quiet(threshold=2.0, max_seconds=5.0, probe_seconds=0.1)["waited_s"] < 1.0  # any probe is quiet


def test_quietest_window_is_chosen_by_steal_not_latency():
    windows = [{"p99_ms": 1.1, "steal": 0.40}, {"p99_ms": 3.0, "steal": 0.02}, {"p99_ms": 0.9, "steal": 0.05}]
    assert steal.quietest(windows)["p99_ms"] == 3.0
    assert steal.quietest([{"p99_ms": 2.0, "steal": None}, {"p99_ms": 1.0, "steal": None}])["p99_ms"] == 2.0


def test_lone_user_is_measured_again_until_a_window_is_quiet(server, u1, tmp_path):
    users = inputs.held_out_users(u1.test, u1.train, 8)
    data = {"ratings": inputs.write(inputs.ensemble_ratings_data(u1.train, u1.item_ids, users), tmp_path / "d.json")}
    plan = harness.Plan.quick()
    plan.interval_ms = 500
    quiet = LoadPoint(concurrency=1, throughput=900.0, p50_ms=1.0, p99_ms=1.5, stable=True, steal=0.0)
    plan.quiet_wait_s = 1.0
    assert harness.c1_windows(server, data, plan, tmp_path, quiet) == [LoneUserWindow(900.0, 1.0, 1.5, 0.0, 0.0)]
    windows = harness.c1_windows(server, data, plan, tmp_path, replace(quiet, steal=0.5), extra=1, quiet=0.0)
    assert len(windows) == 2 and 0 <= windows[1].waited_s <= 1.0 + 0.5  # one probe may overrun the wait
    assert windows[1].p99_ms >= windows[1].p50_ms > 0 and 0 <= windows[1].steal <= 1


def test_rules_input_data_is_accepted_and_lists_stay_k_long(server, u1, tmp_path):
    """The rules data `aerec perf` sends (50 EXCLUDE_IDS, 200 INCLUDE_IDS per request) is valid for
    the served config: perf_analyzer measures the lone user with and without it in one pair, and
    each request's list is K long, within its INCLUDE_IDS, none of its EXCLUDE_IDS nor its rated items."""
    import tritonclient.grpc as grpcclient
    users = inputs.held_out_users(u1.test, u1.train, 8)
    k = 10
    rules = inputs.ensemble_rules_data(u1.train, u1.item_ids, users, top_k=k)
    data = {"ratings": inputs.write(inputs.ensemble_ratings_data(u1.train, u1.item_ids, users, k), tmp_path / "d.json"),
            "ratings_rules": inputs.write(rules, tmp_path / "r.json")}
    plan = harness.Plan.quick()
    plan.interval_ms, plan.quiet_wait_s = 500, 1.0
    (pair,) = harness.c1_rules_windows(server, data, plan, tmp_path, extra=0)
    assert str(data["ratings_rules"]) in pair.command_rules and str(data["ratings"]) in pair.command_plain
    for side in (pair.plain, pair.rules):
        assert side.throughput > 0 and 0 < side.p50_ms <= side.p99_ms
    assert pair.p99_ratio == pytest.approx(pair.rules.p99_ms / pair.plain.p99_ms) and pair.first == "plain"
    summary = harness.rules_summary([pair], 2.0)
    assert summary["rules"]["p99_ms"] == pair.rules.p99_ms
    assert summary["within_target"] == (pair.rules.p99_ms <= 2.0)
    section = "\n".join(report.rules_section({}, [pair], summary))
    assert f"| with / without | {pair.p50_ratio:.2f} | {pair.p99_ratio:.2f} |" in section
    assert " ".join(pair.command_rules) in section
    client = grpcclient.InferenceServerClient(server.grpc_url)
    for request in json.loads(data["ratings_rules"].read_text())["data"]:
        exclude, include = request["EXCLUDE_IDS"]["content"], request["INCLUDE_IDS"]["content"]
        assert len(exclude) == 50 == len(set(exclude)) and len(include) == 200 == len(set(include))
        tensors = []
        for name, dtype in (("ITEM_IDS", np.int64), ("RATINGS", np.float32), ("TOP_K", np.int32),
                            ("EXCLUDE_IDS", np.int64), ("INCLUDE_IDS", np.int64)):
            value = np.asarray([request[name]["content"]], dtype)
            tensors.append(grpcclient.InferInput(name, list(value.shape), {np.int64: "INT64", np.float32: "FP32",
                                                                          np.int32: "INT32"}[dtype]))
            tensors[-1].set_data_from_numpy(value)
        ids = client.infer("recommend", tensors).as_numpy("RECOMMENDED_IDS")[0].tolist()
        assert len(ids) == k and len(set(ids)) == k
        assert set(ids) <= set(include) - set(exclude) - set(request["ITEM_IDS"]["content"])


def test_rule_columns_are_distinct_seeded_and_bounded():
    draws = inputs.rule_columns(1682, 3, seed=7)
    assert all(len(set(e)) == 50 and len(set(i)) == 200 and e.max() < 1682 and i.max() < 1682 for e, i in draws)
    again = inputs.rule_columns(1682, 3, seed=7)
    assert all((e1 == e2).all() and (i1 == i2).all() for (e1, i1), (e2, i2) in zip(draws, again))
    assert not (draws[0][1] == draws[1][1]).all()   # drawn per request
    with pytest.raises(ValueError, match="200 rule ids from a catalogue of 100"):
        inputs.rule_columns(100, 1)


def test_roof_is_read_beside_each_served_window(server, u1, tmp_path):
    users = inputs.held_out_users(u1.test, u1.train, 8)
    data = inputs.write(inputs.model_data(u1.train, users), tmp_path / "m.json")
    plan = harness.Plan.quick()
    plan.interval_ms = 500
    flops = 10_000
    res = harness.paired_roof(server, "rater_onnx", data, flops, plan, tmp_path, reps=2)
    first, second = res.windows
    assert first.roof_gflops[1] == second.roof_gflops[0]  # one reading between two windows
    for w in (first, second):
        assert w.users_per_s > 0
        assert w.fraction == pytest.approx(w.users_per_s * flops / 1e9 / max(w.roof_gflops))
    assert res.fraction == pytest.approx((first.fraction + second.fraction) / 2)  # the median of two
    assert res.shared_memory and all(x.users_per_s == x.throughput for x in res.rows)
    # Tensors went through system shared memory, registered with the admin key, which is not kept.
    assert "--shared-memory" in res.command and "<admin key>" in " ".join(res.command)
    assert server.admin_key not in " ".join(res.command)


def test_perf_analyzer_past_its_limit_is_a_named_timeout(server, u1, tmp_path):
    users = inputs.held_out_users(u1.test, u1.train, 4)
    data = inputs.write(inputs.ensemble_ratings_data(u1.train, u1.item_ids, users), tmp_path / "d.json")
    with pytest.raises(analyzer.PerfAnalyzerTimeout, match="did not finish in 1 s.*-m recommend"):
        analyzer.run("recommend", server.grpc_url, "grpc", data, tmp_path / "o.csv", concurrency="1",
                     interval_ms=5000, timeout_s=1)


def test_tuning_chooses_the_best_score_within_the_latency_budget():
    trial = lambda name, score, p99: TuningTrial({"name": name}, 1.0, 1.0, score=score, c1_p99_ms=p99)  # noqa: E731
    fast_tail, within, slower = trial("a", 900.0, 2.6), trial("b", 800.0, 1.6), trial("c", 500.0, 1.2)
    assert harness.best_trial([fast_tail, within, slower], 2.0) is within
    assert harness.best_trial([fast_tail, within, slower], None) is fast_tail   # no constraint: score alone
    # No trial meets the budget: the best score of all, as Model Analyzer falls back.
    assert harness.best_trial([fast_tail, replace(within, c1_p99_ms=3.0)], 2.0) is fast_tail


def test_bench_large_profiles_every_layer_and_runs_sessions_side_by_side(u1, tmp_path):
    from benchmarks import bench_large
    model = make_model(TrainConfig(model="deeprec", hidden=[32, 16], last_activation=False), u1.n_items).eval()
    export_onnx_fp32(model, u1.n_items, tmp_path / "m.onnx")
    x = u1.train[:8].toarray().astype(np.float32)
    profile = bench_large.layer_profile(tmp_path / "m.onnx", x, runs=5)
    assert sum("Gemm" in node for node in profile) == 4 and all(us > 0 for us in profile.values())
    assert bench_large.concurrent_sessions(tmp_path / "m.onnx", x, sessions=2, threads=1, seconds=0.3) > 0


class _CountedSession:
    """A real ONNX Runtime session that records the batch size of each run (the timed loops
    call only get_inputs and run)."""

    def __init__(self, session):
        self.session, self.batches = session, []

    def get_inputs(self):
        return self.session.get_inputs()

    def run(self, outputs, feed):
        self.batches.append(len(next(iter(feed.values()))))
        return self.session.run(outputs, feed)


def test_pipeline_baselines_run_every_network(u1, tmp_path):
    """A ranker + rater pipeline's in-process figures run both networks: FLOPs add up, and every
    timed step runs each session once on the same batch. (Counted, not timed: which of two
    rates is higher is a benchmark's question on a shared machine, not a unit test's.)"""
    users = inputs.held_out_users(u1.test, u1.train, 8)
    x = u1.train[users].toarray().astype(np.float32)
    torch.manual_seed(0)
    paths = []
    for name, hidden in (("a", [256]), ("b", [128])):
        model = make_model(TrainConfig(model="deeprec", hidden=hidden), x.shape[1]).eval()
        export_onnx_fp32(model, x.shape[1], tmp_path / f"{name}.onnx")
        paths.append(tmp_path / f"{name}.onnx")
    one, two = (baselines.flops_per_user(p) for p in paths)
    assert baselines.flops_per_user(paths) == one + two
    sessions = [_CountedSession(baselines.ort_session(p, threads=1)) for p in paths]
    assert baselines.ort_batched(sessions, x, 64, 0.3) > 0
    assert sessions[0].batches == sessions[1].batches and sessions[0].batches[0] == 64
    assert baselines.ort_batched(sessions[0], x, 64, 0.3) > 0
    assert len(sessions[0].batches) > len(sessions[1].batches)   # alone: the other one stays idle
    # The ceiling also tries one single-thread worker per core, each running both graphs.
    assert baselines.ort_batched_parallel(paths, x, 64, 0.2, workers=2) > 0
    assert baselines.ort_ceiling(paths, x, 64, 0.2) > 0


def test_roof_is_the_faster_of_two_gemm_libraries():
    """torch's BLAS and ONNX Runtime's MLAS both multiply 256 x 256 matrices; the roof is at
    least what either reaches (a roof below a served model's own GEMM rate measures nothing)."""
    import time
    torch.set_num_threads(2)
    a = torch.randn(256, 256)
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < 0.2:
        torch.mm(a, a)
        calls += 1
    torch_gflops = calls * 2 * 256 ** 3 / (time.perf_counter() - start) / 1e9
    assert baselines.gemm_peak_gflops(256, seconds=0.4) > 0.5 * torch_gflops


def test_naive_service_ranks_by_the_ranker_and_returns_the_raters_predictions(u1, tmp_path):
    """The hand-written baseline serves the same two networks as `recommend`: its list is the
    offline top-K of the ranker, its predicted ratings the rater's at those items."""
    import http.client
    import threading

    from serving.ranking import top_k_unrated
    from builder.run_folder import load_run
    from conftest import ranker_and_rater_runs
    from perf.naive_service import serve
    ranker, _, rater, _ = ranker_and_rater_runs(u1)
    httpd = serve(ranker, 0, threads=1, rating_run=rater)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        items, ratings = [50, 172, 181], [5.0, 4.0, 5.0]
        conn = http.client.HTTPConnection("127.0.0.1", httpd.server_address[1], timeout=10)
        conn.request("POST", "/recommend", json.dumps({"item_ids": items, "ratings": ratings, "k": 10}))
        answer = json.loads(conn.getresponse().read())
    finally:
        httpd.shutdown()
    x = np.zeros((1, u1.n_items), np.float32)
    x[0, u1.item_index(items)] = ratings
    with torch.no_grad():
        scores = load_run(ranker)[1](torch.from_numpy(x)).numpy()
        predicted = load_run(rater)[1](torch.from_numpy(x)).numpy()
    top = top_k_unrated(scores, x != 0, 10)[0]
    assert answer["item_ids"] == u1.item_ids[top].tolist()
    assert np.allclose(answer["predicted_ratings"], predicted[0, top], atol=1e-5)
