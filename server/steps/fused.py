"""Triton Python model `recommend`, fused: preprocess -> ONNX Runtime -> postprocess in one stub.

On the embedded CPU server the ensemble pays three Python-stub round trips per request (our
`onnxruntime` backend is a Python stub too); this runs the same three steps with the very same
code (preprocess.py and postprocess.py are copied beside it) in one process. A ranker and a
rater served together are merged into one graph on their shared input (ranker.onnx and
rater.onnx beside this file; either may be alone). The masking and top-K selection run inside
the ONNX graph (ONNX TopK: largest first, ties to the lower index, padding -1 beyond a row's
unrated items, as ranking.py; see ranking_graph.py), where ONNX Runtime does them 7x faster
than numpy's argpartition; the tests hold the served top-K equal to ranking.py's. It needs
onnx and onnxruntime inside the stub, which the embedded server has and NVIDIA's container
does not: there, use the ensemble (the default).
"""
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        sys.path.insert(0, here)
        from postprocess import TritonPythonModel as Postprocess
        from preprocess import TritonPythonModel as Preprocess, request_error
        from ranking_graph import K, TOP_INDICES, TOP_RATINGS, TOP_SCORES, with_top_k
        from session_options import session_options
        self.pre, self.post, self.request_error = Preprocess(), Postprocess(), request_error
        self.pre.initialize(args)
        self.post.initialize(args)
        config = json.loads(args["model_config"])
        opts = session_options(config)   # session_options.py: copied beside this file
        load = lambda role: onnx.load(os.path.join(here, f"{role}.onnx"))  # noqa: E731
        # One graph, one session: the ranker picks the items (or, served alone, the rater does)
        # and a rater served beside a ranker is read at those items in the same run.
        if self.post.ranker:
            graph = with_top_k(load("ranker"), load("rater") if self.post.rater else None)
        else:
            graph = with_top_k(load("rater"))
        self.session = ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.input, self.k = self.session.get_inputs()[0].name, K
        self.outputs = [TOP_INDICES, TOP_SCORES] + ([TOP_RATINGS] if self.post.ranker and self.post.rater else [])

    def execute(self, requests):
        errors, spans, dense, ks, unknown = self.pre.prepare(requests)
        # A request's own mistake: 400 / INVALID_ARGUMENT, as the ensemble answers it.
        responses = [pb_utils.InferenceResponse(error=self.request_error(errors[i])) if i in errors else None
                     for i in range(len(requests))]
        if spans:
            k = [int(ks[lo, 0]) for _, lo, _ in spans]
            feed = {self.input: dense, self.k: np.array([max(k)], np.int64)}
            top, values, *rest = self.session.run(self.outputs, feed)
            # Served alone, the rater's values are the predicted ratings the list was ranked by.
            scores, ratings = (values, rest[0] if rest else None) if self.post.ranker else (None, values)
            ranked = self.post.package(top, scores, ratings, [hi - lo for _, lo, hi in spans], k)
            for (i, lo, hi), row in zip(spans, ranked):
                responses[i] = pb_utils.InferenceResponse(output_tensors=[
                    *self.post.tensors(*row), pb_utils.Tensor("UNKNOWN_ITEMS", np.ascontiguousarray(unknown[lo:hi]))])
        return responses
