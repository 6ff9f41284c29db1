"""Triton Python model `postprocess`: predictions -> top-K unrated items, ids, scores, titles.

Uses ranking.py, the very file offline evaluation uses (copied beside this one by the
repository writer), over all requests of a batch at once.
"""
import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


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
        self.low, self.high = json.loads(open(os.path.join(here, "assets.json")).read())["scale"]

    def rank(self, preds: np.ndarray, rated: np.ndarray, sizes: list[int], ks: list[int]):
        """Top-k unrated items of each request's rows (a request may carry several users, all
        with its one k): a list of (ids, scores, titles) per request."""
        top = self.top_k_unrated(preds, rated, max(ks))
        return self.package(top, np.take_along_axis(preds, top, axis=1), sizes, ks)

    def package(self, top: np.ndarray, values: np.ndarray, sizes: list[int], ks: list[int]):
        """Chosen item columns and their predictions [rows, max k] -> per request (ids, scores
        clipped to the rating scale, titles)."""
        scores = np.clip(values, self.low, self.high).astype(np.float32)
        out, start = [], 0
        for size, k in zip(sizes, ks):
            idx = top[start:start + size, :k]
            out.append((self.item_ids[idx].astype(np.int64), scores[start:start + size, :k], self.titles[idx]))
            start += size
        return out

    def execute(self, requests):
        get = lambda r, n: pb_utils.get_input_tensor_by_name(r, n).as_numpy()  # noqa: E731
        preds = [get(r, "PREDICTIONS") for r in requests]
        sizes = [p.shape[0] for p in preds]
        rated = np.concatenate([get(r, "DENSE") for r in requests]) != 0
        ks = [int(get(r, "TOP_K").reshape(-1)[0]) for r in requests]  # one TOP_K per request
        return [pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("RECOMMENDED_IDS", ids), pb_utils.Tensor("SCORES", scores),
                    pb_utils.Tensor("TITLES", titles)])
                for ids, scores, titles in self.rank(np.concatenate(preds), rated, sizes, ks)]
