"""The seeds' stacked autoencoder: n-20-10-20-n, sigmoid hidden layers, linear output."""
import torch
from torch import nn


class StackedAutoencoder(nn.Module):
    def __init__(self, n_inputs: int, layers=(20, 10)):
        super().__init__()
        sizes = [n_inputs, *layers]
        self.encoder_layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes, sizes[1:]))
        rev = sizes[::-1]
        self.decoder_layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(rev, rev[1:]))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.encoder_layers:
            x = torch.sigmoid(layer(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encode(x)
        for k, layer in enumerate(self.decoder_layers):
            x = layer(x)
            if k < len(self.decoder_layers) - 1:
                x = torch.sigmoid(x)
        return x
