"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data"): a linear
item-item autoencoder with a closed form and a zero diagonal, so no item predicts itself.

B = I - P diag(1/diag(P)), P = (X^T X + lambda I)^-1, X binary implicit feedback.
Serving is one MatMul: scores = binarise(x) @ B.

Variants, each a config choice whose default is the plain EASE above:
- input "values": X holds the rating values of the ratings that count (>= the threshold)
  instead of 1s; served as scores = (x * binarise(x)) @ B, the same weights.
- EDLAE (Steck 2020, "Autoencoders that don't overfit towards the identity", NeurIPS): dropout
  p of the input, in expectation, is an L2 weight per item, Lambda = lambda I + p/(1-p)
  diagMat(diag(X^T X)); with the zero diagonal (full emphasis on the dropped entries)
  B = I - P diagMat(1/diag(P)), P = (X^T X + Lambda)^-1.
- popularity correction gamma: column j of B divided by popularity_j^gamma (popularity_j: the
  users with a positive on item j, at least 1), so popular items score less; gamma 0 is none.
  Folded into B: serving is unchanged.
"""
import math

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from builder.models.implicit import binarise

GB = 1e9


# What fitting EASE holds at its peak, per item^2: the float64 Gram matrix G (8), inverted in its
# own memory (inverse_in_place) with torch's one temporary copy (8) while it inverts; after it,
# G beside the float32 B it is cast to (4) and the model's float32 buffer B (4); about 20 MB
# whatever the size. Measured peak RSS growth of a fit (tests/builder/test_ease_memory.py's PEAK
# script): 83, 165 and 605 MB at 2,000, 3,000 and 6,000 items, 16.3 bytes per item^2 + 18 MB;
# a whole `aerec train --preset ease` on 17,770 items peaked at 5.39 GB of RSS. With
# np.linalg.inv (LAPACK's copies of G and of the identity, and a separate inverse) it was 34.3
# bytes per item^2 + 17 MB (docs/reliability.md).
FIT_BYTES_PER_ITEM2 = 17
FIT_OVERHEAD_BYTES = 40 * 10**6


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
                         f"({FIT_BYTES_PER_ITEM2} bytes per item^2 + {FIT_OVERHEAD_BYTES // 10**6} MB: "
                         "the float64 Gram matrix inverted in place "
                         f"and the {ease_bytes(n_items) / GB:.2f} GB float32 matrix "
                         f"served), above ease_max_gb={max_gb:g} GB, which fits at most "
                         f"{ease_max_items(max_gb):,} items; train ease-lowrank instead (--preset ease-lowrank: "
                         "EASE's closed form on a rank-r SVD of the ratings, memory linear in the number of "
                         f"items; or --preset elsa) or raise "
                         f"ease_max_gb to {math.ceil(need / GB * 10) / 10:g}")


INPUTS = ("binary", "values")


def fit_ease(X: sp.csr_matrix, lam: float, dropout: float = 0.0) -> np.ndarray:
    """B float32 [n_items, n_items] from X [n_users, n_items] (csr; binary, or rating values as
    weights), L2 weight lam > 0 and EDLAE dropout 0 <= p < 1 (0: plain EASE).

    The Gram matrix is inverted in float64: with lambda in the hundreds and counts in the
    hundreds its condition number is modest, but float32 loses the small off-diagonal weights.
    """
    return ease_from_gram(gram(X), lam, dropout)


def gram(X: sp.csr_matrix) -> np.ndarray:
    """X^T X as a dense float64 [n_items, n_items] array from X [n_users, n_items] (csr). A sum
    over users: shards of users' rows add up to the whole (data-parallel EASE all-reduces it)."""
    X = sp.csr_matrix(X, dtype=np.float64)
    return (X.T @ X).toarray()


