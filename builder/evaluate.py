"""Evaluate a trained model on a dataset's test split: RMSE/MAE (rating models) and, for every
model, top-N metrics beside the most-popular baseline's, from one shared ranking function."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from builder.metrics import coverage, mae, ndcg_at_k, recall_at_k, rmse
from builder.models import ITEM_BASED, TOP_N
from builder.models.popularity import item_counts
from builder.predict import orient, predict_entries, predict_rows
from serving.fallback import with_popularity_fallback
from serving.ranking import top_k_unrated

RECALL_KS = (10, 20, 50)
NDCG_KS = (10, 100)
COVERAGE_K = 10
# The figures set side by side with the popularity baseline's, and divided by them (lift).
LIFT_KEYS = tuple(f"recall@{k}" for k in RECALL_KS) + tuple(f"ndcg@{k}" for k in NDCG_KS)


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


def ranking_metrics(scores: np.ndarray, seen: np.ndarray, relevant: sp.csr_matrix, top_k: int = 10) -> dict:
    """recall@10/20/50, ndcg@10/100 and coverage@10 (plus recall/ndcg/coverage at `top_k`).

    scores: float [users, items], higher first; seen: bool [users, items], the items each user
    already gave (excluded from the ranking); relevant: csr [users, items], non-zero where an
    item counts as a hit. Rows align; users without a relevant item are skipped by the means.
    Ranks with serving.ranking.top_k_unrated, the function the server runs.
    """
    top = top_k_unrated(scores, seen, max(100, top_k))
    return top_metrics(top, relevant, scores.shape[1], {*RECALL_KS, top_k}, {*NDCG_KS, top_k}, {COVERAGE_K, top_k})


def top_metrics(top: np.ndarray, relevant: sp.csr_matrix, n_items: int, recall_ks, ndcg_ks, coverage_ks) -> dict:
    """recall@k, ndcg@k and coverage@k of ranked item lists, for each k of the given sets (sorted).

    top: int [users, K] item columns, best first, PAD (-1) in empty slots (top_k_unrated's
    output, or lists read from a file); relevant: csr [users, n_items] aligned with `top`'s rows,
    non-zero where an item is a hit. A k above K scores the K columns there are. The one place
    both offline evaluation and saved recommendation files (builder.batch) are scored."""
    rows = np.arange(len(top))
    out = {}
    for k in sorted(set(recall_ks)):
        out[f"recall@{k}"] = recall_at_k(top[:, :k], relevant, rows)
    for k in sorted(set(ndcg_ks)):
        out[f"ndcg@{k}"] = ndcg_at_k(top[:, :k], relevant, rows)
    for k in sorted(set(coverage_ks)):
        out[f"coverage@{k}"] = coverage(top[:, :k], n_items)
    return out


def with_baseline(model_metrics: dict, popularity_metrics: dict) -> dict:
    """The model's figures, then `popularity_<key>` and `lift_<key>` = model / popularity."""
    out = dict(model_metrics)
    out.update({f"popularity_{k}": v for k, v in popularity_metrics.items()})
    for k in LIFT_KEYS:
        if k in model_metrics and popularity_metrics.get(k):
            out[f"lift_{k}"] = model_metrics[k] / popularity_metrics[k]
    return out


def below_popularity(metrics: dict, key: str = "recall@10") -> tuple[float, float] | None:
    """(the model's `key`, popularity's) where a run's test figure is under the most-popular
    baseline's (both as with_baseline writes them into metrics.json), else None: a model
    whose lists are worse than "most popular" has failed as a recommender, whatever its RMSE."""
    model, popularity = metrics.get(key), metrics.get(f"popularity_{key}")
    if model is None or popularity is None or model >= popularity:
        return None
    return float(model), float(popularity)


