"""The served lists' accuracy read back from a real server (the session's EASE ranker + small
rater on ML-100K u1) equals offline evaluation's, by the library function and through
`aerec evaluate --url HOST:PORT --run RUN`; a dead address or a missing --run is refused."""
import re

import numpy as np
import pytest

from builder.evaluate import evaluate_model
from builder.run_folder import load_run
from builder.served_evaluation import evaluate_served, served_metrics
from conftest import cli, ranker_and_rater_runs
from server.launcher import free_ports

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
    # The same keys as offline evaluation's top-N figures, and the same test users.
    assert served["test_users"] == offline["test_users"]
    assert {k for k in offline if "@" in k and not k.startswith("val_")} <= set(served)


def test_the_run_folder_form_over_http_equals_the_dataset_form(u1, ranker_and_rater_server):
    ranker, _, _, _ = ranker_and_rater_runs(u1)
    by_run = evaluate_served(ranker_and_rater_server.http_url, ranker, protocol="http")
    assert by_run == pytest.approx(served_metrics(ranker_and_rater_server.grpc_url, u1), abs=1e-9)


def printed(stdout: str, metric: str) -> float:
    """The first figure on the printed table's row for `metric` (the model's column)."""
    found = re.search(rf"{re.escape(metric)}\s*\S?\s*([0-9.]+)", stdout)
    assert found, f"no {metric} row in:\n{stdout}"
    return float(found.group(1))


def test_the_cli_prints_the_served_figures_beside_popularity(u1, ranker_and_rater_server):
    ranker, ranked, _, rated = ranker_and_rater_runs(u1)
    r = cli("evaluate", "--url", ranker_and_rater_server.grpc_url, "--run", ranker)
    assert r.returncode == 0, r.stderr
    offline = ranked.metrics
    assert printed(r.stdout, "recall@10") == pytest.approx(offline["recall@10"], abs=0.003)
    assert f"{offline['popularity_recall@10']:.4f}" in r.stdout and "lift" in r.stdout
    assert f"top-N over {offline['test_users']} test users" in r.stdout
    assert printed(r.stdout, "served_rmse") == pytest.approx(rated.metrics["test_rmse"], abs=2e-4)


def test_a_dead_address_is_named(u1):
    ranker, _, _, _ = ranker_and_rater_runs(u1)
    url = f"127.0.0.1:{free_ports(1)[0]}"
    r = cli("evaluate", "--url", url, "--run", ranker)
    assert r.returncode == 2 and url in r.stderr and "no server ready" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_url_needs_a_run():
    r = cli("evaluate", "--url", "127.0.0.1:1")
    assert r.returncode == 2 and "--url needs --run RUN" in r.stderr
