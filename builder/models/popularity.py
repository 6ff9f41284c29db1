"""Most-popular baseline: every user gets the same item scores, the training count of each
item. Any personalised top-N model has to beat it to be worth serving."""
import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from builder.models.implicit import binarise


def item_counts(matrix: sp.csr_matrix, threshold: float = 0.0) -> np.ndarray:
    """float32 [n_items]: how many rows (users) rated each item (threshold 0) or rated it
    >= threshold. matrix: users x items, raw ratings, 0 = not rated."""
    m = matrix.tocsc()
    hit = m.data > 0 if threshold <= 0 else m.data >= threshold
    cols = np.repeat(np.arange(m.shape[1]), np.diff(m.indptr))
    return np.bincount(cols[hit], minlength=m.shape[1]).astype(np.float32)


class Popularity(nn.Module):
    """Most-popular baseline: every row scores each item by its training count (a float32
    buffer [n_items] set by fit). `threshold`: an entry counts when > 0 (threshold 0) or
    >= threshold. A top-N model: counts rank, they are not ratings."""

    def __init__(self, n_items: int, threshold: float = 0.0):
        super().__init__()
        self.threshold = threshold
        self.register_buffer("counts", torch.zeros(n_items))

    def fit(self, matrix: sp.csr_matrix) -> "Popularity":
        """Set the counts from `matrix` (users x items CSR, raw ratings); returns self."""
        self.counts.copy_(torch.from_numpy(item_counts(matrix, self.threshold)))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x float [batch, n_items] raw ratings -> counts [batch, n_items], the same row for
        every user (x only sets the batch size). Raises RuntimeError (from torch) for another width."""
        # 0 * x keeps the batch axis (and the RATINGS input) in the exported graph.
        return binarise(x, self.threshold) * 0 + self.counts
