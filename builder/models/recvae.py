"""RecVAE (Shenbin, Alekseev, Tutubalina, Malykh, Nikolenko, "RecVAE: a New Variational
Autoencoder for Top-N Recommendations with Implicit Feedback", WSDM 2020).

Mult-VAE's likelihood with a deeper, densely connected encoder (swish, layer norm), a single
linear decoder, a composite prior (builder.losses.composite_prior_log_density) and a KL weight
proportional to each user's number of interactions. The alternating encoder / decoder updates
are builder/topn.py's; at eval and when served, z = mu.
"""
import torch
import torch.nn.functional as F
from torch import nn

from builder.models.mult_dae import normalised_input

# The reference encoder's depth and its layer norms' epsilon (large, as in the authors' code).
ENCODER_LAYERS = 5
LAYER_NORM_EPS = 0.1


class RecVaeEncoder(nn.Module):
    """q(z | x): the L2-normalised binary input, dropped out at rate `input_dropout` when
    asked, through ENCODER_LAYERS dense layers of `width` units; layer k sees the previous
    layer's output plus the sum of all earlier layers' outputs (dense connections), each layer
    LayerNorm(swish(W h + sum of earlier outputs)). Outputs (mu, logvar), each [batch, latent]."""

    def __init__(self, n_items: int, width: int, latent: int, input_dropout: float, threshold: float):
        super().__init__()
        self.threshold = threshold
        self.layers = nn.ModuleList(nn.Linear(n_items if k == 0 else width, width) for k in range(ENCODER_LAYERS))
        self.norms = nn.ModuleList(nn.LayerNorm(width, eps=LAYER_NORM_EPS) for _ in range(ENCODER_LAYERS))
        self.to_mu = nn.Linear(width, latent)
        self.to_logvar = nn.Linear(width, latent)
        self.drop = nn.Dropout(input_dropout)

    def forward(self, x: torch.Tensor, dropout: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """x float [batch, n_items] raw ratings -> (mu, logvar) [batch, latent]. dropout: apply
        the input dropout (in training mode only; the decoder's updates and the prior's old
        encoder read the whole input)."""
        h = normalised_input(x, self.threshold)
        if dropout:
            h = self.drop(h)
        earlier = None  # sum of the outputs of the layers so far
        for layer, norm in zip(self.layers, self.norms):
            pre = layer(h) if earlier is None else layer(h) + earlier
            h = norm(F.silu(pre))  # silu is swish: x * sigmoid(x)
            earlier = h if earlier is None else earlier + h
        return self.to_mu(h), self.to_logvar(h)


class RecVAE(nn.Module):
    """RecVAE (Shenbin et al. 2020): encoder RecVaeEncoder(n_items -> width ... -> latent),
    decoder one linear layer latent -> n_items logits of a multinomial over items. hidden =
    [width, latent] (the paper: [600, 200]). The input is binarised (a rating > 0, or >=
    `threshold`) inside, so the exported graph takes raw ratings. A top-N model: logits rank,
    they are not ratings.

    Raises ValueError unless `hidden` has exactly two sizes."""

    def __init__(self, n_items: int, hidden=(600, 200), input_dropout: float = 0.5, threshold: float = 0.0):
        super().__init__()
        if len(hidden) != 2:
            raise ValueError(f"recvae needs hidden = [width, latent], e.g. [600, 200]; got {list(hidden)}")
        width, latent = hidden
        self.threshold = threshold
        self.latent = latent
        self.encoder = RecVaeEncoder(n_items, width, latent, input_dropout, threshold)
        self.decoder = nn.Linear(latent, n_items)

    def encode(self, x: torch.Tensor, dropout: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """x [batch, n_items] raw ratings -> (mu, logvar) [batch, latent]."""
        return self.encoder(x, dropout)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [batch, latent] -> logits [batch, n_items]."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x float [batch, n_items] raw ratings (0 = not rated) -> logits [batch, n_items]:
        decoded from a sample of the code in training, from its mean (deterministic) in eval.
        Raises RuntimeError (from torch) for another width."""
        mu, logvar = self.encode(x)
        if self.training:
            mu = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(mu)
