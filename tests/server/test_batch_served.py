"""`aerec batch` against the running server: the file a nightly job writes holds, for 50
sampled users, exactly what `recommend` answers them live (ids, ranker scores, the rater's
predicted ratings: a DeepRec, NVIDIA's deep autoencoder), and scores on the test split as
`aerec evaluate` does, at K=100. Histories of users the model never saw (--histories) and the
rules files are ranked as `recommend` ranks ITEM_IDS/RATINGS with EXCLUDE_IDS/INCLUDE_IDS."""
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
NEW = 100_000   # added to a run user's id: a user the model never saw


def assert_same_list(live, rows: pd.DataFrame, label) -> None:
    """A live Recommendation equals a user's rows of a batch file (sorted by rank)."""
    assert live.item_ids == rows["item_id"].tolist(), label
    np.testing.assert_allclose(live.scores, rows["score"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(live.predicted_ratings, rows["predicted_rating"], rtol=1e-5, atol=1e-5)
    assert live.titles == rows["title"].tolist()


def test_batch_file_equals_the_live_lists_of_50_sampled_users(u1, tmp_path):
    ranker, _ = train_and_export(u1, tmp_path / "ranker", TrainConfig(model="ease", device="cpu"))
    rater, _ = train_and_export(u1, tmp_path / "rater", TrainConfig(model="deeprec", hidden=[64], epochs=3,
                                                                    batch_size=64, device="cpu"))
    out = tmp_path / "recs.parquet"
    batch_recommend(ranker, out, top_k=100, rating_run=rater, progress=False)
    recs = pd.read_parquet(out)
    assert len(recs) == 100 * u1.n_users
    offline, from_file = evaluate_run(ranker), evaluate_recommendations(out, ranker)
    assert from_file["recall@10"] == offline["recall@10"] and from_file["ndcg@10"] == offline["ndcg@10"]

    # Ten of the sampled users' training ratings under new ids, one unknown item each, with rules.
    rng = np.random.default_rng(0)
    users = rng.choice(np.asarray(u1.user_ids), 50, replace=False)
    folded = users[:10]
    rows = u1.user_index(folded)
    m = u1.train[rows].tocoo()
    history = pd.DataFrame({"user_id": folded[m.row] + NEW, "item_id": u1.item_ids[m.col], "rating": m.data})
    history = pd.concat([history, pd.DataFrame({"user_id": folded + NEW, "item_id": 99_999, "rating": 4.0})])
    history.to_csv(tmp_path / "histories.csv", index=False)
    exclude = recs.loc[recs["rank"] <= 3, "item_id"].value_counts().index[:5].tolist() + [88_888]
    (tmp_path / "exclude.txt").write_text("\n".join(map(str, exclude)) + "\n")
    new = tmp_path / "new.parquet"
    m = batch_recommend(ranker, new, top_k=100, rating_run=rater, histories=tmp_path / "histories.csv",
                        exclude_file=tmp_path / "exclude.txt", progress=False)
    assert m["history_unknown_items"] == 10 and m["rules_unknown_items"] == 1
    new_recs = pd.read_parquet(new)

    write_repository(ranker, tmp_path / "repo", ["onnx"], rating_run=rater)
    by_user = {u: g.sort_values("rank") for u, g in recs[recs["user_id"].isin(users)].groupby("user_id")}
    with TritonServer(tmp_path / "repo", build_dir=tmp_path / "build") as s:
        rc = RecommenderClient(s.grpc_url)
        for u in users:
            assert_same_list(rc.recommend(user_id=int(u), k=100), by_user[u], u)
        for u, row in zip(folded, rows):
            sent = dict(zip(u1.item_ids[u1.train[row].indices].tolist(), u1.train[row].data.tolist()))
            live = rc.recommend(ratings={**sent, 99_999: 4.0}, k=100, exclude=exclude)
            assert live.unknown_items == 2   # the history's unknown item and the rule's
            assert_same_list(live, new_recs[new_recs["user_id"] == u + NEW].sort_values("rank"), u)
