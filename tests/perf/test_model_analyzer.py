"""The Model Analyzer config aerec writes (local launch mode on our tritonserver) and the reading
of its results. A real `model-analyzer profile` takes minutes (a server start and perf_analyzer
windows per configuration), so it runs in `aerec perf --model-analyzer`, not here:

    .venv/bin/model-analyzer profile -f perf/results/latest/model_analyzer/<model>/config.yaml
"""
import os
import sys
from pathlib import Path

from perf import analyzer
from perf import model_analyzer as ma
from perf.peers import bench
from server.launcher import WHEEL, WHEEL_LIBS

# Model Analyzer 1.58's own CSV (a real run's header and rows, ML-100K rater network).
CSV = """Model,Batch,Concurrency,Model Config Path,Instance Group,Max Batch Size,Satisfies Constraints,\
Throughput (infer/sec),p99 Latency (ms)
rater_onnx,1,16,rater_onnx_config_0,1:CPU,64,No,5800.2,14.8
rater_onnx,1,1,rater_onnx_config_1,2:CPU,64,Yes,1500.0,1.4
rater_onnx,1,16,rater_onnx_config_default,1:CPU,256,No,5382.8,15.2
"""


def test_config_launches_our_server_locally_with_our_backends_and_perf_analyzer(tmp_path):
    search = ma.Search({"ranker_onnx": None, "recommend": tmp_path / "ratings.json"},
                       {"recommend": ["preprocess", "ranker_onnx", "postprocess"]}, p99_budget_ms=2.0)
    cfg = ma.config(tmp_path / "repo", tmp_path / "out", search, tmp_path / "build")
    assert cfg["triton_launch_mode"] == "local"
    assert cfg["triton_server_path"] == str(WHEEL / "bin" / "tritonserver")
    assert Path(cfg["triton_server_path"]).is_file()
    assert cfg["triton_server_flags"]["backend-directory"] == str(tmp_path / "build" / "backends")
    env = cfg["triton_server_environment"]
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)   # the stub's numpy
    libs = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert str(WHEEL_LIBS) in libs and libs.index(str(WHEEL_LIBS)) < libs.index(str(analyzer.install_libs()))
    assert cfg["perf_analyzer_path"] == str(analyzer.binary())
    assert cfg["profile_models"]["recommend"] == {"cpu_only": True,
                                                  "perf_analyzer_flags": {"input-data": str(tmp_path / "ratings.json")}}
    assert cfg["profile_models"]["ranker_onnx"] == {"cpu_only": True}   # random data is fine for a network
    assert cfg["run_config_search_mode"] == "quick"   # Model Analyzer searches ensembles in quick mode
    assert cfg["cpu_only_composing_models"] == ["postprocess", "preprocess", "ranker_onnx"]
    assert cfg["constraints"] == {"perf_latency_p99": {"max": 2.0}}
    assert cfg["run_config_search_max_instance_count"] == 2
    # Quick search refuses a list of concurrencies: it sweeps within bounds; brute search takes the list.
    assert "concurrency" not in cfg and cfg["run_config_search_max_concurrency"] == 16
    assert "dcgm_disable" not in cfg   # Model Analyzer allows it in remote mode only
    ports = {cfg["triton_http_endpoint"], cfg["triton_grpc_endpoint"]}
    assert len(ports) == 2 and all(p.startswith("127.0.0.1:") for p in ports)
    brute = ma.config(tmp_path / "repo", tmp_path / "out", ma.Search({"ranker_onnx": None}), tmp_path / "b")
    assert brute["run_config_search_mode"] == "brute" and brute["concurrency"] == [1, 16]
    path = ma.write_config(tmp_path / "repo", tmp_path / "out", ma.Search({"ranker_onnx": None}), tmp_path / "b")
    assert ma.command(path)[-3:] == ["profile", "-f", str(path)]


