"""The served lists: chosen item columns -> what `recommend` answers (ids, scores, predicted
ratings, titles, counts), padded as the contract says. The postprocess model and the fused
`recommend` model run this; the choosing is ranking.py's (or, fused, the ranking graph's).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from serving.contract import PAD, PAD_ID, PAD_TITLE, SOURCE_MODEL, SOURCE_POPULARITY
from serving.fallback import POPULARITY_FILE, no_positive_input
from serving.ranking import top_k_unrated


@dataclass(frozen=True)
class Lists:
    """What a list shows of each item, and which networks are served."""
    item_ids: np.ndarray   # int64 [n_items], sorted: index = column; string ids: object of UTF-8 bytes
    titles: np.ndarray     # object [n_items] of UTF-8 bytes
    low: float             # the rating scale predictions are clipped to
    high: float
    ranker: bool           # a ranker's scores order the list
    rater: bool            # a rater's predictions are shown (and order it when no ranker is served)
    # The popularity fallback (serving/fallback.py): the ranker's implicit threshold (None: no
    # ranker, or one built without it) and the items' training popularity (None: a repository
    # built without it; no fallback, no cold start).
    threshold: float | None = None
    popularity: np.ndarray | None = None

    @classmethod
    def load(cls, folder: str) -> "Lists":
        """From a version folder's item_ids.npy, titles.npy and assets.json."""
        load = lambda name: np.load(os.path.join(folder, name), allow_pickle=False)  # noqa: E731
        with open(os.path.join(folder, "assets.json")) as f:
            assets = json.load(f)
        # Encoded once here, not per request: string outputs are the costliest part of a response.
        titles = np.array([t.encode("utf-8") for t in load("titles.npy").tolist()], dtype=np.object_)
        low, high = assets["scale"]
        ids = load("item_ids.npy")
        if ids.dtype.kind == "U":  # string ids answer as BYTES: encoded once, as the titles
            ids = np.array([i.encode("utf-8") for i in ids.tolist()], dtype=np.object_)
        threshold = assets.get("implicit_threshold")
        has_popularity = os.path.isfile(os.path.join(folder, POPULARITY_FILE))
        return cls(ids, titles, float(low), float(high), bool(assets["ranker"]),
                   bool(assets["rater"]), float(threshold) if threshold is not None and has_popularity else None,
                   load(POPULARITY_FILE) if has_popularity else None)

    def cold(self, dense: np.ndarray) -> np.ndarray:
        """bool [rows]: the rows of `dense` (float32 [rows, n_items]) ranked by popularity: rows
        with no rating at all (a cold start: serving.requests lets them through only where the
        repository answers them so), and, where a ranker with an implicit threshold is served,
        rows with no positive input for it (serving/fallback.py). None without popularity."""
        if self.popularity is None:
            return np.zeros(len(dense), bool)
        if self.ranker and self.threshold is not None:
            # One pass: a row with no rating at all has no positive input either.
            return no_positive_input(dense, self.threshold)
        return ~np.asarray(dense).any(axis=1)

    def rank(self, scores, ratings, rated: np.ndarray, sizes: list[int], ks: list[int],
             dense: np.ndarray | None = None) -> list[tuple]:
        """Top-k items of each request's rows by `scores` (the ranker's, float32 [rows, n_items],
        or None) else `ratings` (the rater's, or None), the `rated` ones excluded (bool [rows,
        n_items]: the rated items, or'ed with the rules' items, serving/rules.py); `sizes` rows
        and `ks` list lengths per request. Returns package()'s answer. With `dense` (the rows'
        ratings), a cold row (cold()) is ranked by popularity, its SCORES the popularity."""
        cold = self.cold(dense) if dense is not None else np.zeros(len(rated), bool)
        if cold.any():
            # SCORES of a cold row: the items' popularity; of the others what they were (a rater
            # alone: its predictions, clipped as package() clips them).
            base = scores if scores is not None else np.clip(ratings, self.low, self.high)
            scores = np.array(base, dtype=np.float32, copy=True)
            scores[cold] = np.asarray(self.popularity, dtype=np.float32)
        by = ratings if scores is None else scores
        top = top_k_unrated(by, rated, max(ks))
        # A padding slot (PAD) reads the last column here; package() overwrites it with NaN.
        at = lambda a: None if a is None else np.take_along_axis(a, top, axis=1)  # noqa: E731
        return self.package(top, at(scores), at(ratings), sizes, ks, cold, dense)

    def package(self, top: np.ndarray, scores, ratings, sizes: list[int], ks: list[int],
                cold: np.ndarray | None = None, dense: np.ndarray | None = None) -> list[tuple]:
        """Chosen columns int64 [rows, max k] (PAD: padding) with the ranker's scores and the rater's
        predictions there (float32 [rows, max k], either may be None) -> per request (ids int64
        [size, k], or object of UTF-8 bytes for string ids, scores float32, predicted ratings
        float32 or None, titles object, n_recommended int32 [size, 1], source object [size, 1]:
        SOURCE_POPULARITY where `cold` (bool [rows]) else SOURCE_MODEL). Ratings are clipped to the
        scale; a ranker's scores are not (they are no ratings). Padding slots get PAD (PAD_ID for
        string ids), NaN and PAD_TITLE whatever the arrays held there. With `dense` (the rows'
        ratings, float32 [rows, n_items]), a cold row that rated nothing predicts NaN: a rating
        model's output for an empty history is no prediction for anyone."""
        pad = top < 0
        if ratings is not None:
            ratings = np.where(pad, np.float32(np.nan), np.clip(ratings, self.low, self.high)).astype(np.float32)
        scores = ratings if scores is None else np.where(pad, np.float32(np.nan), scores).astype(np.float32)
        if ratings is not None and dense is not None and cold is not None and cold.any():
            # Only cold rows can be empty (an empty row has no positive either): scan just those.
            empty = np.zeros(len(cold), bool)
            empty[cold] = ~np.asarray(dense)[cold].any(axis=1)
            if empty.any():
                ratings = ratings.copy() if ratings is scores else ratings
                ratings[empty] = np.float32(np.nan)
        idx = np.where(pad, 0, top)  # any real column: the padded slots are overwritten below
        if self.item_ids.dtype == np.object_:
            ids = self.item_ids[idx]
            ids[pad] = PAD_ID
        else:
            ids = np.where(pad, PAD, self.item_ids[idx]).astype(np.int64)
        titles = self.titles[idx]
        titles[pad] = PAD_TITLE
        cold = np.zeros(len(top), bool) if cold is None else np.asarray(cold, bool)
        source = np.where(cold, SOURCE_POPULARITY, SOURCE_MODEL).astype(np.object_).reshape(-1, 1)
        out, start = [], 0
        for size, k in zip(sizes, ks):
            rows = slice(start, start + size)
            n = (~pad[rows, :k]).sum(axis=1, keepdims=True).astype(np.int32)
            out.append((ids[rows, :k], scores[rows, :k], None if ratings is None else ratings[rows, :k],
                        titles[rows, :k], n, source[rows]))
            start += size
        return out
