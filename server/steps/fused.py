"""Triton Python model `recommend`, fused: preprocess -> ONNX Runtime -> postprocess in one stub.

On the embedded CPU server the ensemble pays three Python-stub round trips per request (our
`onnxruntime` backend is a Python stub too); this runs the same three steps with the very same
code (preprocess.py and postprocess.py are copied beside it) in one process. The masking and
top-K selection run inside the ONNX graph (ONNX TopK: largest first, ties to the lower index,
as ranking.py; see ranking_graph.py), where ONNX Runtime does them 7x faster than numpy's
argpartition; the tests hold the served top-K equal to ranking.py's. It needs onnx and
onnxruntime inside the stub, which the embedded server has and NVIDIA's container does not:
there, use the ensemble (the default).
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
        from preprocess import TritonPythonModel as Preprocess
        from ranking_graph import K, TOP_INDICES, TOP_VALUES, with_top_k
        from session_options import session_options
        self.names = K, TOP_VALUES, TOP_INDICES
        self.pre, self.post = Preprocess(), Postprocess()
        self.pre.initialize(args)
        self.post.initialize(args)
        config = json.loads(args["model_config"])
        opts = session_options(config)   # session_options.py: copied beside this file
        graph = with_top_k(onnx.load(os.path.join(here, "model.onnx")))
        self.session = ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def execute(self, requests):
        errors, spans, dense, ks, unknown = self.pre.prepare(requests)
        responses = [pb_utils.InferenceResponse(error=pb_utils.TritonError(errors[i])) if i in errors else None
                     for i in range(len(requests))]
        if spans:
            k = [int(ks[lo, 0]) for _, lo, _ in spans]
            k_in, values_out, indices_out = self.names
            values, top = self.session.run([values_out, indices_out],
                                           {self.input: dense, k_in: np.array([max(k)], np.int64)})
            ranked = self.post.package(top, values, [hi - lo for _, lo, hi in spans], k)
            for (i, lo, hi), (ids, scores, titles) in zip(spans, ranked):
                responses[i] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("RECOMMENDED_IDS", ids), pb_utils.Tensor("SCORES", scores),
                    pb_utils.Tensor("TITLES", titles),
                    pb_utils.Tensor("UNKNOWN_ITEMS", np.ascontiguousarray(unknown[lo:hi]))])
        return responses