def evaluate_model(model, dataset, config, device) -> dict:
    """Test metrics of a trained model on `dataset`'s test split, as a flat dict of floats/ints.

    Rating models: test_rmse / test_mae (in rating units, predictions clipped to the data set's
    scale) and test_ratings. Every model, top-N models included (their scores are not ratings:
    no RMSE): recall@10/20/50, ndcg@10/100 and coverage@10 over the test users with a rating >=
    config.relevant_threshold, each beside the most-popular baseline's (`popularity_<key>`) and
    the ratio (`lift_<key>`), plus test_users; see top_n_metrics. `device`: a torch device or
    its name. Recall and NDCG are defined as in Liang et al. 2018 (Mult-VAE), builder.metrics."""
    out = {}
    if config.model not in TOP_N:
        inputs, targets = orient(dataset.train, config), orient(dataset.test, config)
        p, t = predict_entries(model, inputs, targets, device)
        out = {"test_rmse": rmse(p, t, dataset.scale), "test_mae": mae(p, t, dataset.scale),
               "test_ratings": int(len(t))}
    out.update(top_n_metrics(model, dataset, config, device))
    return out


def top_n_metrics(model, dataset, config, device) -> dict:
    """Rank every item a test user has not rated in training; hits are test ratings >=
    config.relevant_threshold. The popularity baseline (training rating counts) is ranked
    the same way for the same users."""
    relevant = liked(dataset.test, config.relevant_threshold)
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    if len(users) == 0:
        return {}
    scores = predict_user_matrix(model, dataset, config, device, users)
    if config.model in TOP_N:   # as served: no positive input for the ranker -> popularity
        scores = with_popularity_fallback(scores, dataset.train[users].toarray(), config.implicit_threshold,
                                          item_counts(dataset.train))
    return score_against_popularity(scores, dataset.train[users], relevant[users], dataset.train, config.top_k)


def score_against_popularity(scores: np.ndarray, seen: sp.csr_matrix, relevant: sp.csr_matrix,
                             popularity_from: sp.csr_matrix, top_k: int = 10) -> dict:
    """ranking_metrics of `scores` and of item popularity (rating counts of `popularity_from`,
    users x items) for the same rows, with lift; `test_users` counts the rows scored."""
    rated = seen.toarray() != 0
    pop = np.broadcast_to(item_counts(popularity_from), scores.shape)
    out = with_baseline(ranking_metrics(scores, rated, relevant, top_k), ranking_metrics(pop, rated, relevant, top_k))
    out["test_users"] = int(len(scores))
    return out


def liked(matrix: sp.csr_matrix, threshold: float) -> sp.csr_matrix:
    """The entries of `matrix` rated >= threshold (the relevant items), explicit zeros dropped;
    threshold <= 0: every stored entry (implicit feedback: every held-out event is relevant)."""
    if threshold <= 0:
        out = matrix.tocsr(copy=True)
        out.eliminate_zeros()
        return out
    out = matrix.multiply(matrix >= threshold).tocsr()
    out.eliminate_zeros()
    return out


@torch.no_grad()
def evaluate_fold_in(model, fold_in: sp.csr_matrix, truth: sp.csr_matrix, popularity_from: sp.csr_matrix,
                     relevant_threshold: float = 4.0, device="cpu", top_k: int = 10,
                     implicit_threshold: float | None = None) -> dict:
    """Users the model never trained on (strong generalisation, Liang et al. 2018; see
    builder.data.splits.split_strong_generalisation): each row of `fold_in` (users x items, raw
    ratings) is sent as the request, as the server would; hits are `truth` entries >=
    relevant_threshold, ranked among the items not in the request. Beside it the popularity
    of `popularity_from` (the model's own training matrix). Only user-based models.
    `implicit_threshold`: a top-N model's; a row with no positive input for it is ranked by
    popularity, as served (serving/fallback.py). None: no fallback (rating models)."""
    relevant = liked(truth, relevant_threshold)
    users = np.flatnonzero((np.diff(relevant.indptr) > 0) & (np.diff(fold_in.tocsr().indptr) > 0))
    if len(users) == 0:
        return {}
    scores = predict_rows(model, fold_in.tocsr(), users, device)
    if implicit_threshold is not None:
        scores = with_popularity_fallback(scores, fold_in.tocsr()[users].toarray(), implicit_threshold,
                                          item_counts(popularity_from))
    return score_against_popularity(scores, fold_in.tocsr()[users], relevant[users], popularity_from, top_k)
