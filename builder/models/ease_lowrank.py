"""Low-rank EASE: EASE's closed form (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse
Data") with the Gram matrix replaced by a rank-r approximation from a randomized SVD, so fitting
and serving take memory n_items x r, never n_items^2.

X [users, items] (binary feedback, or rating values: EASE's `ease_input`) ~ U S V^T at rank r by
the randomized range finder with power iterations (Halko, Martinsson and Tropp 2011, "Finding
Structure with Randomness", SIAM Review: Algorithm 4.4 then 5.1), so the Gram matrix
G = X^T X ~ V S^2 V^T. With V's columns orthonormal, Woodbury gives EASE's inverse in closed form:

    P = (G + lambda I)^-1 = (I - V diag(d) V^T) / lambda,   d_k = s_k^2 / (s_k^2 + lambda),
    diag(P)_j = c_j / lambda,                               c_j = 1 - sum_k V_jk^2 d_k  (0 < c_j <= 1),

and EASE's B = I - P diagMat(1 / diag(P)) (whose diagonal is 0: no item predicts itself) scores
a user's row x as

    x B = x - (x P) / diag(P) = ((x V) diag(d) V^T) / c + x (1 - 1/c).

That is exactly x B with b_jj = 0 (item j's own term x_j cancels), at cost nnz(x) r + n_items r
per user. With rank r >= rank(X) the approximation is exact and the scores are dense EASE's
(tests/builder/test_ease_lowrank.py). The low-rank closed forms of linear autoencoders are
studied by Jin, Li, Gao, Liu, Chen and Zhou (KDD 2021, "Towards a Better Understanding of
Linear Models for Recommendation"); here the low rank only approximates the Gram matrix and
EASE's zero-diagonal constraint is kept exact.

Validation has two knobs (rank and lambda) and no training loop: no learning rate, no epochs.
"""
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from builder.models.ease import INPUTS, input_weights
from builder.models.implicit import binarise

OVERSAMPLE = 10  # extra random directions of the range finder (Halko et al. 2011, section 4.2)


def randomized_svd(X: sp.spmatrix, rank: int, power_iters: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(s [k], V [n_items, k]) of X [n_users, n_items] (scipy sparse or dense, float64) ~ U S V^T,
    k = min(rank, n_users, n_items), s descending, V's columns orthonormal: Halko et al. 2011's
    range finder with `power_iters` power iterations (each re-orthonormalised by QR, Algorithm
    4.4) on rank + OVERSAMPLE random directions, then the SVD of the small projected matrix
    (Algorithm 5.1). Memory O((n_users + n_items) (rank + OVERSAMPLE)) floats; exact when
    rank + OVERSAMPLE >= rank(X). Raises ValueError for rank < 1 or power_iters < 0."""
    if rank < 1:
        raise ValueError(f"svd_rank must be >= 1, got {rank}")
    if power_iters < 0:
        raise ValueError(f"svd_power_iters must be >= 0, got {power_iters}")
    n_users, n_items = X.shape
    width = min(rank + OVERSAMPLE, n_users, n_items)
    omega = np.random.default_rng(seed).standard_normal((n_items, width))
    Q, _ = np.linalg.qr(X @ omega)                     # [n_users, width]: X's range
    for _ in range(power_iters):
        Z, _ = np.linalg.qr(X.T @ Q)                   # [n_items, width]
        Q, _ = np.linalg.qr(X @ Z)
    small = np.asarray((X.T @ Q).T)                    # Q^T X [width, n_items]
    _, s, vt = np.linalg.svd(small, full_matrices=False)
    k = min(rank, n_users, n_items)
    return s[:k], vt[:k].T


def lowrank_ease_factors(s: np.ndarray, V: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """(d [k], c [n_items]) of the Woodbury form above from X's singular values s [k] and right
    singular vectors V [n_items, k]: d = s^2 / (s^2 + lambda), c = lambda diag(P) =
    1 - sum_k V_jk^2 d_k. Raises ValueError for lambda <= 0."""
    if lam <= 0:
        raise ValueError(f"EASE lambda must be > 0, got {lam}")
    d = s ** 2 / (s ** 2 + lam)
    c = 1.0 - (V * V) @ d
    return d, c


class EASELowRank(nn.Module):
    """Low-rank EASE (module docstring): scores = ((x V) * d) V^T * (1/c) + x * (1 - 1/c), x the
    binarised row (or its rating values with ease_input "values"). Buffers: V [n_items, rank]
    float32 (n_items * rank floats, what dominates memory and the ONNX file), d [rank], inv_c and
    self_weight [n_items]; set by fit. A top-N model: scores rank items, they are not ratings.

    The served graph's first product is MatMul(binarised x, V), which serving/sparse_input.py
    computes from the history's rows of V alone for a lone user. Raises ValueError for
    rank < 1 or an unknown ease_input."""

    def __init__(self, n_items: int, rank: int = 64, threshold: float = 0.0, ease_input: str = "binary"):
        super().__init__()
        if rank < 1:
            raise ValueError(f"svd_rank must be >= 1, got {rank}")
        if ease_input not in INPUTS:
            raise ValueError(f"ease_input must be one of {INPUTS}, got {ease_input!r}")
        rank = min(rank, n_items)
        self.threshold = threshold
        self.ease_input = ease_input
        self.register_buffer("V", torch.zeros(n_items, rank))
        self.register_buffer("d", torch.zeros(rank))
        self.register_buffer("inv_c", torch.ones(n_items))
        self.register_buffer("self_weight", torch.zeros(n_items))
        # The zero bias makes the second product Gemm(h, V, transB=1): it reads V itself, not a
        # transposed copy.
        self.register_buffer("zero_bias", torch.zeros(n_items), persistent=False)

    def fit(self, matrix: sp.csr_matrix, lam: float, power_iters: int = 2, seed: int = 0) -> "EASELowRank":
        """Set the buffers from `matrix` (users x items CSR, raw ratings, weighted by EASE's
        input_weights at the model's threshold and input) with L2 weight `lam` and a randomized
        SVD of `power_iters` power iterations (randomized_svd, seeded); returns self. Raises
        ValueError for lam <= 0 or power_iters < 0. Memory: a few float64 [n_items + n_users,
        rank + 10] arrays beside the matrix."""
        X = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
        X.data = input_weights(X.data, self.threshold, self.ease_input)
        X.eliminate_zeros()
        s, V = randomized_svd(X, self.V.shape[1], power_iters, seed)
        d, c = lowrank_ease_factors(s, V, lam)
        k = len(s)  # below the buffers' rank when X has fewer users: the rest stay 0 (d = 0)
        self.V.zero_()
        self.d.zero_()
        self.V[:, :k] = torch.from_numpy(V.astype(np.float32))
        self.d[:k] = torch.from_numpy(d.astype(np.float32))
        self.inv_c.copy_(torch.from_numpy((1.0 / c).astype(np.float32)))
        self.self_weight.copy_(torch.from_numpy((1.0 - 1.0 / c).astype(np.float32)))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x float [batch, n_items] raw ratings (0 = not rated) -> scores [batch, n_items], higher =
        recommend first; an item's own rating never scores itself. In ONNX: a MatMul against V,
        a Mul by d, a Gemm (transB) against the same V, a Mul by 1/c and an Add."""
        hit = binarise(x, self.threshold)
        inp = x * hit if self.ease_input == "values" else hit
        h = (inp @ self.V) * self.d
        return F.linear(h, self.V, self.zero_bias) * self.inv_c + inp * self.self_weight
