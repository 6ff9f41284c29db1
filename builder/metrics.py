"""Accuracy metrics as pure functions of arrays; tested against hand-computed values."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def clip(pred: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Predictions clipped to the rating scale (lo, hi)."""
    return np.clip(pred, scale[0], scale[1])


def rmse(pred: np.ndarray, truth: np.ndarray, scale: tuple[float, float] | None = None) -> float:
    """Root mean squared error of `pred` against `truth` (1-D, same length), in rating units; predictions are
    clipped to `scale` first when given."""
    pred = clip(pred, scale) if scale else pred
    return float(np.sqrt(np.mean((np.asarray(pred, np.float64) - truth) ** 2)))


def mae(pred: np.ndarray, truth: np.ndarray, scale: tuple[float, float] | None = None) -> float:
    """Mean absolute error of `pred` against `truth` (1-D, same length), in rating units; predictions are clipped
    to `scale` first when given."""
    pred = clip(pred, scale) if scale else pred
    return float(np.mean(np.abs(np.asarray(pred, np.float64) - truth)))


def _relevant_sets(relevant: sp.csr_matrix, users: np.ndarray):
    relevant = relevant.tocsr()
    return [set(relevant.indices[relevant.indptr[u]:relevant.indptr[u + 1]].tolist()) for u in users]


def recall_at_k(top: np.ndarray, relevant: sp.csr_matrix, users: np.ndarray) -> float:
    """Mean over users with any relevant item of hits / min(k, |relevant|) (Liang et al. 2018).
    A -1 in `top` (padding) is never a hit."""
    k = top.shape[1]
    vals = []
    for row, rel in zip(top, _relevant_sets(relevant, users)):
        if rel:
            vals.append(len(rel.intersection(row.tolist())) / min(k, len(rel)))
    return float(np.mean(vals)) if vals else float("nan")


def ndcg_at_k(top: np.ndarray, relevant: sp.csr_matrix, users: np.ndarray) -> float:
    """Binary-relevance NDCG@k averaged over users with any relevant item."""
    k = top.shape[1]
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    vals = []
    for row, rel in zip(top, _relevant_sets(relevant, users)):
        if rel:
            gains = np.array([i in rel for i in row.tolist()], dtype=float)
            vals.append(float(gains @ disc) / float(disc[: min(k, len(rel))].sum()))
    return float(np.mean(vals)) if vals else float("nan")


def coverage(top: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in anyone's top-k (-1, top_k_unrated's padding
    for a row with fewer unrated items than k, is no item)."""
    return float(len(np.unique(top[top >= 0])) / n_items)
