"""Triton Python model `postprocess`: network outputs -> top-K unrated items, ids, scores, titles.

The list is ranked by the ranker's scores (a top-N model) when one is served, else by the
rater's predictions (a rating model). Uses ranking.py, the very file offline evaluation uses
(copied beside this one by the repository writer), over all requests of a batch at once.

Inputs (float32 [rows, n_items] each, present as assets.json's "ranker"/"rater" say):
RANKER_SCORES, RATER_PREDICTIONS; DENSE float32 [rows, n_items] (non-zero = rated); TOP_K
int32 [rows, 1]. Outputs: RECOMMENDED_IDS int64 [rows, k], SCORES float32 [rows, k] (the
ranker's score, unclipped; with no ranker, the predicted rating), TITLES bytes [rows, k],
PREDICTED_RATINGS float32 [rows, k] (the rater's prediction clipped to the rating scale; only
when a rater is served) and N_RECOMMENDED int32 [rows, 1].

Padding: a row with fewer unrated items than k (a rated item is never recommended) gets its
N_RECOMMENDED real items first, then slots holding RECOMMENDED_IDS -1, SCORES and
PREDICTED_RATINGS NaN, TITLES b"". The answer stays [rows, k] because one request may carry
several users.
"""
import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

RANKER_SCORES, RATER_PREDICTIONS = "RANKER_SCORES", "RATER_PREDICTIONS"
PAD_ID, PAD_TITLE = -1, b""  # a padding slot's RECOMMENDED_IDS and TITLES (its scores are NaN)


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        sys.path.insert(0, here)
        from ranking import top_k_unrated
        self.top_k_unrated = top_k_unrated
        self.item_ids = np.load(os.path.join(here, "item_ids.npy"), allow_pickle=False)
        titles = np.load(os.path.join(here, "titles.npy"), allow_pickle=False)
        # Encoded once here, not per request: string outputs are the costliest part of a response.
        self.titles = np.array([t.encode("utf-8") for t in titles.tolist()], dtype=np.object_)
        assets = json.loads(open(os.path.join(here, "assets.json")).read())
        self.low, self.high = assets["scale"]
        self.ranker, self.rater = bool(assets["ranker"]), bool(assets["rater"])

    def rank(self, scores, ratings, rated: np.ndarray, sizes: list[int], ks: list[int]):
        """Top-k unrated items of each request's rows (a request may carry several users, all
        with its one k) by `scores` (the ranker's, or None) else `ratings` (the rater's, or None):
        a list of (ids, scores, predicted ratings or None, titles, n_recommended) per request."""
        by = ratings if scores is None else scores
        top = self.top_k_unrated(by, rated, max(ks))
        # A padding slot (-1) reads the last column here; package() overwrites it with NaN.
        at = lambda a: None if a is None else np.take_along_axis(a, top, axis=1)  # noqa: E731
        return self.package(top, at(scores), at(ratings), sizes, ks)

    def package(self, top: np.ndarray, scores, ratings, sizes: list[int], ks: list[int]):
        """Chosen item columns [rows, max k] (-1: padding) with the ranker's scores and the
        rater's predictions there (either may be None) -> per request (ids, scores, predicted
        ratings or None, titles, n_recommended). Ratings are clipped to the scale; a ranker's
        scores are not (they are no ratings). Padding slots get PAD_ID, NaN and PAD_TITLE
        whatever the arrays held there."""
        pad = top < 0
        if ratings is not None:
            ratings = np.where(pad, np.float32(np.nan), np.clip(ratings, self.low, self.high)).astype(np.float32)
        scores = ratings if scores is None else np.where(pad, np.float32(np.nan), scores).astype(np.float32)
        idx = np.where(pad, 0, top)  # any real column: the padded slots are overwritten below
        ids = np.where(pad, PAD_ID, self.item_ids[idx]).astype(np.int64)
        titles = self.titles[idx]
        titles[pad] = PAD_TITLE
        out, start = [], 0
        for size, k in zip(sizes, ks):
            rows = slice(start, start + size)
            n = (~pad[rows, :k]).sum(axis=1, keepdims=True).astype(np.int32)
            out.append((ids[rows, :k], scores[rows, :k], None if ratings is None else ratings[rows, :k],
                        titles[rows, :k], n))
            start += size
        return out

    @staticmethod
    def tensors(ids, scores, ratings, titles, n_recommended) -> list:
        out = [pb_utils.Tensor("RECOMMENDED_IDS", np.ascontiguousarray(ids)),
               pb_utils.Tensor("SCORES", np.ascontiguousarray(scores)),
               pb_utils.Tensor("TITLES", np.ascontiguousarray(titles)),
               pb_utils.Tensor("N_RECOMMENDED", n_recommended)]
        if ratings is not None:
            out.append(pb_utils.Tensor("PREDICTED_RATINGS", np.ascontiguousarray(ratings)))
        return out

    def execute(self, requests):
        get = lambda name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]  # noqa: E731
        dense = get("DENSE")
        scores = np.concatenate(get(RANKER_SCORES)) if self.ranker else None
        ratings = np.concatenate(get(RATER_PREDICTIONS)) if self.rater else None
        ks = [int(k.reshape(-1)[0]) for k in get("TOP_K")]  # one TOP_K per request
        return [pb_utils.InferenceResponse(output_tensors=self.tensors(*row))
                for row in self.rank(scores, ratings, np.concatenate(dense) != 0, [d.shape[0] for d in dense], ks)]
