"""The Python models' glue to Triton: a request's input tensors as numpy, an answer's output
tensors, a request's own error. Imports triton_python_backend_utils, so it loads only inside a
Triton Python stub; everything it wraps (serving.requests, serving.lists) is tested without one.
"""
import numpy as np
import triton_python_backend_utils as pb_utils

from serving import contract


def request_tensors(request) -> dict:
    """The contract's inputs of one request as numpy arrays (None: not sent)."""
    tensors = {}
    for name in contract.INPUTS:
        t = pb_utils.get_input_tensor_by_name(request, name)
        tensors[name] = None if t is None else t.as_numpy()
    return tensors


def error_response(message: str):
    """A client's mistake: HTTP 400 / gRPC INVALID_ARGUMENT, through the ensemble too (a plain
    TritonError would be 500 / INTERNAL, telling the client the server failed)."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


def requested_outputs(request) -> set[str] | None:
    """The outputs the client asked for (None: every output). Triton returns only those, so a
    model need not build the rest: the titles (a BYTES tensor, serialised in Python) are the
    dearest, and most clients never read them."""
    names = set(request.requested_output_names())
    return names or None


def list_tensors(ids, scores, ratings, titles, n_recommended, source=None, wanted: set[str] | None = None) -> list:
    """One request's answer (serving.lists.Lists.package's tuple) as output tensors;
    PREDICTED_RATINGS only where `ratings` is not None (a rater is served), SOURCE where `source`
    is. `wanted`: build only these outputs (requested_outputs); None builds all."""
    arrays = {contract.RECOMMENDED_IDS: ids, contract.SCORES: scores, contract.TITLES: titles,
              contract.N_RECOMMENDED: n_recommended}
    if source is not None:
        arrays[contract.SOURCE] = source
    if ratings is not None:
        arrays[contract.PREDICTED_RATINGS] = ratings
    return [pb_utils.Tensor(name, np.ascontiguousarray(a)) for name, a in arrays.items()
            if wanted is None or name in wanted]
