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
    """The deep autoencoder of Kuchaiev & Ginsburg 2017 ("Training Deep AutoEncoders for
    Collaborative Filtering"): encoder n_inputs -> layers..., decoder mirrored back to n_inputs.

    Input: one user's raw ratings, float [batch, n_inputs], 0 = not rated; output: predicted
    ratings on the data's scale [batch, n_inputs] (the loss is the masked MSE of the paper,
    builder.losses). `dropout` falls on the code, `input_dropout` on the input features, both in
    training only; `constrained` ties the decoder to the transposed encoder weights. Additions
    to the paper, all off by default: `center` (predict deviations from the user's mean),
    `implicit` (the rated-indicator concatenated to the input, width 2 * n_inputs inside),
    `input_norm` (input scaled by 1/sqrt(#rated)) and `skip` (a linear input -> output path).
    Raises ValueError for an activation not in ACTIVATIONS."""

    def __init__(self, n_inputs: int, layers=(512, 512, 1024), activation: str = "selu",
                 dropout: float = 0.8, constrained: bool = False, last_activation: bool = True,
                 input_dropout: float = 0.0, center: bool = False, implicit: bool = False,
                 input_norm: bool = False, skip: bool = False):
        super().__init__()
        self.center = center
        self.implicit = implicit
        self.input_norm = input_norm
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        sizes = [n_inputs * (2 if implicit else 1), *layers]
        self.act = ACTIVATIONS[activation]
        self.constrained = constrained
        self.last_activation = last_activation
        self.enc = nn.ParameterList(nn.Parameter(torch.empty(o, i)) for i, o in zip(sizes, sizes[1:]))
        self.enc_b = nn.ParameterList(nn.Parameter(torch.zeros(o)) for o in sizes[1:])
        rev = [n_inputs, *layers][::-1]
        if not constrained:
            self.dec = nn.ParameterList(nn.Parameter(torch.empty(o, i)) for i, o in zip(rev, rev[1:]))
        self.dec_b = nn.ParameterList(nn.Parameter(torch.zeros(o)) for o in rev[1:])
        for w in list(self.enc) + (list(self.dec) if not constrained else []):
            nn.init.xavier_uniform_(w)
        # The wide path: a linear map straight from the input features to the output, item-item
        # regression beside the deep path. Zero at first so training starts as the plain model.
        self.skip = nn.Linear(sizes[0], n_inputs, bias=False) if skip else None
        if skip:
            nn.init.zeros_(self.skip.weight)
        self.drop = nn.Dropout(dropout)
        self.input_drop = nn.Dropout(input_dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The network's input, computed from the rating vector alone (so serving stays one
        forward pass): deviations from the user's mean when centering, scaled by
        1/sqrt(#rated) with `input_norm` so the code does not shrink for a user who has shown
        us half their history, and with `implicit` the indicator of which items were rated
        (SVD++'s implicit feedback: that a user rated an item says something by itself)."""
        observed = (x != 0).to(x.dtype)
        if self.center:
            x = (x - user_mean(x)) * observed
        if self.input_norm:
            scale = observed.sum(dim=1, keepdim=True).clamp_min(1).rsqrt()
            x, observed = x * scale, observed * scale
        return torch.cat([x, observed], dim=1) if self.implicit else x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x float [batch, n_inputs] raw ratings -> code [batch, layers[-1]] (the activation of
        the last encoder layer; dropout not applied here). Raises RuntimeError (from torch)
        for another width."""
        x = self.input_drop(self.features(x))
        for w, b in zip(self.enc, self.enc_b):
            x = self.act(F.linear(x, w, b))
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [batch, layers[-1]] -> [batch, n_inputs]: ratings, or deviations from the user's
        mean with `center` (forward adds the mean back and the skip path)."""
        weights = ([w.t() for w in reversed(self.enc)] if self.constrained else list(self.dec))
        if self.constrained and self.implicit:
            weights[-1] = weights[-1][: self.dec_b[-1].shape[0]]  # the rating half of the tied first layer
        for k, (w, b) in enumerate(zip(weights, self.dec_b)):
            z = F.linear(z, w, b)
            if k < len(weights) - 1 or self.last_activation:
                z = self.act(z)
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x float [batch, n_inputs] raw ratings (0 = not rated) -> predicted ratings
        [batch, n_inputs] on the data's scale (not clipped). Raises RuntimeError (from torch)
        for another width."""
        out = self.decode(self.drop(self.encode(x)))
        if self.skip is not None:
            out = out + self.skip(self.features(x))
        # User-mean centering: the network sees each rating's deviation from the user's own
        # mean (features) and predicts deviations; the mean is added back. With few users to
        # learn from, this spares the network learning every user's offset.
        return user_mean(x) + out if self.center else out


def user_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of each row's observed (non-zero) ratings; 0 for an empty row."""
    count = (x != 0).sum(dim=1, keepdim=True).clamp_min(1)
    return x.sum(dim=1, keepdim=True) / count
