"""The contract every exportable model family (builder.models.registry, less the full-matrix
ones) passes on a toy matrix with an unmistakable structure, in seconds: it trains through
builder.train.train, learns the structure, and exports to an ONNX graph that ONNX Runtime
runs to PyTorch's output.

The toy: 40 users x 30 items in two taste groups. Users 0-23 (group A) like items 0-14 (block
A), users 24-39 (group B) like items 15-29 (block B). Measured over data/config seeds 0-3,
the rating families' test RMSE is 0.01-0.32 of the global mean's (asserted: below 0.75), and
the top-N families score the held-out item above the other block's best by 0.38 or more.
"""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from builder.config import TrainConfig
from builder.data.dataset import Dataset
from builder.export import export_onnx_fp32, ort_session
from builder.models import FULL_MATRIX, REGISTRY
from builder.predict import orient, predict_entries, predict_rows
from builder.train import train

N_USERS, N_ITEMS, GROUP_A, BLOCK_A = 40, 30, 24, 15
EXPORTABLE = [name for name in REGISTRY if name not in FULL_MATRIX]
# A tiny budget per family: a few hundred small updates at most.
BUDGET = {"autorec-i": dict(hidden=[16], lr=0.01, batch_size=8, epochs=60),
          "autorec-u": dict(hidden=[16], lr=0.01, batch_size=8, epochs=60),
          "deeprec": dict(hidden=[16], lr=0.01, batch_size=8, epochs=60, last_activation=False),
          "sae": dict(hidden=[16, 8], lr=0.01, batch_size=8, epochs=60),
          "mult-dae": dict(hidden=[16], lr=0.01, batch_size=8, epochs=30, input_dropout=0.2),
          "mult-vae": dict(hidden=[16], lr=0.01, batch_size=8, epochs=30, input_dropout=0.2),
          "recvae": dict(hidden=[16, 8], lr=0.01, batch_size=8, epochs=10, input_dropout=0.2,
                         recvae_encoder_epochs=2)}


def _group(n: int, size_a: int) -> np.ndarray:
    return (np.arange(n) >= size_a).astype(int)


def _dataset(train: sp.csr_matrix, test: sp.csr_matrix) -> Dataset:
    return Dataset(train.tocsr(), test.tocsr(), np.arange(N_USERS), np.arange(N_ITEMS),
                   [f"item {i}" for i in range(N_ITEMS)], (1.0, 5.0), "contract-toy", "contract-toy")


def rating_toy(seed: int = 0) -> Dataset:
    """Every user rates 60% of all items: 5 stars in their group's block, 1 star in the other;
    two observed ratings per user are held out as the test set. Global, user and item means all
    sit near 3, so only a model that has learnt the user-item interaction predicts the test
    ratings better than the global mean does."""
    rng = np.random.default_rng(seed)
    ratings = np.where(_group(N_USERS, GROUP_A)[:, None] == _group(N_ITEMS, BLOCK_A)[None, :], 5.0, 1.0)
    observed = rng.random((N_USERS, N_ITEMS)) < 0.6
    test = np.zeros_like(observed)
    for u in range(N_USERS):
        test[u, rng.choice(np.flatnonzero(observed[u]), 2, replace=False)] = True
    train = np.where(observed & ~test, ratings, 0.0).astype(np.float32)
    return _dataset(sp.csr_matrix(train), sp.csr_matrix(np.where(test, ratings, 0.0).astype(np.float32)))


def top_n_toy() -> Dataset:
    """Each user rates every item of their group's block (4 stars) and nothing else; user 0
    (group A) has item 0 held out. Group A is the larger, so even popularity ranks A's items
    first; a personalised model also has A's co-occurrence to go on."""
    liked = _group(N_USERS, GROUP_A)[:, None] == _group(N_ITEMS, BLOCK_A)[None, :]
    train = np.where(liked, 4.0, 0.0).astype(np.float32)
    train[0, 0] = 0.0
    test = np.zeros_like(train)
    test[0, 0] = 4.0
    return _dataset(sp.csr_matrix(train), sp.csr_matrix(test))


@pytest.fixture(scope="module")
def trained():
    """{family: (config, dataset, trained model)}, each trained once for the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # toy-sized matrices: threads only cost
    out = {}
    try:
        for name in EXPORTABLE:
            dataset = rating_toy() if REGISTRY[name].task == "rating" else top_n_toy()
            config = TrainConfig(model=name, device="cpu", seed=0, patience=1000, **BUDGET.get(name, {}))
            out[name] = (config, dataset, train(config, dataset, progress=False, evaluate=False).model.eval())
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("name", EXPORTABLE)
def test_learns_the_block_structure(name, trained):
    """Rating families: test RMSE clearly below the global mean's (the toy's ratings are 1 or 5,
    so the mean's error is about 2 stars). Top-N families: user 0's held-out item scores above
    every item of the other block."""
    config, dataset, model = trained[name]
    if REGISTRY[name].task == "rating":
        pred, truth = predict_entries(model, orient(dataset.train, config), orient(dataset.test, config), "cpu")
        baseline = np.sqrt(np.mean((truth - dataset.train.data.mean()) ** 2))
        model_rmse = np.sqrt(np.mean((np.clip(pred, *dataset.scale) - truth) ** 2))
        assert model_rmse < 0.75 * baseline, (model_rmse, baseline)
    else:
        scores = predict_rows(model, dataset.train, np.array([0]), "cpu")[0]
        assert scores[0] > scores[BLOCK_A:].max(), scores


@pytest.mark.parametrize("name", EXPORTABLE)
def test_exports_to_onnx_and_runtime_agrees(name, trained, tmp_path):
    """The trained model's ONNX graph (builder.export.export_onnx_fp32, as `aerec export`
    writes it) gives PyTorch's output within 1e-4 on the toy's rows."""
    config, dataset, model = trained[name]
    x = orient(dataset.train, config).toarray().astype(np.float32)
    path = tmp_path / "model.onnx"
    export_onnx_fp32(model, x.shape[1], path)
    session = ort_session(path)
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)
