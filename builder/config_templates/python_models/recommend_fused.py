"""Triton Python model `recommend`, fused: preprocess -> ONNX Runtime -> postprocess in one stub.

The template of the fused pipeline (model_repository/README.md): a build copies this file to
recommend/<version>/model.py with the serving package, both steps' assets and the networks
(ranker.onnx and/or rater.onnx) beside it, and writes builder/config_templates/recommend_fused.pbtxt,
filled, as recommend/config.pbtxt. Triton ignores this folder: its name is no version number.

On the embedded CPU server the ensemble pays three Python-stub round trips per request (our
`onnxruntime` backend is a Python stub too); this runs the same steps with the very same code
(serving.requests, serving.lists) in one process. A ranker and a rater served together are
merged into one graph on their shared input. The masking (rated items and the request's
EXCLUDE_IDS/INCLUDE_IDS rules, fed as the graph's BLOCKED input) and top-K selection run inside
the ONNX graph (serving/ranking_graph.py: ONNX TopK, ties to the lower index, padding beyond a
row's allowed items, as serving/rules.py top_k_allowed), where ONNX Runtime does them 7x faster than
numpy's argpartition. It needs onnx and onnxruntime inside the stub, which the embedded server
has and NVIDIA's container does not: there, use the ensemble (the default).
"""
import json
import os
import sys

# The build vendors serving/ into this version folder; the stub appends the folder to sys.path
# after site-packages, so it goes first: the code that matches these assets, not an installed copy.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from serving import contract  # noqa: E402
from serving.lists import Lists  # noqa: E402
from serving.metrics import RecommendationMetrics  # noqa: E402
from serving.ranking_graph import K, TOP_INDICES, TOP_RATINGS, TOP_SCORES, with_top_k  # noqa: E402
from serving.requests import Catalogue, prepare  # noqa: E402
from serving.rules import top_k_allowed  # noqa: E402
from serving.session_options import session_options  # noqa: E402
from serving.sparse_input import with_sparse_first_layer, with_sparse_first_product  # noqa: E402
from serving.triton_io import error_response, list_tensors, request_tensors, requested_outputs  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        # The blocklist (this model's folder's copy) is read here: `aerec blocklist` then a reload
        # of this model applies a change.
        self.catalogue = Catalogue.load(here).with_blocklist(args["model_repository"])
        self.lists = Lists.load(here)
        self.metrics = RecommendationMetrics(pb_utils, here, args["model_version"])  # serving/metrics.py
        load = lambda role: onnx.load(os.path.join(here, f"{role}.onnx"))  # noqa: E731
        # One graph, one session: the ranker picks the items (or, served alone, the rater does)
        # and a rater served beside a ranker is read at those items in the same run.
        if self.lists.ranker:
            graph = with_top_k(load("ranker"), load("rater") if self.lists.rater else None, blocked=True)
        else:
            graph = with_top_k(load("rater"), blocked=True)
        # A ranker of the form binarise(x) @ B (EASE) reads only the rated rows of B for a few users,
        # and the first dense layer (an autoencoder rater's) only the rows at its input's non-zeros.
        with_sparse_first_product(graph)
        with_sparse_first_layer(graph)
        opts = session_options(json.loads(args["model_config"]))
        self.session = ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.outputs = [TOP_INDICES, TOP_SCORES] + ([TOP_RATINGS] if self.lists.ranker and self.lists.rater else [])
        # The popularity rows (serving/fallback.py, cold starts) are ranked outside the graph; the
        # rater alone gives their predicted ratings at the items popularity chose.
        self.rater_alone = None
        if self.lists.rater and self.lists.popularity is not None:
            self.rater_alone = ort.InferenceSession(load("rater").SerializeToString(), opts,
                                                    providers=["CPUExecutionProvider"])

    def execute(self, requests):
        batch = prepare([request_tensors(r) for r in requests], self.catalogue)
        responses = [error_response(batch.errors[i]) if i in batch.errors else None for i in range(len(requests))]
        if batch.spans:
            k = [int(batch.top_k[lo, 0]) for _, lo, _ in batch.spans]
            feed = {self.input: batch.dense, K: np.array([max(k)], np.int64), contract.BLOCKED: batch.blocked}
            top, values, *rest = self.session.run(self.outputs, feed)
            # Served alone, the rater's values are the predicted ratings the list was ranked by.
            scores, ratings = (values, rest[0] if rest else None) if self.lists.ranker else (None, values)
            cold = self.lists.cold(batch.dense)
            if cold.any():
                top, scores, ratings = self._popularity_rows(batch, cold, top, scores, ratings, max(k))
            ranked = self.lists.package(top, scores, ratings, [hi - lo for _, lo, hi in batch.spans], k, cold,
                                        batch.dense)
            self.metrics.record(ranked)
            for (i, lo, hi), row in zip(batch.spans, ranked):
                wanted = requested_outputs(requests[i])
                tensors = list_tensors(*row, wanted=wanted)
                if wanted is None or contract.UNKNOWN_ITEMS in wanted:
                    tensors.append(pb_utils.Tensor(contract.UNKNOWN_ITEMS, np.ascontiguousarray(batch.unknown[lo:hi])))
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def _popularity_rows(self, batch, cold, top, scores, ratings, k):
        """The graph's top, scores and ratings with the `cold` rows ranked by popularity, as
        serving.lists.Lists.rank ranks them in the ensemble's postprocess (a rater alone: the
        other rows' SCORES its predictions, clipped)."""
        rows = batch.dense[cold]
        popularity = np.broadcast_to(self.lists.popularity, rows.shape)
        chosen = top_k_allowed(popularity, rows != 0, batch.blocked[cold], k)
        at = np.where(chosen < 0, 0, chosen)   # PAD slots: any column; package() blanks them
        if scores is None:
            scores = np.clip(ratings, self.lists.low, self.lists.high)
        top, scores = top.copy(), scores.copy()
        top[cold], scores[cold] = chosen, np.take_along_axis(popularity, at, axis=1)
        if ratings is not None:
            predicted = self.rater_alone.run(None, {self.input: rows})[0]
            ratings = ratings.copy()
            ratings[cold] = np.take_along_axis(predicted, at, axis=1)
        return top, scores, ratings
