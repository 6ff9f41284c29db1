"""GLocal-K (Han et al., CIKM 2021): an item-based autoencoder whose weights are sparsified by
a local kernel, pre-trained, then fine-tuned on a rating matrix smoothed by a global kernel.

- Local kernel (from Sparse FC, Muller et al. 2018): every weight W_ij is multiplied by
  max(0, 1 - ||u_i - v_j||^2) for learned low-dimensional u, v, so far-apart units disconnect.
- Global kernel: the item-averaged pre-trained reconstruction, times a learned matrix, gives one
  gk x gk convolution kernel; convolving the whole (items x users) rating matrix with it and
  feeding the result through the same autoencoder is the fine-tuning stage.

The global kernel needs the whole rating matrix at once, so this model predicts all items of
all users in one forward (`full_matrix`); it is for offline accuracy, like I-AutoRec.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _trunc_normal(*shape, std: float) -> torch.Tensor:
    return nn.init.trunc_normal_(torch.empty(*shape), 0.0, std, -2 * std, 2 * std)


class KernelLayer(nn.Module):
    """GLocal-K's local-kernel layer (Han et al. 2021, after Muller et al. 2018's Sparse FC):
    activation(x @ (W * K(u, v)) + b), W [n_in, n_out], K_ij = max(0, 1 - ||u_i - v_j||^2)
    from learned n_dim-dimensional unit embeddings u [n_in, 1, n_dim], v [1, n_out, n_dim]."""

    def __init__(self, n_in: int, n_out: int, n_dim: int, activation):
        super().__init__()
        self.W = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_in, n_out)))
        # u, v start near 0, so every kernel weight starts near 1 (fully connected).
        self.u = nn.Parameter(_trunc_normal(n_in, 1, n_dim, std=1e-3))
        self.v = nn.Parameter(_trunc_normal(1, n_out, n_dim, std=1e-3))
        self.b = nn.Parameter(torch.zeros(n_out))
        self.activation = activation

    def kernel(self) -> torch.Tensor:
        """The local kernel [n_in, n_out], entries in [0, 1]."""
        # The squared distance directly: same value as ||u - v||^2, no NaN gradient at 0.
        return torch.clamp(1.0 - ((self.u - self.v) ** 2).sum(-1), min=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [rows, n_in] -> [rows, n_out]. Raises RuntimeError (from torch) for another width."""
        return self.activation(x @ (self.W * self.kernel()) + self.b)

    def penalty(self, l2: float, kernel_l2: float) -> torch.Tensor:
        """The reference's l2_regularizer terms: l2/2 ||W||^2 + kernel_l2/2 ||K(u, v)||^2."""
        return 0.5 * l2 * (self.W ** 2).sum() + 0.5 * kernel_l2 * (self.kernel() ** 2).sum()


class GlocalK(nn.Module):
    """GLocal-K (Han et al., CIKM 2021): an item-based autoencoder of KernelLayers, n_inputs ->
    hidden... (sigmoid) -> n_inputs (linear), plus a global kernel [n_rows, gk_size^2] learned in
    fine-tuning. A row is one item's raw ratings by all users (n_rows items, n_inputs users),
    0 = not rated; the output is predicted ratings on the data's scale, loss masked to observed
    entries. Whether the weights are pre-trained or fine-tuned travels in the `fine_tuned` buffer.
    The global kernel needs every row at once, so forward takes the whole matrix (`full_matrix`):
    for offline accuracy, not served."""

    full_matrix = True  # forward takes the whole (items x users) matrix

    def __init__(self, n_inputs: int, n_rows: int, hidden=(500, 500), n_dim: int = 5, gk_size: int = 3,
                 dot_scale: float = 1.0):
        super().__init__()
        sizes = [n_inputs, *hidden]
        self.layers = nn.ModuleList([KernelLayer(a, b, n_dim, torch.sigmoid) for a, b in zip(sizes, sizes[1:])])
        self.layers.append(KernelLayer(sizes[-1], n_inputs, n_dim, nn.Identity()))
        self.conv_kernel = nn.Parameter(_trunc_normal(n_rows, gk_size ** 2, std=0.1))
        self.gk_size, self.dot_scale = gk_size, dot_scale
        # Which stage the weights belong to travels with them (a buffer is saved, unlike a flag).
        self.register_buffer("fine_tuned", torch.zeros((), dtype=torch.bool))

    def local(self, x: torch.Tensor) -> torch.Tensor:
        """The local-kernel autoencoder alone (pre-training): x [rows, n_inputs] -> [rows, n_inputs]."""
        for layer in self.layers:
            x = layer(x)
        return x

    def global_kernel(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution kernel [1, 1, gk_size, gk_size] from the whole matrix x [n_rows, n_inputs]."""
        pooled = self.local(x).mean(dim=1)  # per item, the mean reconstruction over users
        return (pooled @ self.conv_kernel * self.dot_scale).view(1, 1, self.gk_size, self.gk_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x float [n_rows, n_inputs], the whole item x user rating matrix (0 = not rated) ->
        predicted ratings [n_rows, n_inputs]: the local autoencoder on x before fine-tuning, on x
        smoothed by the global kernel after. Raises RuntimeError (from torch) when x has another
        shape (fine-tuned: the rows must be all n_rows items)."""
        if not bool(self.fine_tuned):
            return self.local(x)
        smoothed = F.relu(F.conv2d(x[None, None], self.global_kernel(x), padding=self.gk_size // 2))[0, 0]
        return self.local(smoothed)

    def penalty(self, l2: float, kernel_l2: float) -> torch.Tensor:
        """The L2 terms of every layer (KernelLayer.penalty), a scalar to add to the loss."""
        return sum(layer.penalty(l2, kernel_l2) for layer in self.layers)
