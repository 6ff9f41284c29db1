"""Per-request rules: items a row must never get (EXCLUDE_IDS) and the only items it may get
(INCLUDE_IDS), applied as a mask before the top-K, so a list stays K long from the next-best
allowed items and is shorter only when fewer than K items are allowed.

numpy only: the preprocess model and the fused `recommend` model build the mask with
`rule_mask`, postprocess (and the fused model's ONNX graph, serving/ranking_graph.py) rank with
it as `top_k_allowed` does, and offline code (tests, evaluation) calls `top_k_allowed` itself,
so served and offline lists are the same.
"""
from __future__ import annotations

import numpy as np

from serving.ranking import top_k_unrated


def rule_mask(n_items: int, exclude: list[np.ndarray], include: list[np.ndarray | None]) -> np.ndarray:
    """bool [rows, n_items]: True where a row's rules keep an item out. `exclude[r]`: int64 item
    columns row r must never get; `include[r]`: the only columns row r may get (None: no include
    rule; an empty array: nothing is allowed). Columns must lie in 0..n_items-1 (unknown ids are
    dropped before, see serving.requests). Both rules together: included and not excluded."""
    rows = len(exclude)
    if len(include) != rows:
        raise ValueError(f"{rows} exclude rows but {len(include)} include rows")
    blocked = np.zeros((rows, n_items), bool)
    limited = [r for r, cols in enumerate(include) if cols is not None]
    if limited:
        blocked[limited] = True
        counts = [include[r].size for r in limited]
        blocked[np.repeat(limited, counts), np.concatenate([include[r] for r in limited]).astype(np.int64)] = False
    counts = [cols.size for cols in exclude]
    if sum(counts):
        blocked[np.repeat(np.arange(rows), counts), np.concatenate(exclude).astype(np.int64)] = True
    return blocked


def top_k_allowed(scores: np.ndarray, rated: np.ndarray, blocked: np.ndarray | None, k: int) -> np.ndarray:
    """Indices of the k highest `scores` per row among the items neither `rated` nor `blocked`
    (rule_mask), best first, ties to the lower index: serving.ranking.top_k_unrated with the
    rules' items masked as the rated ones are. scores float [rows, n_items]; rated, blocked bool
    [rows, n_items] (blocked None: no rules). Returns int64 [rows, min(k, n_items)], PAD (-1)
    in the slots beyond a row's allowed items."""
    masked = np.asarray(rated, bool) if blocked is None else np.asarray(rated, bool) | blocked
    return top_k_unrated(scores, masked, k)
