"""The seeds' stacked autoencoder: n-20-10-20-n, sigmoid hidden layers, linear output."""
import torch
from torch import nn


class StackedAutoencoder(nn.Module):
    """A plain stacked autoencoder: n_inputs -> layers... (sigmoid) -> mirrored -> n_inputs
    (linear output), the project's first baseline; no paper's variant in particular.

    Rows are one user's raw ratings, float [batch, n_inputs], 0 = not rated; trained on the
    masked MSE (builder.losses), so the output's unobserved entries are the predictions."""

    def __init__(self, n_inputs: int, layers=(20, 10)):
        super().__init__()
        sizes = [n_inputs, *layers]
        self.encoder_layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes, sizes[1:]))
        rev = sizes[::-1]
        self.decoder_layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(rev, rev[1:]))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x float [batch, n_inputs] raw ratings -> code in (0, 1), [batch, layers[-1]].
        Raises RuntimeError (from torch) for another width."""
        for layer in self.encoder_layers:
            x = torch.sigmoid(layer(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x float [batch, n_inputs] raw ratings (0 = not rated) -> predicted ratings
        [batch, n_inputs] on the data's scale (not clipped)."""
        x = self.encode(x)
        for k, layer in enumerate(self.decoder_layers):
            x = layer(x)
            if k < len(self.decoder_layers) - 1:
                x = torch.sigmoid(x)
        return x
