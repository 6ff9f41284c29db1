"""The popularity fallback: a user with no positive input for the ranker gets the most popular items.

A top-N ranker trained on implicit feedback reads a rating as a positive only at or above its
threshold (EASE's preset: 4 stars). A user whose ratings all fall below it gives the ranker an
all-zero input and EASE scores every item 0: its "personal" list would be the catalogue in
index order. Such a row is ranked by the items' training popularity instead, rated items still
excluded. numpy only: served (postprocess, the fused model) and offline (builder/evaluate.py)
alike, so the two stay equal.
"""
import numpy as np

# The repository asset, float32 [n_items]: how many training users rated each item. Written by
# builder/repository.py beside postprocess (and the fused model), read by serving.lists.Lists.load.
POPULARITY_FILE = "popularity.npy"


def no_positive_input(dense: np.ndarray, threshold: float) -> np.ndarray:
    """bool [rows]: the rows of `dense` (float [rows, n_items] raw ratings, 0 = not rated) holding
    no rating the ranker counts as a positive: none > 0 (threshold <= 0) or none >= threshold."""
    dense = np.asarray(dense)
    positive = dense > 0 if threshold <= 0 else dense >= threshold
    return ~positive.any(axis=1)


def with_popularity_fallback(scores: np.ndarray, dense: np.ndarray, threshold: float,
                             popularity: np.ndarray) -> np.ndarray:
    """`scores` (float32 [rows, n_items], the ranker's) with the rows that have no positive input
    (no_positive_input) replaced by `popularity` (float [n_items]); a new array only when a row
    is replaced. Ranking the result with serving.ranking.top_k_unrated gives those rows the most
    popular unrated items, their SCORES the items' popularity."""
    cold = no_positive_input(dense, threshold)
    if not cold.any():
        return scores
    out = np.array(scores, dtype=np.float32, copy=True)
    out[cold] = np.asarray(popularity, dtype=np.float32)
    return out
