"""Losses and regularizers, written out so the masking is visible.

Ratings are >= 0.5, so a stored 0 means "not rated": the mask is simply `target != 0`.
"""
import math

import torch


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """DeepRec's MMSE: squared error summed over observed entries, divided by their count.

    Unobserved entries contribute nothing to the loss and hence nothing to the gradient.
    """
    if mask is None:
        mask = target != 0
    mask = mask.to(pred.dtype)
    return ((pred - target) ** 2 * mask).sum() / mask.sum().clamp_min(1.0)


def l2_penalty(model: torch.nn.Module) -> torch.Tensor:
    """AutoRec's (1/2) * sum ||W||_F^2 over weight matrices (biases are not penalised)."""
    return 0.5 * sum((p ** 2).sum() for n, p in model.named_parameters() if p.dim() > 1)


def corrupt(x: torch.Tensor, rate: float, generator: torch.Generator | None = None,
            per_row: bool = False) -> torch.Tensor:
    """Denoising: drop each observed input rating with probability `rate` (masking noise).

    The target stays the uncorrupted vector, so the model learns to restore what was hidden.
    """
    if rate <= 0:
        return x
    if per_row:
        # Each row gets its own rate in [0, rate): some users keep most of their history,
        # others lose much of it, as users folded in at serving time (or u1's test users) do.
        rate = torch.rand((x.shape[0], 1), generator=generator, device=x.device) * rate
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= rate
    return x * keep


def sparsity_penalty(code: torch.Tensor) -> torch.Tensor:
    """Sparse autoencoder: mean absolute activation of the code (pushes most units to 0)."""
    return code.abs().mean()


def contractive_penalty(encode, x: torch.Tensor, probes: int = 1) -> torch.Tensor:
    """Contractive autoencoder: ||d code / d x||_F^2 per example, averaged over the batch.

    The exact Jacobian has n_items x code entries per user; we use Hutchinson's unbiased
    estimate E_v ||J^T v||^2 = ||J||_F^2 with v ~ N(0, I), one vector-Jacobian product each.
    """
    x = x.detach().requires_grad_(True)
    code = encode(x)
    total = x.new_zeros(())
    for _ in range(probes):
        v = torch.randn_like(code)
        (g,) = torch.autograd.grad((code * v).sum(), x, create_graph=True)
        total = total + (g ** 2).sum(dim=1).mean()
    return total / probes


def multinomial_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mult-VAE/DAE's loss (Liang et al. 2018): -sum_i x_i log softmax(logits)_i per user,
    averaged over the batch. logits, x: [batch, n_items]; x binary (or counts)."""
    return -(torch.log_softmax(logits, dim=1) * x).sum(dim=1).mean()


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the latent, averaged over the batch.
    mu, logvar: [batch, latent]."""
    return (0.5 * (-logvar + logvar.exp() + mu ** 2 - 1)).sum(dim=1).mean()


# RecVAE's composite prior (Shenbin et al. 2020): per latent dimension, a mixture of the
# standard normal, the posterior of the encoder as it was before the current encoder updates,
# and a wide normal (log variance 10) that keeps the mixture from collapsing onto the old posterior.
COMPOSITE_WEIGHTS = (3 / 20, 3 / 4, 1 / 10)
WIDE_LOGVAR = 10.0


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) per entry (diagonal Gaussian, nothing summed); broadcasting
    shapes."""
    return -0.5 * (logvar + math.log(2 * math.pi) + (z - mu) ** 2 / logvar.exp())


def composite_prior_log_density(z: torch.Tensor, mu_old: torch.Tensor, logvar_old: torch.Tensor,
                                weights=COMPOSITE_WEIGHTS, wide_logvar: float = WIDE_LOGVAR) -> torch.Tensor:
    """RecVAE's prior log p(z | phi_old, x) per latent entry: log of w0 N(z; 0, 1) + w1 N(z;
    mu_old, exp(logvar_old)) + w2 N(z; 0, exp(wide_logvar)), the mixture taken per dimension as
    the authors' code does. z, mu_old, logvar_old: [batch, latent] -> [batch, latent]."""
    zero = torch.zeros_like(z)
    parts = (gaussian_log_density(z, zero, zero),
             gaussian_log_density(z, mu_old, logvar_old),
             gaussian_log_density(z, zero, torch.full_like(z, wide_logvar)))
    return torch.logsumexp(torch.stack([p + math.log(w) for p, w in zip(parts, weights)], dim=-1), dim=-1)


def recvae_kl(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, prior_log_density: torch.Tensor,
              weight: torch.Tensor) -> torch.Tensor:
    """RecVAE's one-sample KL(q(z|x) || p(z)) estimate, log q(z|x) - log p(z) summed over the
    latent, times each user's weight (beta = gamma * |x_u|), averaged over the batch. z, mu,
    logvar, prior_log_density: [batch, latent]; weight: [batch]."""
    return ((gaussian_log_density(z, mu, logvar) - prior_log_density).sum(dim=1) * weight).mean()
