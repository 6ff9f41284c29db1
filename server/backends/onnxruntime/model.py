"""A Python-based Triton backend named `onnxruntime`: serves `platform: "onnxruntime_onnx"`
configs with ONNX Runtime where the native backend is absent (the embedded CPU server).

The very same config.pbtxt runs on the native C++ backend in NVIDIA's container. Triton hands
`execute` a list of requests without concatenating them; we stack every request's rows into one
batch, make one ONNX Runtime call, and split the result back.
"""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        name = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], name)
        opts = ort.SessionOptions()
        # The native backend's parameter name, so one config.pbtxt means the same on both.
        param = config.get("parameters", {}).get("intra_op_thread_count", {}).get("string_value")
        threads = int(param or os.environ.get("AEREC_ORT_THREADS", "0"))
        if threads:
            opts.intra_op_num_threads = threads
        # Idle pool threads sleep instead of spinning when the config says so (Tuning.ort_spinning).
        spinning = config.get("parameters", {}).get("session.intra_op.allow_spinning", {}).get("string_value")
        if spinning is not None:
            opts.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
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
