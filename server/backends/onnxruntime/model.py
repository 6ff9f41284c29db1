"""A Python-based Triton backend named `onnxruntime`: serves `platform: "onnxruntime_onnx"`
configs with ONNX Runtime where the native backend is absent (the embedded CPU server).

The very same config.pbtxt runs on the native C++ backend in NVIDIA's container. Triton hands
`execute` a list of requests without concatenating them; we stack every request's rows into one
batch, make one ONNX Runtime call, and split the result back.
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# The serving package the launcher vendors beside this file, ahead of any installed copy.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving.session_options import session_options  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        name = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], name)
        self.session = ort.InferenceSession(path, session_options(config), providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        arrays = {n: [pb_utils.get_input_tensor_by_name(r, n).as_numpy() for r in requests] for n in self.inputs}
        sizes = [a.shape[0] for a in arrays[self.inputs[0]]]
        feed = {n: np.concatenate(a) if len(a) > 1 else a[0] for n, a in arrays.items()}
        results = self.session.run(self.outputs, feed)
        responses, start = [], 0
        for size in sizes:
            tensors = [pb_utils.Tensor(n, res[start:start + size]) for n, res in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
