"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data"): a linear
item-item autoencoder with a closed form and a zero diagonal, so no item predicts itself.

B = I - P diag(1/diag(P)), P = (X^T X + lambda I)^-1, X binary implicit feedback.
Serving is one MatMul: scores = binarise(x) @ B.
"""
import math

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from builder.models.implicit import binarise

GB = 1e9


# What fitting EASE holds at its peak, per item^2: inside np.linalg.inv, the float64 Gram matrix
# G (8), LAPACK's float64 copies of G and of the identity it solves against (16) and the float64
# inverse P (8), beside the float32 buffer B (4); plus about 17 MB whatever the size (LAPACK's
# workspace, the sparse matrices). Measured peak RSS growth of a fit: 34.3 bytes per item^2 + 17 MB
# between 2,000 and 6,000 items (docs/reliability.md); 4 bytes (B alone) was the old budget.
FIT_BYTES_PER_ITEM2 = 36
FIT_OVERHEAD_BYTES = 32 * 10**6


def ease_bytes(n_items: int) -> int:
    """Bytes of the float32 item-item matrix B (what is served)."""
    return 4 * n_items * n_items


def ease_fit_bytes(n_items: int) -> int:
    """Peak bytes that fitting EASE on `n_items` items takes, at most:
    FIT_BYTES_PER_ITEM2 * n_items^2 + FIT_OVERHEAD_BYTES."""
    return FIT_BYTES_PER_ITEM2 * n_items * n_items + FIT_OVERHEAD_BYTES


def ease_max_items(max_gb: float) -> int:
    """The largest catalogue whose fit stays within `max_gb` gigabytes."""
    return math.isqrt(max(0, int(max_gb * GB) - FIT_OVERHEAD_BYTES) // FIT_BYTES_PER_ITEM2)


def check_ease_memory(n_items: int, max_gb: float) -> None:
    """Raise ValueError if fitting EASE on `n_items` items would take more than `max_gb`
    gigabytes at its peak (ease_fit_bytes), naming the figure and the largest catalogue that fits."""
    need = ease_fit_bytes(n_items)
    if need > max_gb * GB:
        raise ValueError(f"EASE's {n_items:,} x {n_items:,} item-item fit peaks at {need / GB:.2f} GB "
                         f"({FIT_BYTES_PER_ITEM2} bytes per item^2 + {FIT_OVERHEAD_BYTES // 10**6} MB: the float64 Gram matrix and its inverse, "
                         f"LAPACK's working copies and the {ease_bytes(n_items) / GB:.2f} GB float32 matrix "
                         f"served), above ease_max_gb={max_gb:g} GB, which fits at most "
                         f"{ease_max_items(max_gb):,} items; train mult-vae instead (memory linear in the "
                         f"number of items) or raise ease_max_gb to {math.ceil(need / GB * 10) / 10:g}")


def fit_ease(X: sp.csr_matrix, lam: float) -> np.ndarray:
    """B float32 [n_items, n_items] from binary X [n_users, n_items] (csr) and L2 weight lam > 0.

    The Gram matrix is inverted in float64: with lambda in the hundreds and counts in the
    hundreds its condition number is modest, but float32 loses the small off-diagonal weights.
    """
    return ease_from_gram(gram(X), lam)


def gram(X: sp.csr_matrix) -> np.ndarray:
    """X^T X as a dense float64 [n_items, n_items] array from X [n_users, n_items] (csr). A sum
    over users: shards of users' rows add up to the whole (data-parallel EASE all-reduces it)."""
    X = sp.csr_matrix(X, dtype=np.float64)
    return (X.T @ X).toarray()


def ease_from_gram(G: np.ndarray, lam: float) -> np.ndarray:
    """B float32 [n_items, n_items] from the Gram matrix G = X^T X (float64, modified in place)
    and L2 weight lam > 0 (ValueError otherwise)."""
    if lam <= 0:
        raise ValueError(f"EASE lambda must be > 0, got {lam}")
    G[np.diag_indices_from(G)] += lam
    P = np.linalg.inv(G)
    B = P / -np.diag(P)  # column j divided by -P_jj
    B[np.diag_indices_from(B)] = 0.0
    return B.astype(np.float32)


class EASE(nn.Module):
    """EASE (Steck 2019): scores = binarise(x) @ B, B the closed-form item-item weights with a
    zero diagonal, held as a float32 buffer [n_items, n_items] (4 * n_items^2 bytes) and set by
    fit. A top-N model: scores rank items, they are not ratings.

    Raises ValueError when the fit would peak above `max_gb` gigabytes (check_ease_memory). `threshold`:
    a rating counts as feedback when > 0 (threshold 0) or >= threshold."""

    def __init__(self, n_items: int, threshold: float = 0.0, max_gb: float = 12.0):
        super().__init__()
        check_ease_memory(n_items, max_gb)
        self.threshold = threshold
        self.register_buffer("B", torch.zeros(n_items, n_items))

    def fit(self, matrix: sp.csr_matrix, lam: float, reduce=None) -> "EASE":
        """Set B from `matrix` (users x items CSR, raw ratings, binarised with the model's
        threshold) with L2 weight `lam`; returns self. Raises ValueError for lam <= 0.

        `reduce`: when `matrix` is one shard of the users, a function summing the shards' Gram
        matrices (float64 [n_items, n_items] -> the same), e.g. builder.distributed.all_sum;
        every process then solves the same B."""
        X = sp.csr_matrix(matrix, dtype=np.float64, copy=True)  # a copy: eliminate_zeros works in place
        X.data = (X.data > 0 if self.threshold <= 0 else X.data >= self.threshold).astype(np.float64)
        X.eliminate_zeros()
        G = gram(X)
        if reduce is not None:
            G = np.array(reduce(G), dtype=np.float64)
        self.B.copy_(torch.from_numpy(ease_from_gram(G, lam)))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x float [batch, n_items] raw ratings (0 = not rated) -> unbounded scores
        [batch, n_items], higher = recommend first; an item's own rating never scores itself.
        Raises RuntimeError (from torch) for another width."""
        return binarise(x, self.threshold) @ self.B
