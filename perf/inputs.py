"""perf_analyzer --input-data files made from real held-out users (never random tensors).

The users are those of the split's test set; what a request carries is what such a user's
client would send: their training-period ratings (ITEM_IDS + RATINGS, variable length), or
just their USER_ID, and TOP_K; with rules, a request also carries EXCLUDE_IDS and INCLUDE_IDS
drawn from the catalogue with a fixed seed (a basket and recently shown items; an in-stock
shelf). Model-level files carry the same users' dense rating vectors.
Ids are written as the data set has them: integers, or strings for a catalogue of string ids
(perf_analyzer's JSON takes a BYTES tensor's content as strings).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def held_out_users(test: sp.csr_matrix, train: sp.csr_matrix, limit: int) -> np.ndarray:
    """Rows of users who have test ratings and a training history, in id order (deterministic)."""
    has_test = np.diff(test.tocsr().indptr) > 0
    has_train = np.diff(train.tocsr().indptr) > 0
    return np.flatnonzero(has_test & has_train)[:limit]


def _floats(values) -> list[float]:
    # perf_analyzer wants FP32 content written as floats ("5.0"), not ints.
    return [float(v) for v in values]


def _ids(values: np.ndarray) -> list:
    """Raw ids as JSON content: ints for an integer catalogue, strings (BYTES tensors) for a unicode one."""
    return [str(v) for v in values.tolist()] if values.dtype.kind == "U" else [int(v) for v in values.tolist()]


def ensemble_ratings_data(train: sp.csr_matrix, item_ids: np.ndarray, users: np.ndarray, top_k: int = 10) -> dict:
    """perf_analyzer --input-data for `recommend`: each user's training ratings as ITEM_IDS (raw ids) and
    RATINGS, one request per user of `users` (rows of `train`)."""
    train = train.tocsr()
    data = []
    for u in users:
        row = train[u]
        data.append({"ITEM_IDS": {"content": _ids(np.asarray(item_ids)[row.indices]), "shape": [row.nnz]},
                     "RATINGS": {"content": _floats(row.data), "shape": [row.nnz]},
                     "TOP_K": {"content": [top_k], "shape": [1]}})
    return {"data": data}


def rule_columns(n_items: int, n_requests: int, n_exclude: int = 50, n_include: int = 200,
                 seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per request, (exclude, include): `n_exclude` and `n_include` distinct item columns, each
    list drawn uniformly without replacement from 0..n_items-1 and independently of the other
    (an item in the basket may be on the shelf too), from numpy's default_rng(`seed`): the same
    lists on every run. Raises ValueError when a list is longer than the catalogue."""
    if max(n_exclude, n_include) > n_items:
        raise ValueError(f"{max(n_exclude, n_include)} rule ids from a catalogue of {n_items} items")
    rng = np.random.default_rng(seed)
    return [(np.sort(rng.choice(n_items, n_exclude, replace=False)), np.sort(rng.choice(n_items, n_include,
                                                                                      replace=False)))
            for _ in range(n_requests)]


def ensemble_rules_data(train: sp.csr_matrix, item_ids: np.ndarray, users: np.ndarray, top_k: int = 10,
                        n_exclude: int = 50, n_include: int = 200, seed: int = 0) -> dict:
    """ensemble_ratings_data with per-request rules in every request: EXCLUDE_IDS (`n_exclude` raw
    ids) and INCLUDE_IDS (`n_include` raw ids) from rule_columns, typed as ITEM_IDS (ints, or
    strings for a BYTES catalogue) and shaped [n] like it (perf_analyzer adds the batch dimension)."""
    item_ids = np.asarray(item_ids)
    data = ensemble_ratings_data(train, item_ids, users, top_k)["data"]
    for request, (exclude, include) in zip(data, rule_columns(len(item_ids), len(data), n_exclude, n_include, seed)):
        request["EXCLUDE_IDS"] = {"content": _ids(item_ids[exclude]), "shape": [len(exclude)]}
        request["INCLUDE_IDS"] = {"content": _ids(item_ids[include]), "shape": [len(include)]}
    return {"data": data}


def ensemble_user_data(user_ids: np.ndarray, users: np.ndarray, top_k: int = 10) -> dict:
    """perf_analyzer --input-data for `recommend` by known user: USER_ID (raw ids) of `users`."""
    user_ids = np.asarray(user_ids)
    return {"data": [{"USER_ID": {"content": _ids(user_ids[[u]]), "shape": [1]},
                      "TOP_K": {"content": [top_k], "shape": [1]}} for u in users]}


def model_data(train: sp.csr_matrix, users: np.ndarray, name: str = "RATINGS") -> dict:
    """perf_analyzer --input-data for a network alone: each user's dense rating vector (RATINGS, float32
    [items])."""
    dense = train.tocsr()[users].toarray().astype(np.float32)
    return {"data": [{name: {"content": _floats(r), "shape": [len(r)]}} for r in dense]}


def write(obj: dict, path: Path) -> Path:
    """Write perf_analyzer input data as JSON to `path` (parents created); returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path
