"""benchmarks/bench_replicas.py: the concurrency split and thread choice by hand, and one perf_analyzer
per replica against two real Triton replicas serving a small model to held-out ML-100K users."""
import os

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from builder.repository import Tuning
from conftest import build_repository
from perf import inputs
from benchmarks.bench_replicas import drive_perf_analyzer, ort_threads_for, split_concurrency, tuning_for
from server.replicas import ReplicaSet
from serving.session_options import THREADS


@pytest.mark.parametrize("total, replicas, shares", [(8, 1, [8]), (8, 2, [4, 4]), (5, 2, [3, 2]), (4, 3, [2, 1, 1]),
                                                     (2, 2, [1, 1])])
def test_concurrency_is_split_evenly(total, replicas, shares):
    assert split_concurrency(total, replicas) == shares
    assert sum(shares) == total


@pytest.mark.parametrize("total, replicas", [(1, 2), (3, 0)])
def test_a_split_that_leaves_a_replica_idle_is_refused(total, replicas):
    with pytest.raises(ValueError, match="replica"):
        split_concurrency(total, replicas)


@pytest.mark.parametrize("replicas, cores, threads", [(1, 2, 2), (2, 2, 1), (3, 2, 1), (2, 8, 4), (3, 8, 2)])
def test_ort_threads_follow_the_cores(replicas, cores, threads):
    assert ort_threads_for(replicas, cores) == threads
    assert tuning_for("cores", replicas, cores) == Tuning(ort_threads=threads)


def test_default_tuning_keeps_onnx_runtime_threads():
    assert tuning_for("default", 2, 2) == Tuning()
    with pytest.raises(ValueError, match="tuning must be one of"):
        tuning_for("all", 2, 2)
    with pytest.raises(ValueError, match="cores"):
        ort_threads_for(2, 0)


@pytest.mark.slow
def test_one_perf_analyzer_per_replica_sums_their_throughput(u1, tmp_path):
    cores = len(os.sched_getaffinity(0))
    _, repo, _ = build_repository(u1, tmp_path, tuning=tuning_for("cores", 2, cores))
    network = next(repo.glob("*_onnx/config.pbtxt"))
    config = text_format.Parse(network.read_text(), model_config_pb2.ModelConfig())
    assert config.parameters[THREADS].string_value == str(ort_threads_for(2, cores))
    users = inputs.held_out_users(u1.test, u1.train, 16)
    data = inputs.write(inputs.ensemble_user_data(u1.user_ids, users), tmp_path / "users.json")
    with ReplicaSet(repo, 2, build_dir=tmp_path / "build") as rs:
        res = drive_perf_analyzer(rs.urls("grpc"), "grpc", data, 64, 2, 0.5, tmp_path, timeout_s=120)
        assert all(rs.alive())
    assert res["errors"] == 0, res["first_error"]
    assert res["per_replica_concurrency"] == [1, 1]
    rows = res["per_replica"]
    assert [r["url"] for r in rows] == rs.urls("grpc") and all(r["users_per_s"] > 0 for r in rows)
    assert res["users_per_s"] == pytest.approx(sum(r["users_per_s"] for r in rows), abs=0.2)
    assert res["requests_per_s"] == pytest.approx(res["users_per_s"] / 64, abs=0.2)
    assert res["p99_ms"] == max(r["p99_ms"] for r in rows)
    assert all("-b" in r["command"] and r["command"][r["command"].index("-b") + 1] == "64" for r in rows)
    assert 0 < res["overlap"] <= 1
