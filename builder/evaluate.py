"""Evaluate a trained model on a dataset's test split: RMSE/MAE and top-N metrics."""
from __future__ import annotations

import numpy as np
import torch

from builder.metrics import coverage, mae, ndcg_at_k, recall_at_k, rmse
from builder.models import ITEM_BASED
from builder.predict import orient, predict_entries, predict_rows
from builder.ranking import top_k_unrated


@torch.no_grad()
def predict_user_matrix(model, dataset, config, device, users: np.ndarray | None = None) -> np.ndarray:
    """Dense predictions [users, items] from each user's training ratings."""
    inputs = orient(dataset.train, config)
    if config.model in ITEM_BASED:
        # Item-based: every item's column is one forward; transpose back to users x items.
        full = predict_rows(model, inputs, np.arange(inputs.shape[0]), device).T
        return full if users is None else full[users]
    users = np.arange(dataset.n_users) if users is None else users
    return predict_rows(model, inputs, users, device)


def evaluate_model(model, dataset, config, device) -> dict:
    inputs, targets = orient(dataset.train, config), orient(dataset.test, config)
    p, t = predict_entries(model, inputs, targets, device)
    out = {"test_rmse": rmse(p, t, dataset.scale), "test_mae": mae(p, t, dataset.scale),
           "test_ratings": int(len(t))}
    out.update(top_n_metrics(model, dataset, config, device))
    return out


def top_n_metrics(model, dataset, config, device) -> dict:
    k = config.top_k
    relevant = dataset.test.multiply(dataset.test >= config.relevant_threshold).tocsr()
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    if len(users) == 0:
        return {}
    scores = predict_user_matrix(model, dataset, config, device, users)
    rated = dataset.train[users].toarray() != 0
    top = top_k_unrated(scores, rated, k)
    return {f"recall@{k}": recall_at_k(top, relevant[users], np.arange(len(users))),
            f"ndcg@{k}": ndcg_at_k(top, relevant[users], np.arange(len(users))),
            f"coverage@{k}": coverage(top, dataset.n_items)}
