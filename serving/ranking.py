"""Top-N selection shared by offline evaluation and the served postprocess model.

numpy only: a repository build vendors the serving package into the Python models' version
folders, so the server and the offline path run literally the same code.
"""
import numpy as np

# PAD: the column a slot holds when a row has fewer unrated items than k, never a real column.
from serving.contract import PAD


def top_k_unrated(scores: np.ndarray, rated: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row, already-rated items excluded, best first.

    scores: [batch, n_items]; rated: bool [batch, n_items]; k >= 1. Returns int64
    [batch, min(k, n_items)]. A row with fewer than k unrated items gets all of them, then
    PAD (-1) in the remaining slots: a rated item is never returned, whatever k. Callers
    count real entries with `(top >= 0).sum(axis=1)` and must not index with a PAD.

    A partition finds each row's k-th highest score in O(n); the candidates are the items above
    it plus, among the items equal to it, the lowest indices (ONNX TopK's rule, so the served
    graph picks the same items on ties); only those k are then sorted, ties by lower index.
    Scores of -inf are raised to the lowest float32 so that every unrated item still outranks
    every rated one (the served ONNX graph does the same). Fully vectorised over the batch.
    """
    scores = np.asarray(scores, dtype=np.float32)
    rows, n = scores.shape
    k = int(min(k, n))
    masked = np.where(rated, -np.inf, np.maximum(scores, np.finfo(np.float32).min))
    if k < n:
        part = np.argpartition(-masked, k - 1, axis=1)
        cand = np.sort(part[:, :k], axis=1)
        kth = np.take_along_axis(masked, part[:, k - 1:k], axis=1)    # [rows, 1]: the k-th highest
        crossed = np.flatnonzero((masked >= kth).sum(axis=1) > k)     # ties across the k-th place
        if len(crossed):
            m, t = masked[crossed], kth[crossed]
            above, tied = m > t, m == t
            # Of the items tied with the k-th, the lowest-indexed fill what `above` leaves.
            take = tied & (np.cumsum(tied, axis=1) <= k - above.sum(axis=1, keepdims=True))
            cand[crossed] = np.nonzero(above | take)[1].reshape(len(crossed), k)   # index order
    else:
        cand = np.broadcast_to(np.arange(n), masked.shape)
    vals = np.take_along_axis(masked, cand, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")                  # ties keep index order
    top = np.take_along_axis(cand, order, axis=1).astype(np.int64)
    # Rated items sort last (-inf): they fill a row's slots only once its unrated items run out.
    top[np.take_along_axis(np.asarray(rated, bool), top, axis=1)] = PAD
    return top
