"""Accuracy for users the model never trained on: `python -m benchmarks.bench_new_users`.

u1's test users are also training users (their other ratings are in u1.base), so u1.test
scores a user-based model on people it has seen. A served model also meets new people: this
bench drops a share of u1's test users from training entirely (every model, and a
distillation teacher, trains without their rows), then feeds each one's u1.base ratings as
the request, as the server would, and scores the model on their u1.test ratings. The same
users' RMSE from a model that did train on them is printed beside it.

Top-N presets (ease, mult-vae, ...) are scored by recall@10 and NDCG@10 on the new users' liked
u1.test items (rated >= 4), ranking every item not in their request, beside the popularity
baseline of the same training ratings (builder.evaluate.evaluate_fold_in).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import scipy.sparse as sp
import torch

from builder.config import TrainConfig
from builder.data.sources import load_dataset
from builder.evaluate import evaluate_fold_in, evaluate_model
from builder.models import TOP_N
from builder.presets import preset
from builder.train import train

USER_BASED_PRESETS = ("deeprec", "deeprec-plain", "deeprec-paper", "autorec-u", "sae-seed")
TOP_N_PRESETS = ("ease-values", "ease", "mult-vae", "mult-dae")
TARGET_RECALL = 0.40  # recall@10 of the served ranker for people it never trained on


def rows_only(matrix: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    """`matrix` with only `rows` kept (every other row emptied), same shape."""
    keep = sp.diags(np.isin(np.arange(matrix.shape[0]), rows).astype(np.float32))
    return (keep @ matrix).tocsr()


def new_user_rmse(name: str, ds, new_users: np.ndarray) -> dict:
    """Preset `name` trained without `new_users`, then scored on them from their training ratings
    (folded in, no retraining): test RMSE in rating units beside known users' (a top-N preset:
    new_user_ranking's recall and NDCG)."""
    config = TrainConfig().updated(**preset(name))
    if config.model in TOP_N:
        return new_user_ranking(name, config, ds, new_users)
    seen = np.setdiff1d(np.arange(ds.n_users), new_users)
    without = dataclasses.replace(ds, train=rows_only(ds.train, seen), test=rows_only(ds.test, seen))
    start = time.perf_counter()
    model = train(config, without, progress=False, evaluate=False).model
    seconds = time.perf_counter() - start
    # The request is each new user's u1.base history; the truth, their u1.test ratings.
    asked = dataclasses.replace(ds, test=rows_only(ds.test, new_users))
    new = evaluate_model(model, asked, config, torch.device("cpu"))
    seen_model = train(config, ds, progress=False, evaluate=False).model
    trained_on = evaluate_model(seen_model, asked, config, torch.device("cpu"))
    return {"preset": name, "new_users_rmse": round(new["test_rmse"], 4),
            "same_users_trained_on_rmse": round(trained_on["test_rmse"], 4),
            "test_ratings": new["test_ratings"], "train_seconds": round(seconds, 1)}


def new_user_ranking(name: str, config: TrainConfig, ds, new_users: np.ndarray) -> dict:
    """recall@10 / NDCG@10 of a top-N preset trained without `new_users`, each sent their
    u1.base ratings; popularity (of the same training ratings) beside."""
    seen = np.setdiff1d(np.arange(ds.n_users), new_users)
    without = dataclasses.replace(ds, train=rows_only(ds.train, seen), test=rows_only(ds.test, seen))
    start = time.perf_counter()
    model = train(config, without, progress=False, evaluate=False).model
    seconds = time.perf_counter() - start
    m = evaluate_fold_in(model, rows_only(ds.train, new_users), rows_only(ds.test, new_users), without.train,
                         config.relevant_threshold, torch.device("cpu"), implicit_threshold=config.implicit_threshold)
    keys = ("recall@10", "ndcg@10", "popularity_recall@10", "popularity_ndcg@10", "lift_recall@10")
    return {"preset": name, **{f"new_users_{k}": round(m[k], 4) for k in keys}, "scored_users": m["test_users"],
            "meets_recall_target": m["recall@10"] >= TARGET_RECALL, "train_seconds": round(seconds, 1)}


def main() -> None:
    """`make bench-new-users`: accuracy on users never trained on, against known users."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--share", type=float, default=0.2, help="share of u1's test users left out")
    parser.add_argument("--presets", default=",".join(USER_BASED_PRESETS + TOP_N_PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    ds = load_dataset("ml-100k", "u1")
    test_users = np.flatnonzero(np.diff(ds.test.indptr) > 0)
    rng = np.random.default_rng(args.seed)
    new_users = np.sort(rng.choice(test_users, int(len(test_users) * args.share), replace=False))
    rows = [new_user_rmse(name, ds, new_users) for name in args.presets.split(",")]
    print(json.dumps({"new_users": len(new_users), "of_test_users": len(test_users), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
