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
                 input_dropout: float = 0.0, center: bool = False):
        super().__init__()
        self.center = center
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
        if not self.center:
            return self.decode(self.drop(self.encode(x)))
        # User-mean centering: the network sees each rating's deviation from the user's own
        # mean and predicts deviations; the mean is added back. With few users to learn from,
        # this spares the network learning every user's offset. Computed from the input
        # vector itself, so serving stays one forward pass (and one ONNX graph).
        mean = user_mean(x)
        return mean + self.decode(self.drop(self.encode((x - mean) * (x != 0))))


def user_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of each row's observed (non-zero) ratings; 0 for an empty row."""
    count = (x != 0).sum(dim=1, keepdim=True).clamp_min(1)
    return x.sum(dim=1, keepdim=True) / count