def edlae_penalty(G: np.ndarray, lam: float, dropout: float) -> np.ndarray:
    """The diagonal of EDLAE's L2 weight (Steck 2020), float64 [n_items]: lam + p/(1-p) diag(G),
    G = X^T X [n_items, n_items], p = dropout; p = 0 gives EASE's lam on every item. Raises
    ValueError for lam <= 0 or p outside [0, 1)."""
    if lam <= 0:
        raise ValueError(f"EASE lambda must be > 0, got {lam}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"EDLAE dropout must be in [0, 1), got {dropout}")
    return lam + dropout / (1.0 - dropout) * np.diag(G)


def ease_from_gram(G: np.ndarray, lam: float, dropout: float = 0.0, xi: float = 0.0) -> np.ndarray:
    """B float32 [n_items, n_items] from the Gram matrix G = X^T X (float64, modified in place),
    L2 weight lam > 0, EDLAE dropout 0 <= p < 1 and RDLAE bound 0 <= xi < 1 (ValueError otherwise).

    xi = 0: B = I - P diagMat(1/diag(P)), P = (G + Lambda)^-1, Lambda = diagMat(edlae_penalty(G,
    lam, p)) (Steck 2020, EDLAE with full emphasis: diag(B) = 0; p = 0 is EASE). xi > 0: RDLAE
    (Moon, Kim and Lee, SIGIR 2023, "It's Enough: Relaxing Diagonal Constraints in Linear
    Autoencoders"): diag(B) <= xi instead of = 0, B = I - P diagMat(mu), mu_j = Lambda_jj where
    the unconstrained solution's diagonal 1 - P_jj Lambda_jj is within the bound, else
    (1 - xi) / P_jj (the bound active). A non-zero diagonal scores an item by its own rating,
    which ranking masks anyway (rated items are never recommended)."""
    if not 0.0 <= xi < 1.0:
        raise ValueError(f"RDLAE xi must be in [0, 1), got {xi}")
    penalty = edlae_penalty(G, lam, dropout)
    G[np.diag_indices_from(G)] = np.diag(G) + penalty
    P = inverse_in_place(G)
    d = np.diag(P).copy()
    if xi == 0.0:
        P /= -d  # column j divided by -P_jj
        P[np.diag_indices_from(P)] = 0.0
        return P.astype(np.float32)
    mu = np.where(1.0 - d * penalty > xi, (1.0 - xi) / d, penalty)
    P *= -mu  # column j times -mu_j
    P[np.diag_indices_from(P)] += 1.0
    return P.astype(np.float32)


def cholesky_in_place(G: np.ndarray) -> torch.Tensor:
    """The lower Cholesky factor L of the symmetric positive definite float64 G [n, n]
    (C-ordered), G = L L^T, written into G's own memory and returned as a torch view of it, by
    torch's LAPACK (MKL on x86). Raises np.linalg.LinAlgError when G is not positive definite.

    Not scipy's LAPACK: its bundled OpenBLAS (0.3.30) crashes the process with a segmentation
    fault in the multi-threaded dpotrf from about 16,000 items on (docs/reliability.md), a
    Netflix-sized catalogue."""
    T = torch.from_numpy(G)
    info = torch.empty((), dtype=torch.int32)
    torch.linalg.cholesky_ex(T, out=(T, info))
    if int(info) != 0:
        raise np.linalg.LinAlgError(f"the regularised Gram matrix is not positive definite (Cholesky info {int(info)})")
    return T


def inverse_in_place(G: np.ndarray) -> np.ndarray:
    """The inverse of the symmetric positive definite float64 G [n, n] (C-ordered), returned in
    G's own memory (G itself): cholesky_in_place, then torch's inversion from the factor
    (cholesky_inverse). torch takes a temporary copy while it works; the fit's measured peak
    is FIT_BYTES_PER_ITEM2's. Raises np.linalg.LinAlgError when G is not positive definite."""
    T = cholesky_in_place(G)
    torch.cholesky_inverse(T, out=T)
    return G


def popularity_scale(counts: np.ndarray, gamma: float) -> np.ndarray:
    """float64 [n_items]: 1 / max(count_j, 1)^gamma, what column j of B is multiplied by
    (popularity correction; gamma 0: all ones). counts: users with a positive on each item."""
    return np.maximum(np.asarray(counts, dtype=np.float64), 1.0) ** -gamma


def input_weights(data: np.ndarray, threshold: float, ease_input: str) -> np.ndarray:
    """EASE's input for stored ratings `data` (any shape, float): 1 where a rating counts (> 0
    for threshold 0, else >= threshold) for "binary", the rating itself there for "values";
    0 elsewhere. Raises ValueError for another ease_input."""
    if ease_input not in INPUTS:
        raise ValueError(f"ease_input must be one of {INPUTS}, got {ease_input!r}")
    hit = (data > 0 if threshold <= 0 else data >= threshold).astype(np.float64)
    return hit * data if ease_input == "values" else hit


class EASE(nn.Module):
    """EASE (Steck 2019): scores = binarise(x) @ B, B the closed-form item-item weights with a
    zero diagonal, held as a float32 buffer [n_items, n_items] (4 * n_items^2 bytes) and set by
    fit. A top-N model: scores rank items, they are not ratings.

    Raises ValueError when the fit would peak above `max_gb` gigabytes (check_ease_memory), or
    for an unknown `ease_input`. `threshold`: a rating counts as feedback when > 0 (threshold 0)
    or >= threshold. `ease_input`: "binary" (a counted rating is a 1) or "values" (it weighs its
    value: scores = (x * binarise(x)) @ B), in the fit and in forward alike."""

    def __init__(self, n_items: int, threshold: float = 0.0, max_gb: float = 12.0, ease_input: str = "binary"):
        super().__init__()
        check_ease_memory(n_items, max_gb)
        if ease_input not in INPUTS:
            raise ValueError(f"ease_input must be one of {INPUTS}, got {ease_input!r}")
        self.threshold = threshold
        self.ease_input = ease_input
        self.register_buffer("B", torch.zeros(n_items, n_items))

    def fit(self, matrix: sp.csr_matrix, lam: float, reduce=None, dropout: float = 0.0,
            popularity_gamma: float = 0.0, xi: float = 0.0) -> "EASE":
        """Set B from `matrix` (users x items CSR, raw ratings, weighted by input_weights with
        the model's threshold and input) with L2 weight `lam`, EDLAE dropout p, RDLAE bound xi
        and popularity correction gamma (ease_from_gram, popularity_scale); returns self. Raises
        ValueError for lam <= 0, or p or xi outside [0, 1).

        `reduce`: when `matrix` is one shard of the users, a function summing the shards' Gram
        matrices (float64 [n_items, n_items] -> the same) and item counts, e.g.
        builder.distributed.all_sum; every process then solves the same B."""
        X = sp.csr_matrix(matrix, dtype=np.float64, copy=True)  # a copy: eliminate_zeros works in place
        X.data = input_weights(X.data, self.threshold, self.ease_input)
        X.eliminate_zeros()
        G = gram(X)
        counts = np.diff(X.tocsc().indptr).astype(np.float64) if popularity_gamma else None
        if reduce is not None:
            G = np.array(reduce(G), dtype=np.float64)
            counts = None if counts is None else np.array(reduce(counts), dtype=np.float64)
        B = ease_from_gram(G, lam, dropout, xi)
        if popularity_gamma:
            B *= popularity_scale(counts, popularity_gamma).astype(np.float32)  # column j: 1/pop_j^gamma
        self.B.copy_(torch.from_numpy(B))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x float [batch, n_items] raw ratings (0 = not rated) -> unbounded scores
        [batch, n_items], higher = recommend first; an item's own rating never scores itself.
        Raises RuntimeError (from torch) for another width."""
        hit = binarise(x, self.threshold)
        return (x * hit if self.ease_input == "values" else hit) @ self.B
