"""`aerec batch` against the running server: the file a nightly job writes holds, for 50
sampled users, exactly what `recommend` answers them live (ids, ranker scores, the rater's
predicted ratings), and scores on the test split as `aerec evaluate` does, at K=100."""
import numpy as np
import pandas as pd
import pytest

from builder.batch import batch_recommend, evaluate_recommendations
from builder.config import TrainConfig
from builder.repository import write_repository
from builder.stages import evaluate_run
from client import RecommenderClient
from conftest import train_and_export
from server.launcher import TritonServer

pytestmark = pytest.mark.slow


def test_batch_file_equals_the_live_lists_of_50_sampled_users(u1, tmp_path):
    ranker, _ = train_and_export(u1, tmp_path / "ranker", TrainConfig(model="ease", device="cpu"))
    rater, _ = train_and_export(u1, tmp_path / "rater", TrainConfig(model="sae", hidden=[16, 8], epochs=2,
                                                                    batch_size=64, device="cpu"))
    out = tmp_path / "recs.parquet"
    batch_recommend(ranker, out, top_k=100, rating_run=rater, progress=False)
    recs = pd.read_parquet(out)
    assert len(recs) == 100 * u1.n_users
    offline, from_file = evaluate_run(ranker), evaluate_recommendations(out, ranker)
    assert from_file["recall@10"] == offline["recall@10"] and from_file["ndcg@10"] == offline["ndcg@10"]

    write_repository(ranker, tmp_path / "repo", ["onnx"], rating_run=rater)
    users = np.random.default_rng(0).choice(np.asarray(u1.user_ids), 50, replace=False)
    by_user = {u: g.sort_values("rank") for u, g in recs[recs["user_id"].isin(users)].groupby("user_id")}
    with TritonServer(tmp_path / "repo", build_dir=tmp_path / "build") as s:
        rc = RecommenderClient(s.grpc_url)
        for u in users:
            live, row = rc.recommend(user_id=int(u), k=100), by_user[u]
            assert live.item_ids == row["item_id"].tolist(), u
            np.testing.assert_allclose(live.scores, row["score"], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(live.predicted_ratings, row["predicted_rating"], rtol=1e-5, atol=1e-5)
            assert live.titles == row["title"].tolist()
