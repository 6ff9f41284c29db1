"""Similar items: given seed items, the K items a ranker scores highest for a user whose whole
history is the seeds, the seeds never returned, the request's rules and the catalogue's
blocklist applied.

For an EASE ranker (Steck, "Embarrassingly Shallow Autoencoders", WWW 2019) the scores are the
item-item weights B: score(j) = sum over seeds s of B[s, j] (`item_item_scores`), exactly what
EASE recommends to a user who rated the seeds. Any other top-N network (Mult-VAE, Mult-DAE) is
asked the same question through itself: its scores for the multi-hot seed vector
(`seed_vectors`), each seed at the rating scale's top, as `recommend` reads items sent without
ratings. numpy only: the served `similar` model (builder/config_templates/python_models/similar.py)
runs `answer`, offline code and the tests call the same functions.
"""
from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import numpy as np

from serving.contract import EXCLUDE_IDS, INCLUDE_IDS, ITEM_IDS, MAX_ITEMS_PER_REQUEST, TOP_K, default_top_k
from serving.requests import Catalogue, RequestError, as_ids, rule_columns
from serving.rules import rule_mask, top_k_allowed


class SimilarRequest(NamedTuple):
    """One request, checked: its seeds' columns per row, the list length and the rules' mask."""
    seeds: list[np.ndarray]   # int64 item columns per row (unique, at least one)
    k: int
    blocked: np.ndarray       # bool [rows, n_items]: the rules' items (and the blocklist's)
    unknown: np.ndarray       # int32 [rows, 1]: the rules' ids the catalogue does not know


def seed_vectors(n_items: int, seeds: list[np.ndarray], value: float = 1.0) -> np.ndarray:
    """float32 [rows, n_items]: row r holds `value` at the columns seeds[r] (int64), 0 elsewhere:
    the history of a user who chose exactly the seeds."""
    x = np.zeros((len(seeds), n_items), np.float32)
    counts = [s.size for s in seeds]
    if sum(counts):
        x[np.repeat(np.arange(len(seeds)), counts), np.concatenate(seeds).astype(np.int64)] = value
    return x


def item_item_scores(weights: np.ndarray, seeds: list[np.ndarray]) -> np.ndarray:
    """float32 [rows, n_items]: the sum of the seeds' rows of an item-item weight matrix
    (`weights` [n_items, n_items], EASE's B): score(j) = sum_s B[s, j]."""
    weights = np.asarray(weights, np.float32)
    return np.stack([weights[np.asarray(s, np.int64)].sum(axis=0) for s in seeds]).astype(np.float32)


def top_k_similar(scores: np.ndarray, seeds: list[np.ndarray], blocked: np.ndarray | None, k: int) -> np.ndarray:
    """Columns of the k highest `scores` per row (float [rows, n_items]), best first, ties to
    the lower index, never a seed nor a `blocked` item (bool [rows, n_items] or None): int64
    [rows, min(k, n_items)], PAD (-1) beyond a row's allowed items (serving.rules.top_k_allowed)."""
    return top_k_allowed(scores, seed_vectors(scores.shape[1], seeds) != 0, blocked, k)


def seed_columns(ids: np.ndarray, catalogue: Catalogue) -> list[np.ndarray]:
    """ITEM_IDS [rows, n] (padded with -1, or b"" for string ids) -> each row's seed columns,
    unique, int64. Raises RequestError naming an unknown seed, or a row of padding alone."""
    ids = as_ids(ids, catalogue.item_ids, ITEM_IDS)
    if ids.shape[1] > MAX_ITEMS_PER_REQUEST:
        raise RequestError(f"{ids.shape[1]} seed items in one row; the limit is {MAX_ITEMS_PER_REQUEST}")
    out = []
    for row in ids:
        row = row[row != catalogue.item_pad]
        if not row.size:
            raise RequestError("ITEM_IDS held only padding: send at least one seed item")
        cols, known = catalogue.item_columns(row)
        unknown = ~known
        if unknown.any():
            shown = row[unknown][0]
            shown = repr(str(shown)) if isinstance(shown, str) else shown   # strings quoted, as requests.py does
            raise RequestError(f"unknown item {shown} in ITEM_IDS: "
                               "similar items need seeds the model was trained on")
        out.append(np.unique(cols).astype(np.int64))
    return out


def parse_similar(tensors: Mapping[str, np.ndarray | None], catalogue: Catalogue) -> SimilarRequest:
    """A `similar` request's tensors (ITEM_IDS, TOP_K, EXCLUDE_IDS, INCLUDE_IDS; absent ones None
    or missing) -> SimilarRequest. The rules behave as in `recommend` (unknown ids skipped and
    counted; an INCLUDE_IDS row of padding alone: no rule); the catalogue's blocklist is always
    excluded. Raises RequestError: no ITEM_IDS, an unknown seed, TOP_K not one per row, differing
    across rows or outside 1..n_items, a rule tensor of the wrong kind or size."""
    items, top_k = tensors.get(ITEM_IDS), tensors.get(TOP_K)
    if items is None or items.size == 0 or items.ndim != 2:
        raise RequestError("ITEM_IDS [rows, n] is required: the seed items to find similar items for")
    rows = items.shape[0]
    if top_k is None:
        top_k = np.full((rows, 1), default_top_k(catalogue.n_items), np.int32)
    if top_k.ndim != 2 or top_k.shape != (rows, 1):
        raise RequestError(f"TOP_K must be one integer per row ({rows} rows of ITEM_IDS)")
    if np.any(top_k != top_k[0, 0]):
        raise RequestError("TOP_K differs across the rows of one request; send one request per TOP_K")
    seeds = seed_columns(items, catalogue)
    k = int(top_k[0, 0])
    if not 1 <= k <= catalogue.n_items:
        raise RequestError(f"TOP_K must be in 1..{catalogue.n_items}, got {k}")
    exclude, include = [np.zeros(0, np.int64)] * rows, [None] * rows
    unknown = np.zeros((rows, 1), np.int32)
    for name in (EXCLUDE_IDS, INCLUDE_IDS):
        t = tensors.get(name)
        if t is None or t.size == 0:
            continue
        if t.shape[0] != rows:
            raise RequestError(f"{name} has {t.shape[0]} rows but ITEM_IDS has {rows}")
        parsed = rule_columns(t.reshape(rows, -1), catalogue, name)
        unknown[:, 0] += [skipped for _, skipped, _ in parsed]
        if name == EXCLUDE_IDS:
            exclude = [cols for cols, _, _ in parsed]
        else:
            include = [None if padding_only else cols for cols, _, padding_only in parsed]
    blocked = rule_mask(catalogue.n_items, exclude, include)
    blocked[:, catalogue.blocklist] = True
    return SimilarRequest(seeds, k, blocked, unknown)


def answer(request: SimilarRequest, network: Callable[[np.ndarray], np.ndarray], value: float):
    """(top int64 [rows, k], scores float32 [rows, k]) for a parsed request: `network` maps seed
    vectors (float32 [rows, n_items], each seed at `value`: the scale's top) to the ranker's
    scores; padding slots hold PAD and NaN."""
    n_items = request.blocked.shape[1]
    scores = np.asarray(network(seed_vectors(n_items, request.seeds, value)), np.float32)
    top = top_k_similar(scores, request.seeds, request.blocked, request.k)
    at = np.take_along_axis(scores, np.maximum(top, 0), axis=1)
    return top, np.where(top < 0, np.float32(np.nan), at).astype(np.float32)
