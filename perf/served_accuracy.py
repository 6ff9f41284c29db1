"""The served list's accuracy, read from a running server: `python -m perf.served_accuracy REPO`.

Offline evaluation scores the model; this scores what a client receives. It starts the embedded
Triton on a repository built by `aerec repository`, asks `recommend` for every u1 test user
(by USER_ID, their training history held by the server) with TOP_K = every item, and reads:

- recall@10 / NDCG@10 of the served order (the ranker's) against the user's liked test items;
- RMSE of the served PREDICTED_RATINGS at the user's test items (every unrated item is in the
  full list, so every test rating has its served prediction);
- the popularity baseline's recall@10 / NDCG@10 on the same users, computed offline beside it.

The metrics are builder/metrics.py's, the functions offline evaluation uses.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from builder.config import TrainConfig
from builder.evaluate import ranking_metrics
from builder.run_folder import load_run_dataset
from builder.models.popularity import item_counts
from builder.metrics import ndcg_at_k, recall_at_k, rmse


def served_metrics(url: str, dataset, k: int = 10, relevant_threshold: float = 4.0, protocol: str = "grpc") -> dict:
    """Accuracy of the lists served at `url` for every user with test ratings in `dataset`.

    Returns recall@k and ndcg@k (users with a liked test item, test rating >= relevant_threshold),
    `served_rmse` (PREDICTED_RATINGS at test ratings; absent when the server has no rater) and the
    popularity baseline's recall@k / ndcg@k. Raises RecommenderError if the server refuses a user."""
    from client import RecommenderClient
    client = RecommenderClient(url, protocol, timeout_s=60.0)
    test = dataset.test.tocsr()
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    relevant = test.multiply(test >= relevant_threshold).tocsr()
    liked = np.flatnonzero(np.diff(relevant.indptr) > 0)
    recs = []
    for lo in range(0, len(users), 64):
        recs += client.recommend_many([int(u) for u in dataset.user_ids[users[lo:lo + 64]]], k=dataset.n_items)
    top = np.full((len(users), k), -1, np.int64)
    preds, truths = [], []
    for row, (u, rec) in enumerate(zip(users, recs)):
        cols = dataset.item_index(rec.item_ids)
        top[row, :min(k, len(cols))] = cols[:k]
        if rec.predicted_ratings is not None:
            where = dict(zip(cols.tolist(), rec.predicted_ratings))
            t = test[u]
            preds += [where[c] for c in t.indices.tolist()]
            truths += t.data.tolist()
    pick = np.isin(users, liked)
    out = {"users": int(pick.sum()), f"recall@{k}": recall_at_k(top[pick], relevant, users[pick]),
           f"ndcg@{k}": ndcg_at_k(top[pick], relevant, users[pick])}
    if preds:
        out.update(served_rmse=rmse(np.array(preds), np.array(truths)), test_ratings=len(truths))
    rated = dataset.train[users[pick]].toarray() != 0
    # The baseline exactly as offline evaluation ranks and scores it.
    pop = ranking_metrics(np.broadcast_to(item_counts(dataset.train), rated.shape), rated, relevant[users[pick]], k)
    out.update({f"popularity_recall@{k}": pop[f"recall@{k}"], f"popularity_ndcg@{k}": pop[f"ndcg@{k}"]})
    return out


def main() -> None:
    """`python -m perf.served_accuracy REPOSITORY`: serve a repository `aerec repository` wrote and
    print the accuracy of its lists (served_metrics) on its run's data as JSON."""
    from server.launcher import TritonServer
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("repository", type=Path, help="a repository written by `aerec repository`")
    a = p.parse_args()
    if not (a.repository / "aerec_repository.json").is_file():
        p.error(f"{a.repository}: not a repository built by `aerec repository` (no aerec_repository.json)")
    manifest = json.loads((a.repository / "aerec_repository.json").read_text())
    config = TrainConfig.load(Path(manifest["run"]) / "config.json")
    dataset = load_run_dataset(manifest["run"])
    with TritonServer(a.repository) as server:
        result = {"repository": str(a.repository), "ranker": manifest.get("ranker"), "rater": manifest.get("rater"),
                  "data": f"{config.data}/{config.split}", **served_metrics(server.grpc_url, dataset)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
