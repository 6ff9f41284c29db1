"""Predictions from a trained model over CSR rows: shared by training (validation),
evaluation and export, so all three read the model's output the same way."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from builder.config import TrainConfig
from builder.models import ITEM_BASED


def orient(matrix: sp.csr_matrix, config: TrainConfig) -> sp.csr_matrix:
    """Rows are the model's examples: users, or items for item-based models."""
    return matrix.T.tocsr() if config.model in ITEM_BASED else matrix.tocsr()


def dense_rows(matrix: sp.csr_matrix, rows: np.ndarray, device) -> torch.Tensor:
    """A minibatch as a dense tensor, built from just these CSR rows."""
    return torch.from_numpy(matrix[rows].toarray()).to(device)


def sparse_rows(matrix: sp.csr_matrix, rows: np.ndarray, device) -> torch.Tensor:
    """A minibatch as a torch sparse COO tensor [len(rows), n_columns] of these CSR rows: for
    models whose loss never needs the dense row (ELSA over a million items)."""
    m = matrix[rows].tocoo()
    index = torch.from_numpy(np.vstack([m.row, m.col]).astype(np.int64))
    return torch.sparse_coo_tensor(index, torch.from_numpy(m.data.astype(np.float32)), m.shape,
                                   check_invariants=False).coalesce().to(device)


@torch.no_grad()
def predict_rows(model, inputs: sp.csr_matrix, rows: np.ndarray, device, batch: int = 1024) -> np.ndarray:
    """Dense predictions for the given rows of an (oriented) input matrix."""
    model.eval()
    if getattr(model, "full_matrix", False):
        # Full-matrix models (glocal-k) see every row at once; one forward, then the rows asked.
        return model(torch.from_numpy(inputs.toarray()).to(device)).float().cpu().numpy()[rows]
    out = [model(dense_rows(inputs, rows[s:s + batch], device)).float().cpu().numpy()
           for s in range(0, len(rows), batch)]
    return np.concatenate(out) if out else np.zeros((0, inputs.shape[1]), np.float32)


@torch.no_grad()
def predict_entries(model, inputs: sp.csr_matrix, targets: sp.csr_matrix, device) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and truths at the stored entries of `targets` (both oriented alike)."""
    if getattr(model, "full_matrix", False):
        t = targets.tocoo()
        return predict_rows(model, inputs, np.arange(inputs.shape[0]), device)[t.row, t.col], t.data
    targets = targets.tocsr()
    rows = np.flatnonzero(np.diff(targets.indptr) > 0)
    preds, truths = [], []
    for s in range(0, len(rows), 1024):
        r = rows[s:s + 1024]
        dense = predict_rows(model, inputs, r, device)
        t = targets[r].tocoo()
        preds.append(dense[t.row, t.col])
        truths.append(t.data)
    return np.concatenate(preds), np.concatenate(truths)
