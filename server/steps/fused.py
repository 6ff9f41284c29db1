"""Triton Python model `recommend`, fused: preprocess -> ONNX Runtime -> postprocess in one stub.

On the embedded CPU server the ensemble pays three Python-stub round trips per request (our
`onnxruntime` backend is a Python stub too); this runs the same three steps with the very same
code (preprocess.py, postprocess.py and ranking.py are copied beside it) in one process.
It needs the onnxruntime package inside the stub, which the embedded server has and NVIDIA's
container does not: there, use the ensemble (the default), whose network runs natively.
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        sys.path.insert(0, here)
        from postprocess import TritonPythonModel as Postprocess
        from preprocess import TritonPythonModel as Preprocess
        self.pre, self.post = Preprocess(), Postprocess()
        self.pre.initialize(args)
        self.post.initialize(args)
        config = json.loads(args["model_config"])
        opts = ort.SessionOptions()
        param = config.get("parameters", {}).get("intra_op_thread_count", {}).get("string_value")
        threads = int(param or os.environ.get("AEREC_ORT_THREADS", "0"))
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(os.path.join(here, "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.input, self.output = self.session.get_inputs()[0].name, self.session.get_outputs()[0].name

    def execute(self, requests):
        errors, spans, dense, ks, unknown = self.pre.prepare(requests)
        responses = [pb_utils.InferenceResponse(error=pb_utils.TritonError(errors[i])) if i in errors else None
                     for i in range(len(requests))]
        if spans:
            preds = self.session.run([self.output], {self.input: dense})[0]
            ranked = self.post.rank(preds, dense != 0, [hi - lo for _, lo, hi in spans],
                                    [int(ks[lo, 0]) for _, lo, _ in spans])
            for (i, lo, hi), (ids, scores, titles) in zip(spans, ranked):
                responses[i] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("RECOMMENDED_IDS", ids), pb_utils.Tensor("SCORES", scores),
                    pb_utils.Tensor("TITLES", titles),
                    pb_utils.Tensor("UNKNOWN_ITEMS", np.ascontiguousarray(unknown[lo:hi]))])
        return responses
