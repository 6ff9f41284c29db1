"""AutoRec (Sedhain et al. 2015): h(r) = f(W g(V r + mu) + b), g = sigmoid, f = identity.

Item-based (I-AutoRec) feeds one item's ratings by all users; user-based (U-AutoRec) one
user's ratings of all items. The network is the same; only the orientation differs.
"""
import torch
from torch import nn


class AutoRec(nn.Module):
    """AutoRec (Sedhain et al. 2015): one sigmoid hidden layer of `hidden` units, linear output.

    A row is one item's ratings by all users (I-AutoRec) or one user's of all items (U-AutoRec):
    `n_inputs` entries of raw ratings on the data's scale, 0 = not rated. Dropout (rate
    `dropout`) falls on the code during training only. The loss is masked to observed ratings
    (builder.losses), so the output's unobserved entries are the predictions."""

    def __init__(self, n_inputs: int, hidden: int = 500, dropout: float = 0.0):
        super().__init__()
        self.encoder = nn.Linear(n_inputs, hidden)
        self.decoder = nn.Linear(hidden, n_inputs)
        self.dropout = nn.Dropout(dropout)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """g(V r + mu): x float [batch, n_inputs] raw ratings -> code in (0, 1), [batch, hidden].
        Raises RuntimeError (from torch) when the last axis is not n_inputs wide."""
        return torch.sigmoid(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """h(r): x float [batch, n_inputs] raw ratings (0 = not rated) -> predicted ratings
        [batch, n_inputs] on the data's scale (not clipped). Raises RuntimeError (from torch)
        for another width."""
        return self.decoder(self.dropout(self.encode(x)))
