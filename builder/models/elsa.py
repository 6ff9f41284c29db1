"""ELSA (Vančura, Alves, Kasalický, Kordík 2022, "Scalable Linear Shallow Autoencoder for
Collaborative Filtering", RecSys): EASE's item-item autoencoder with B = A A^T - I, A an
n_items x r matrix whose rows have unit L2 norm, so diag(B) = 0 (no item predicts itself)
without a constraint and memory is n_items * r, never n_items^2.

scores = (x A) A^T - x, x the binary feedback row. Trained by Adam on minibatches of user rows
with the paper's normalised MSE: || y/|y| - x/|x| ||^2 per user, y = x (A A^T - I).

Why ELSA and not SANSA (Spišák et al. 2023, the other EASE for million-item catalogues):
ELSA is plain PyTorch with one dense low-rank factor, exports to ONNX as two MatMuls (served
by the same graph path as every other model, and the first product can read only the
history's rows of A: serving/sparse_input.py), and trains with the same minibatch loop as
Mult-VAE; SANSA needs a sparse LDL^T factorisation library and serves a sparse inverse
factor, which neither ONNX nor Triton's ONNX Runtime backend multiplies natively.

The loss needs no n_items-wide tensor: with h = x A and G = A^T A (r x r),
|y|^2 = h G h^T - 2 |h|^2 + |x|^2 and <y, x> = |h|^2 - |x|^2 (because <h A^T, x> = <h, x A>),
so NMSE = 2 - 2 <y, x> / (|y| |x|) costs nnz(x) * r + n_items * r^2 per batch (elsa_nmse).
"""
import torch
import torch.nn.functional as F
from torch import nn

from builder.models.implicit import binarise

# |y| is clamped here: a user whose history the model reproduces exactly has y = 0.
EPS = 1e-12


def unit_rows(W: torch.Tensor) -> torch.Tensor:
    """W [n_items, r] with each row scaled to unit L2 norm (ELSA's A)."""
    return F.normalize(W, p=2.0, dim=1, eps=EPS)


def elsa_nmse(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """ELSA's normalised MSE per user, || y/|y| - x/|x| ||^2 with y = x (A A^T - I), computed
    without forming y. A [n_items, r] (unit rows); x [batch, n_items] binary, dense or a torch
    sparse COO tensor. Returns [batch], each in [0, 4]; a row with no positive scores 2 (leave
    such users out of the batch)."""
    h = torch.sparse.mm(x, A) if x.is_sparse else x @ A                           # [batch, r]
    x2 = (torch.sparse.sum(x * x, dim=1).to_dense() if x.is_sparse else (x * x).sum(1))  # [batch]
    hh = (h * h).sum(1)
    y2 = ((h @ (A.T @ A)) * h).sum(1) - 2 * hh + x2                                  # |y|^2
    cos = (hh - x2) / (y2.clamp_min(EPS).sqrt() * x2.clamp_min(EPS).sqrt())
    return 2 - 2 * cos


class ELSA(nn.Module):
    """ELSA (Vančura et al. 2022): scores = (binarise(x) A) A^T - binarise(x), A = unit_rows(W),
    W a parameter [n_items, rank] (xavier-uniform initialised): n_items * rank floats. A top-N
    model: scores rank items, they are not ratings; an item's own rating never scores itself.

    `threshold`: a rating counts as feedback when > 0 (threshold 0) or >= threshold. Raises
    ValueError for rank < 1."""

    def __init__(self, n_items: int, rank: int = 64, threshold: float = 0.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"elsa_rank must be >= 1, got {rank}")
        self.threshold = threshold
        self.W = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_items, rank)))
        # Eval mode (and so the exported graph) multiplies by W itself, its rows scaled to unit
        # norm in place by model.eval() and load_state_dict: A = unit_rows(W) is unchanged by that, and
        # the graph holds one constant [n_items, rank] initializer instead of re-normalising it
        # on every request. The zero bias makes the second product Gemm(h, W, transB=1), which
        # reads that same initializer rather than a transposed copy.
        self.register_buffer("zero_bias", torch.zeros(n_items), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _: module.normalise_rows())

    @torch.no_grad()
    def normalise_rows(self) -> None:
        """Scale W's rows to unit L2 norm in place (the scores do not change)."""
        self.W.copy_(unit_rows(self.W))

    def train(self, mode: bool = True) -> "ELSA":
        """nn.Module.train; switching to eval also normalises W's rows (normalise_rows), so
        training resumed after a validation pass starts from unit rows."""
        super().train(mode)
        if not mode:
            self.normalise_rows()
        return self

    def item_factors(self) -> torch.Tensor:
        """A [n_items, rank]: the item embeddings with unit rows."""
        return unit_rows(self.W)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """elsa_nmse per user [batch] of raw rating rows x [batch, n_items] (dense, or sparse
        COO), binarised at the model's threshold; the training loss is its mean."""
        if x.is_sparse:
            x = x.coalesce()
            hit = binarise(x.values(), self.threshold)
            x = torch.sparse_coo_tensor(x.indices(), hit, x.shape, is_coalesced=True, check_invariants=False)
        else:
            x = binarise(x, self.threshold)
        return elsa_nmse(self.item_factors(), x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x float [batch, n_items] raw ratings (0 = not rated) -> scores [batch, n_items],
        higher = recommend first. In eval mode A is W (unit rows since model.eval()); in ONNX a MatMul
        and a Gemm (transB) against that one [n_items, rank] initializer."""
        hit = binarise(x, self.threshold)
        A = self.item_factors() if self.training else self.W  # eval: unit rows already
        return F.linear(hit @ A, A, self.zero_bias) - hit
