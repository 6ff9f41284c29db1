"""Top-N selection shared by offline evaluation and the served postprocess model.

numpy only, no project imports: the repository writer copies this file next to the Triton
Python model, so the server and the offline path run literally the same code.
"""
import numpy as np


def top_k_unrated(scores: np.ndarray, rated: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row, already-rated items excluded, best first.

    scores: [batch, n_items]; rated: bool [batch, n_items]. argpartition finds the k
    candidates in O(n) per row, then only those k are sorted; among equal scores the lower
    item index comes first. Fully vectorised over the batch.
    """
    scores = np.asarray(scores, dtype=np.float32)
    n = scores.shape[1]
    k = int(min(k, n))
    masked = np.where(rated, -np.inf, scores)
    if k < n:
        cand = np.argpartition(-masked, k - 1, axis=1)[:, :k]
    else:
        cand = np.broadcast_to(np.arange(n), masked.shape)
    cand = np.sort(cand, axis=1)  # index order first, so the stable sort breaks ties by index
    vals = np.take_along_axis(masked, cand, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(cand, order, axis=1).astype(np.int64)
