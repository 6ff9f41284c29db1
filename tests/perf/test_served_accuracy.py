"""The served list's accuracy read back from a real server equals offline evaluation's."""
import numpy as np
import pytest

from builder.config import TrainConfig
from builder.evaluate import evaluate_model
from builder.repository import write_repository
from builder.run_folder import load_run
from conftest import train_and_export
from perf.served_accuracy import served_metrics
from server.launcher import TritonServer

pytestmark = pytest.mark.slow


def test_served_recall_ndcg_and_rmse_equal_offline_evaluation(u1, tmp_path):
    ranker, ranked = train_and_export(u1, tmp_path / "ranker", TrainConfig(model="ease", device="cpu"))
    rater, rated = train_and_export(u1, tmp_path / "rater", TrainConfig(model="sae", hidden=[16, 8], epochs=2,
                                                                       batch_size=64, device="cpu"))
    write_repository(ranker, tmp_path / "repo", ["onnx"], rating_run=rater)
    with TritonServer(tmp_path / "repo", build_dir=tmp_path / "build") as server:
        served = served_metrics(server.grpc_url, u1)
    offline = ranked.metrics
    # ONNX Runtime's and PyTorch's sums round differently: a near-tie may flip one item.
    assert served["recall@10"] == pytest.approx(offline["recall@10"], abs=0.003)
    assert served["ndcg@10"] == pytest.approx(offline["ndcg@10"], abs=0.003)
    assert served["popularity_recall@10"] == pytest.approx(offline["popularity_recall@10"], abs=1e-9)
    assert served["served_rmse"] == pytest.approx(rated.metrics["test_rmse"], abs=1e-4)
    assert served["test_ratings"] == u1.test.nnz
    assert served["recall@10"] > served["popularity_recall@10"]
    assert np.isfinite(evaluate_model(load_run(rater)[1], u1, load_run(rater)[0], "cpu")["test_rmse"])
