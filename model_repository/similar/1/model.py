"""Triton Python model `similar`: seed items (ITEM_IDS) -> the K most similar items, as
serving.similar defines them: the ranker's scores for a user whose history is the seeds, the
seeds, the request's EXCLUDE_IDS/INCLUDE_IDS and the catalogue's blocklist kept out.

A build copies this file to similar/<version>/model.py with the serving package, the steps'
assets (ids, titles, assets.json) and the ranker's network (ranker.onnx) beside it. The network
runs in ONNX Runtime inside the stub, as the fused `recommend` does (the embedded server has
it; NVIDIA's container does not). Every request of a batch is checked on its own (a bad one gets
a 400 / INVALID_ARGUMENT naming the problem); the valid ones go through the network together.
"""
import json
import os
import sys

# The build vendors serving/ into this version folder; the stub appends the folder to sys.path
# after site-packages, so it goes first: the code that matches these assets, not an installed copy.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from serving import contract  # noqa: E402
from serving.lists import Lists  # noqa: E402
from serving.requests import Catalogue, RequestError  # noqa: E402
from serving.session_options import session_options  # noqa: E402
from serving.similar import SimilarRequest, answer, parse_similar  # noqa: E402
from serving.triton_io import error_response, list_tensors, request_tensors  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        # The blocklist (this model's folder's copy) is read here: `aerec blocklist` then a reload
        # of this model applies a change.
        self.catalogue = Catalogue.load(here).with_blocklist(args["model_repository"])
        self.lists = Lists.load(here)
        opts = session_options(json.loads(args["model_config"]))
        self.session = ort.InferenceSession(os.path.join(here, "ranker.onnx"), opts,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def network(self, x):
        return self.session.run(None, {self.input: x})[0]

    def execute(self, requests):
        responses, parsed = [None] * len(requests), []
        for i, r in enumerate(requests):
            try:
                parsed.append((i, parse_similar(request_tensors(r), self.catalogue)))
            except RequestError as e:
                responses[i] = error_response(str(e))
        if parsed:
            # One network run for every valid request's rows: padded to the longest list, then cut.
            k = max(p.k for _, p in parsed)
            batch = SimilarRequest([s for _, p in parsed for s in p.seeds], k,
                                   np.concatenate([p.blocked for _, p in parsed]),
                                   np.concatenate([p.unknown for _, p in parsed]))
            top, scores = answer(batch, self.network, self.catalogue.high)
            ranked = self.lists.package(top, scores, None, [len(p.seeds) for _, p in parsed], [p.k for _, p in parsed])
            start = 0
            for (i, p), row in zip(parsed, ranked):
                ids, row_scores, _, titles, n, _ = row
                tensors = list_tensors(ids, row_scores, None, titles, n)
                unknown = np.ascontiguousarray(batch.unknown[start:start + len(p.seeds)])
                tensors.append(pb_utils.Tensor(contract.UNKNOWN_ITEMS, unknown))
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += len(p.seeds)
        return responses
