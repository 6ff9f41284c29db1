"""Mult-VAE (Liang et al. 2018, "Variational Autoencoders for Collaborative Filtering").

Encoder n -> 600 (tanh) -> (mu, logvar) of a 200-d Gaussian; decoder 200 -> 600 (tanh) -> n
logits. Trained on multinomial NLL + beta * KL, beta annealed to a cap (the loop in
builder/topn.py writes the sampling and the loss out); at eval and when served, z = mu.
"""
import torch
from torch import nn

from builder.models.mult_dae import normalised_input


class MultVAE(nn.Module):
    """Mult-VAE (Liang et al. 2018): encoder n_items -> hidden[:-1] (tanh) -> (mu, logvar) of a
    Gaussian of dimension hidden[-1]; decoder mirrored back to n_items logits of a multinomial
    over items. Input binarised and L2-normalised per row as in MultDAE, dropped out at rate
    `input_dropout` in training. A top-N model: logits rank, they are not ratings.

    Raises ValueError when `hidden` is empty (it must end with the latent dimension)."""

    def __init__(self, n_items: int, hidden=(600, 200), input_dropout: float = 0.5, threshold: float = 0.0):
        super().__init__()
        if len(hidden) < 1:
            raise ValueError("mult-vae needs hidden sizes, the last being the latent dimension, e.g. [600, 200]")
        self.threshold = threshold
        *inner, latent = hidden
        enc = [n_items, *inner]
        self.encoder = nn.ModuleList(nn.Linear(i, o) for i, o in zip(enc, enc[1:]))
        self.to_stats = nn.Linear(enc[-1], 2 * latent)  # [mu | logvar]
        dec = [latent, *reversed(inner), n_items]
        self.decoder = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dec, dec[1:]))
        for layer in [*self.encoder, self.to_stats, *self.decoder]:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=0.001)
        self.latent = latent
        self.drop = nn.Dropout(input_dropout)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x float [batch, n_items] raw ratings -> (mu, logvar), each [batch, latent]: the
        Gaussian's mean and log variance. Raises RuntimeError (from torch) for another width."""
        h = self.drop(normalised_input(x, self.threshold))
        for layer in self.encoder:
            h = torch.tanh(layer(h))
        stats = self.to_stats(h)
        return stats[:, :self.latent], stats[:, self.latent:]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [batch, latent] -> logits [batch, n_items]."""
        for k, layer in enumerate(self.decoder):
            z = layer(z)
            if k < len(self.decoder) - 1:
                z = torch.tanh(z)
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x float [batch, n_items] raw ratings (0 = not rated) -> logits [batch, n_items]:
        decoded from a sample of the code in training, from its mean (deterministic) in eval."""
        mu, logvar = self.encode(x)
        if self.training:  # reparameterisation: the sample stays differentiable in mu, logvar
            mu = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(mu)
