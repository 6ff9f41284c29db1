"""Mult-DAE (Liang et al. 2018, "Variational Autoencoders for Collaborative Filtering"):
a denoising autoencoder over a user's binary history, trained with a multinomial likelihood.

Input binarised, L2-normalised per row, dropped out (the denoising), tanh hidden layers,
linear output logits; the loss (builder.losses.multinomial_nll) is a softmax over all items.
"""
import torch
import torch.nn.functional as F
from torch import nn

from builder.models.implicit import binarise


def normalised_input(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Binarise, then scale each row to unit L2 norm (an empty row stays 0)."""
    return F.normalize(binarise(x, threshold), p=2.0, dim=1, eps=1e-12)


class MultDAE(nn.Module):
    """Mult-DAE (Liang et al. 2018): n_items -> hidden... -> mirrored -> n_items, tanh between.

    The input is binarised (a rating > 0, or >= `threshold`), L2-normalised per row and dropped
    out at rate `input_dropout` in training; the output is logits of a multinomial over items
    (trained with builder.losses.multinomial_nll). A top-N model: logits rank, they are not ratings."""

    def __init__(self, n_items: int, hidden=(600, 200), input_dropout: float = 0.5, threshold: float = 0.0):
        super().__init__()
        self.threshold = threshold
        sizes = [n_items, *hidden]
        dims = list(zip(sizes, sizes[1:])) + [(o, i) for i, o in reversed(list(zip(sizes, sizes[1:])))]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in dims)
        for layer in self.layers:  # Liang et al.: Xavier weights, small normal biases
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=0.001)
        self.drop = nn.Dropout(input_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x float [batch, n_items] raw ratings (0 = not rated) -> logits [batch, n_items];
        softmax over the last axis gives the item probabilities. Raises RuntimeError (from torch)
        for another width."""
        h = self.drop(normalised_input(x, self.threshold))
        for k, layer in enumerate(self.layers):
            h = layer(h)
            if k < len(self.layers) - 1:
                h = torch.tanh(h)
        return h
