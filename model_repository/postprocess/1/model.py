"""Triton Python model `postprocess`: the networks' outputs -> each row's top-K unrated items.

Inputs: RANKER_SCORES and/or RATER_PREDICTIONS float32 [rows, n_items] (as assets.json's
"ranker"/"rater" say), DENSE float32 [rows, n_items] (non-zero = rated), BLOCKED bool
[rows, n_items] (the request's EXCLUDE_IDS/INCLUDE_IDS rules, serving/rules.py), TOP_K int32
[rows, 1]. Outputs: RECOMMENDED_IDS, SCORES, TITLES, N_RECOMMENDED, SOURCE and, with a rater,
PREDICTED_RATINGS (model_repository/README.md). A thin shell over serving.lists, which ranks with
serving/ranking.py, the very code offline evaluation uses (vendored beside this file by a build).
"""
import os
import sys

# The build vendors serving/ into this version folder; the stub appends the folder to sys.path
# after site-packages, so it goes first: the code that matches these assets, not an installed copy.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from serving import contract  # noqa: E402
from serving.lists import Lists  # noqa: E402
from serving.metrics import RecommendationMetrics  # noqa: E402
from serving.triton_io import list_tensors  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.lists = Lists.load(folder)
        self.metrics = RecommendationMetrics(pb_utils, folder, args["model_version"])  # serving/metrics.py

    def execute(self, requests):
        get = lambda name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]  # noqa: E731
        dense = get(contract.DENSE)
        scores = np.concatenate(get(contract.RANKER_SCORES)) if self.lists.ranker else None
        ratings = np.concatenate(get(contract.RATER_PREDICTIONS)) if self.lists.rater else None
        ks = [int(k.reshape(-1)[0]) for k in get(contract.TOP_K)]  # one TOP_K per request
        sizes, dense = [len(d) for d in dense], np.concatenate(dense)
        blocked = np.concatenate(get(contract.BLOCKED))
        # dense: a cold row (no rating, or no positive input for the ranker) gets the popularity list
        ranked = self.lists.rank(scores, ratings, (dense != 0) | blocked, sizes, ks, dense)
        self.metrics.record(ranked)
        return [pb_utils.InferenceResponse(output_tensors=list_tensors(*row)) for row in ranked]
