"""The popularity fallback on a real server, both pipelines: a user whose ratings are all below
the ranker's implicit threshold (EASE's preset: 4 stars) gets the most popular unrated items,
as offline evaluation ranks them, not the catalogue in index order with score 0."""
import subprocess
import sys

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from builder.config import TrainConfig
from builder.models.popularity import item_counts
from builder.presets import preset
from builder.repository import Tuning, write_repository
from conftest import shared_run, small_rater_config, train_and_export
from server.launcher import TritonServer
from serving.fallback import no_positive_input, with_popularity_fallback
from serving.ranking import top_k_unrated
from test_serving import _recommend, onnx_outputs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(u1, tmp_path_factory):
    root = tmp_path_factory.mktemp("fallback-runs")
    ranker, _ = train_and_export(u1, root / "ranker", TrainConfig(device="cpu").updated(**preset("ease")))
    rater, _ = shared_run(u1, small_rater_config())
    return ranker, rater


@pytest.fixture(scope="module", params=["ensemble", "fused"])
def server(runs, tmp_path_factory, request):
    root = tmp_path_factory.mktemp(f"fallback-{request.param}")
    tuning = Tuning(pipeline="fused") if request.param == "fused" else Tuning()
    write_repository(runs[0], root / "repo", ["onnx"], tuning, rating_run=runs[1])
    with TritonServer(root / "repo", build_dir=root / "build") as s:
        yield s


def test_user_without_a_positive_rating_gets_the_popularity_list(server, runs, u1):
    ranker, rater = runs
    client = grpcclient.InferenceServerClient(server.grpc_url)
    user = int(np.flatnonzero(u1.user_ids == 685)[0])
    known = u1.train[user].toarray().astype(np.float32)[0]
    assert 0 < known.max() < 4                              # user 685: every rating below 4 stars
    new = np.zeros(u1.n_items, np.float32)
    new[np.searchsorted(u1.item_ids, [1, 2, 3])] = [1, 2, 3]   # a new user: three films, 1-3 stars
    x = np.stack([known, new, u1.train[0].toarray().astype(np.float32)[0]])   # user 1: has positives
    assert no_positive_input(x, 4.0).tolist() == [True, True, False]

    # Offline, as builder/evaluate.py ranks: the fallback rule, then top_k_unrated.
    popularity = item_counts(u1.train)
    by = with_popularity_fallback(onnx_outputs(ranker, x), x, 4.0, popularity)
    top = top_k_unrated(by, x != 0, 5)
    predicted = np.clip(onnx_outputs(rater, x), 1, 5)
    assert (top[:2] == top_k_unrated(np.broadcast_to(popularity, (2, u1.n_items)), x[:2] != 0, 5)).all()

    got = [_recommend(grpcclient, client, user=685, k=5),
           _recommend(grpcclient, client, items=[1, 2, 3], ratings=[1.0, 2.0, 3.0], k=5),
           _recommend(grpcclient, client, user=int(u1.user_ids[0]), k=5)]
    for j, row in enumerate(got):
        assert row["RECOMMENDED_IDS"].tolist() == u1.item_ids[top[j]].tolist()
        np.testing.assert_allclose(row["SCORES"], by[j, top[j]], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(row["PREDICTED_RATINGS"], predicted[j, top[j]], rtol=1e-5, atol=1e-6)
    for row in got[:2]:   # not the catalogue's first items with score 0
        assert row["RECOMMENDED_IDS"].tolist() != [1, 2, 3, 4, 5] and (row["SCORES"] > 0).all()
    assert not {1, 2, 3} & set(got[1]["RECOMMENDED_IDS"].tolist())   # what the new user rated stays out
    # Several users in one batch: the cold row falls back, its neighbour keeps the ranker's list.
    many = grpcclient.InferInput("USER_ID", [2, 1], "INT64")
    many.set_data_from_numpy(np.array([[685], [int(u1.user_ids[0])]], np.int64))
    k = grpcclient.InferInput("TOP_K", [2, 1], "INT32")
    k.set_data_from_numpy(np.array([[5], [5]], np.int32))
    ids = client.infer("recommend", [many, k]).as_numpy("RECOMMENDED_IDS")
    assert ids.tolist() == [u1.item_ids[top[0]].tolist(), u1.item_ids[top[2]].tolist()]


def test_a_user_who_rated_nothing_gets_popularity_and_no_predicted_ratings(server, u1):
    """An unknown user sending no history (the popularity cold start): the most popular items,
    and NaN predicted ratings, since a rating model's output for an empty history predicts
    nobody's (DeepRec's reads 1.00 for every item). A user with ratings keeps the rater's."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    row = _recommend(grpcclient, client, user=999_999, k=5)
    popularity = item_counts(u1.train)
    assert row["RECOMMENDED_IDS"].tolist() == u1.item_ids[np.argsort(-popularity, kind="stable")[:5]].tolist()
    assert np.isnan(row["PREDICTED_RATINGS"]).all()
    assert not np.isnan(_recommend(grpcclient, client, user=685, k=5)["PREDICTED_RATINGS"]).any()


def test_cli_names_the_user_it_fell_back_for(server):
    """`aerec recommend --user` for an id the model never saw (popularity cold start, the
    default) prints the popular list and says which user it had nothing for, and why that may be."""
    run = lambda *a: subprocess.run([sys.executable, "-m", "cli.main", "recommend", "--url", server.grpc_url,  # noqa: E731
                                     "-k", "3", *a], capture_output=True, text=True, timeout=120)
    r = run("--user", "999999")
    assert r.returncode == 0, r.stderr
    assert ("the most popular items (a cold start): user 999999 is not one it was trained on, or has no "
            "positive rating in its history") in r.stdout
    assert "predicted rating" not in r.stdout   # a prediction from no rating at all is none
    r = run("--rate", "1=1")
    assert r.returncode == 0 and "nothing to rank this user by" in r.stdout, r.stdout + r.stderr
    assert "predicted rating" in r.stdout       # from the rating sent
