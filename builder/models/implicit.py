"""Implicit feedback from a raw rating vector, inside the graph: the top-N models take the
same RATINGS tensor as the rating models and decide for themselves what counts as a signal."""
import torch


def binarise(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """1.0 where a rating counts as positive feedback, else 0.0; same shape and dtype as x.

    threshold 0 means "any rating" (x > 0: a stored 0 is "not rated"); otherwise
    x >= threshold (e.g. 4: liked). One comparison and a Cast in ONNX.
    """
    hit = x > 0 if threshold <= 0 else x >= threshold
    return hit.to(x.dtype)
