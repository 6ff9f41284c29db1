"""The accuracy of the lists a running server serves, scored against a run's test split with the
functions offline evaluation uses (`aerec evaluate --url HOST:PORT --run RUN`).

Offline evaluation scores the model; this scores what a client receives: the served order (the
ranker's, after the server's masking, fallback and top-K) and the served PREDICTED_RATINGS."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from builder.config import TrainConfig
from builder.data import Dataset
from builder.evaluate import COVERAGE_K, NDCG_KS, RECALL_KS, liked, ranking_metrics, top_metrics, with_baseline
from builder.metrics import rmse
from builder.models.popularity import item_counts
from builder.run_folder import load_run_dataset

# Users per recommend_many call: one request each, all in flight at once (the server batches them).
USERS_PER_CALL = 64


def evaluate_served(url: str, run_dir: Path, protocol: str = "grpc") -> dict:
    """served_metrics of the server at `url` against `run_dir`'s test split, with the run's
    relevant_threshold and top_k. Raises FileNotFoundError / ValueError as load_run_dataset does
    (before any request), then as served_metrics does."""
    run_dir = Path(run_dir)
    dataset = load_run_dataset(run_dir)   # FileNotFoundError first when run_dir is no run folder
    config = TrainConfig.load(run_dir / "config.json")
    return served_metrics(url, dataset, config.relevant_threshold, config.top_k, protocol)


def served_metrics(url: str, dataset: Dataset, relevant_threshold: float = 4.0, top_k: int = 10,
                   protocol: str = "grpc", timeout_s: float = 60.0) -> dict:
    """Accuracy of the lists served at `url` (host:port; `protocol` "grpc" or "http") for every
    user with a test rating in `dataset`.

    Each user is asked for by USER_ID (the server holds their training history) with TOP_K = every
    item, so every unrated item, each test item among them, is in the served list. Returns:

    - recall@k, ndcg@k and coverage@k of the served order, k as offline evaluation's (RECALL_KS,
      NDCG_KS, COVERAGE_K and `top_k`), over the test users with a liked test item (rating >=
      relevant_threshold, builder.evaluate.liked), beside the most-popular baseline ranked
      offline for the same users (`popularity_<key>`, `lift_<key>`: builder.evaluate.with_baseline),
      and test_users; nothing of these when no test user likes an item;
    - served_rmse: RMSE (rating units) of the served PREDICTED_RATINGS at every test rating, as
      the client receives them (the server clips them to the scale), and test_ratings; absent when
      the server has no rating model.

    Raises ConnectionError naming `url` when no server there serves `recommend`, ValueError when
    the served lists hold items outside `dataset`'s catalogue or lack a user's test item (the
    server serves other data), client.RecommenderError when the server refuses a request."""
    from client import RecommenderClient   # here, not above: builder imports without the client
    client = RecommenderClient(url, protocol, timeout_s=timeout_s)
    if not client.healthy():
        raise ConnectionError(f"no server ready at {url} over {protocol}: is `aerec serve` running there, "
                              f"with that port for {protocol}?")
    test = dataset.test.tocsr()
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    recs = []
    for lo in range(0, len(users), USERS_PER_CALL):
        recs += client.recommend_many(dataset.user_ids[users[lo:lo + USERS_PER_CALL]].tolist(), k=dataset.n_items)
    depth = max(*RECALL_KS, *NDCG_KS, COVERAGE_K, top_k)
    top = np.full((len(users), depth), -1, np.int64)   # -1: no item, never a hit
    preds, truths = [], []
    for row, (u, rec) in enumerate(zip(users, recs)):
        cols = dataset.item_index(rec.item_ids) if rec.item_ids else np.zeros(0, np.int64)
        if (cols < 0).any():
            raise ValueError(f"the server at {url} served {int((cols < 0).sum())} items that are not in "
                             f"{dataset.name}'s catalogue (user {dataset.user_ids[u]}): it serves other data")
        top[row, :min(depth, len(cols))] = cols[:depth]
        if rec.predicted_ratings is not None:
            served = dict(zip(cols.tolist(), rec.predicted_ratings))
            wanted = test.indices[test.indptr[u]:test.indptr[u + 1]].tolist()
            missing = [c for c in wanted if c not in served]
            if missing:
                raise ValueError(f"the server at {url} did not list {len(missing)} of user {dataset.user_ids[u]}'s "
                                 f"test items (e.g. item {dataset.item_ids[missing[0]]}): it serves other data")
            preds += [served[c] for c in wanted]
            truths += test.data[test.indptr[u]:test.indptr[u + 1]].tolist()
    relevant = liked(test, relevant_threshold)
    pick = np.diff(relevant.indptr)[users] > 0
    scored = users[pick]
    out = {}
    if len(scored):
        rated = dataset.train[scored].toarray() != 0
        # The baseline exactly as offline evaluation ranks and scores it.
        pop = np.broadcast_to(item_counts(dataset.train), rated.shape)
        out = with_baseline(top_metrics(top[pick], relevant[scored], dataset.n_items, {*RECALL_KS, top_k},
                                        {*NDCG_KS, top_k}, {COVERAGE_K, top_k}),
                            ranking_metrics(pop, rated, relevant[scored], top_k))
        out["test_users"] = int(len(scored))
    if preds:
        out.update(served_rmse=rmse(np.array(preds), np.array(truths)), test_ratings=len(truths))
    return out
