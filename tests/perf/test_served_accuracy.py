"""The served list's accuracy read back from a real server equals offline evaluation's."""
import numpy as np
import pytest

from builder.evaluate import evaluate_model
from builder.run_folder import load_run
from conftest import ranker_and_rater_runs
from perf.served_accuracy import served_metrics

pytestmark = pytest.mark.slow


def test_served_recall_ndcg_and_rmse_equal_offline_evaluation(u1, ranker_and_rater_server):
    _, ranked, rater, rated = ranker_and_rater_runs(u1)   # the runs that server serves
    served = served_metrics(ranker_and_rater_server.grpc_url, u1)
    offline = ranked.metrics
    # ONNX Runtime's and PyTorch's sums round differently: a near-tie may flip one item.
    assert served["recall@10"] == pytest.approx(offline["recall@10"], abs=0.003)
    assert served["ndcg@10"] == pytest.approx(offline["ndcg@10"], abs=0.003)
    assert served["popularity_recall@10"] == pytest.approx(offline["popularity_recall@10"], abs=1e-9)
    assert served["served_rmse"] == pytest.approx(rated.metrics["test_rmse"], abs=1e-4)
    assert served["test_ratings"] == u1.test.nnz
    assert served["recall@10"] > served["popularity_recall@10"]
    assert np.isfinite(evaluate_model(load_run(rater)[1], u1, load_run(rater)[0], "cpu")["test_rmse"])
