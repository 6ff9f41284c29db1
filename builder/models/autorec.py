"""AutoRec (Sedhain et al. 2015): h(r) = f(W g(V r + mu) + b), g = sigmoid, f = identity.

Item-based (I-AutoRec) feeds one item's ratings by all users; user-based (U-AutoRec) one
user's ratings of all items. The network is the same; only the orientation differs.
"""
import torch
from torch import nn


class AutoRec(nn.Module):
    def __init__(self, n_inputs: int, hidden: int = 500, dropout: float = 0.0):
        super().__init__()
        self.encoder = nn.Linear(n_inputs, hidden)
        self.decoder = nn.Linear(hidden, n_inputs)
        self.dropout = nn.Dropout(dropout)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.dropout(self.encode(x)))