def test_results_are_read_and_the_best_is_chosen_within_the_budget(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / ma.RESULTS_CSV).write_text(CSV)
    variant = tmp_path / "variants" / "rater_onnx_config_1"
    variant.mkdir(parents=True)
    (variant / "config.pbtxt").write_text('name: "rater_onnx"\nmax_batch_size: 64\n')
    rows = ma.read_rows(tmp_path / ma.RESULTS_CSV)
    assert [r["throughput"] for r in rows] == [5800.2, 1500.0, 5382.8] and rows[0]["instances"] == "1:CPU"
    best = ma.best_configs(rows, 2.0, tmp_path / "variants")["rater_onnx"]
    assert best["config"] == "rater_onnx_config_1" and best["within_budget"]
    assert "max_batch_size: 64" in best["config_pbtxt"]["rater_onnx_config_1"]
    # None within the budget: the highest throughput of all, as Model Analyzer falls back.
    loose = ma.best_configs(rows, 1.0, tmp_path / "variants")["rater_onnx"]
    assert loose["config"] == "rater_onnx_config_0" and not loose["within_budget"]
    assert ma.read_rows(tmp_path / "missing.csv") == []
    # An ensemble's configuration names its composing models' variants: each one's config comes along.
    (tmp_path / ma.RESULTS_CSV).write_text(
        CSV.splitlines()[0] + '\nrecommend,1,1,"recommend_config_1: preprocess_config_0, rater_onnx_config_1",'
        '"1:CPU,2:CPU","64,64",Yes,510.0,1.4\n')
    for name in ("recommend_config_1", "preprocess_config_0"):
        (tmp_path / "variants" / name).mkdir()
        (tmp_path / "variants" / name / "config.pbtxt").write_text(f'name: "{name}"\n')
    ens = ma.best_configs(ma.read_rows(tmp_path / ma.RESULTS_CSV), 2.0, tmp_path / "variants")["recommend"]
    assert set(ens["config_pbtxt"]) == {"recommend_config_1", "preprocess_config_0", "rater_onnx_config_1"}


def _rows(pairs):
    return [{"concurrency": c, "throughput": tp, "users_per_s": tp, "requests": 100, "errors": 0, "p50_ms": p99 / 2,
             "p99_ms": p99} for c, tp, p99 in pairs]


def test_peer_ratios_compare_each_shape_at_each_servers_best_concurrency():
    def server(one, many):
        shapes = {"1": _rows(one), "64": _rows(many)}
        return {"shapes": shapes, "figures": {k: bench.shape_figures(v) for k, v in shapes.items()}}
    http = {"shapes": [1, 64], "servers": {
        "triton": server([(1, 500, 1.0), (16, 3000, 9.0)], [(1, 40, 20.0), (16, 100, 90.0)]),
        "naive": server([(1, 900, 0.5), (16, 800, 30.0)], [(1, 200, 5.0), (16, 150, 60.0)]),
        "fastapi": server([(1, 400, 2.0), (16, 2000, 10.0)], [(1, 30, 30.0), (16, 125, 80.0)]),
        "ray_serve": server([(1, 300, 4.0), (16, 1000, 20.0)], [(1, 20, 40.0), (16, 50, 99.0)]),
        "litserve": {"error": "did not start"}}}
    r = bench.ratios(http)
    assert r["served_vs_best_peer_by_shape"]["1"]["ratio"] == 3000 / 2000
    assert r["served_vs_best_peer_by_shape"]["64"] == {"triton_req_per_s": 100, "best_peer": "fastapi",
                                                       "best_peer_req_per_s": 125, "ratio": 0.8}
    assert r["served_vs_best_peer"] == 0.8   # the lower of the two shapes
    assert r["p99_c1_vs_best_peer"] == 1.0 / 2.0 and r["p99_c1_ms"]["best_peer"] == "fastapi"
    assert r["served_vs_naive_by_shape"] == {"1": 3000 / 900, "64": 100 / 200} and r["served_vs_naive"] == 0.5
    assert bench.score({"1": _rows([(1, 100, 1)]), "64": _rows([(1, 400, 1)])}) == 200.0


def test_cli_peers_option_names_an_unknown_peer():
    import pytest

    from cli.perf import _peers
    assert _peers(None) is None and _peers("none") == [] and _peers("fastapi, ray_serve") == ["fastapi", "ray_serve"]
    with pytest.raises(ValueError, match="unknown peer.*'torchserve'.*fastapi"):
        _peers("fastapi,torchserve")
