"""The deep autoencoder of NVIDIA DeepRecommender (Kuchaiev & Ginsburg 2017).

Encoder layers as given, decoder mirrors them; SELU everywhere (the output layer too, as the
reference command does); dropout only on the code (dropout after every layer stifled
convergence in the paper); optionally a constrained decoder that reuses the transposed
encoder weights. Xavier-uniform weights, zero biases.
"""
import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"selu": F.selu, "relu": F.relu, "elu": F.elu, "sigmoid": torch.sigmoid,
               "tanh": torch.tanh, "lrelu": F.leaky_relu, "none": lambda x: x}


class DeepAutoencoder(nn.Module):
    def __init__(self, n_inputs: int, layers=(512, 512, 1024), activation: str = "selu",
                 dropout: float = 0.8, constrained: bool = False, last_activation: bool = True,
                 input_dropout: float = 0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        sizes = [n_inputs, *layers]
        self.act = ACTIVATIONS[activation]
        self.constrained = constrained
        self.last_activation = last_activation
        self.enc = nn.ParameterList(nn.Parameter(torch.empty(o, i)) for i, o in zip(sizes, sizes[1:]))
        self.enc_b = nn.ParameterList(nn.Parameter(torch.zeros(o)) for o in sizes[1:])
        rev = sizes[::-1]
        if not constrained:
            self.dec = nn.ParameterList(nn.Parameter(torch.empty(o, i)) for i, o in zip(rev, rev[1:]))
        self.dec_b = nn.ParameterList(nn.Parameter(torch.zeros(o)) for o in rev[1:])
        for w in list(self.enc) + (list(self.dec) if not constrained else []):
            nn.init.xavier_uniform_(w)
        self.drop = nn.Dropout(dropout)
        self.input_drop = nn.Dropout(input_dropout)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_drop(x)
        for w, b in zip(self.enc, self.enc_b):
            x = self.act(F.linear(x, w, b))
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        weights = [w.t() for w in reversed(self.enc)] if self.constrained else list(self.dec)
        for k, (w, b) in enumerate(zip(weights, self.dec_b)):
            z = F.linear(z, w, b)
            if k < len(weights) - 1 or self.last_activation:
                z = self.act(z)
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.drop(self.encode(x)))
