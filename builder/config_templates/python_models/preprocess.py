"""Triton Python model `preprocess`: a request's USER_ID and/or ITEM_IDS + RATINGS, TOP_K,
EXCLUDE_IDS, INCLUDE_IDS -> DENSE float32 [rows, n_items], TOP_K_OUT int32 [rows, 1],
UNKNOWN_ITEMS int32 [rows, 1], BLOCKED bool [rows, n_items] (the rules' items, serving/rules.py,
and the repository's blocklist, serving/blocklist.py).

A thin shell over serving.requests (numpy only, vendored beside this file by a build): every
request of a batch is checked on its own (a bad one gets a 400 / INVALID_ARGUMENT with its
reason, never failing its batch-mates), the valid ones scattered into one dense batch.
"""
import os
import sys

# The build vendors serving/ into this version folder; the stub appends the folder to sys.path
# after site-packages, so it goes first: the code that matches these assets, not an installed copy.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import triton_python_backend_utils as pb_utils  # noqa: E402

from serving import contract  # noqa: E402
from serving.requests import Catalogue, prepare  # noqa: E402
from serving.triton_io import error_response, request_tensors  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        # The blocklist (this model's folder's copy) is read here: `aerec blocklist` then a reload
        # of this model applies a change.
        here = os.path.join(args["model_repository"], args["model_version"])
        self.catalogue = Catalogue.load(here).with_blocklist(args["model_repository"])

    def execute(self, requests):
        batch = prepare([request_tensors(r) for r in requests], self.catalogue)
        responses = [error_response(batch.errors[i]) if i in batch.errors else None for i in range(len(requests))]
        for i, lo, hi in batch.spans:
            responses[i] = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(contract.DENSE, batch.dense[lo:hi]),
                pb_utils.Tensor(contract.TOP_K_OUT, batch.top_k[lo:hi]),
                pb_utils.Tensor(contract.UNKNOWN_ITEMS, batch.unknown[lo:hi]),
                pb_utils.Tensor(contract.BLOCKED, batch.blocked[lo:hi]),
            ])
        return responses
