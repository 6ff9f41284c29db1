"""Losses and regularizers, written out so the masking is visible.

Ratings are >= 0.5, so a stored 0 means "not rated": the mask is simply `target != 0`.
"""
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
