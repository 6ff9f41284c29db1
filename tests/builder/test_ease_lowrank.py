"""Low-rank EASE (builder/models/ease_lowrank.py): the Woodbury form against dense EASE at full
rank, the randomized SVD against numpy's, training through the top-N path on a block matrix,
ONNX export (dense and with the sparse first product) against PyTorch, and memory n_items x r."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import scipy.sparse as sp
import torch

import builder.topn as topn
from builder.config import TrainConfig
from builder.export import export_onnx_fp32
from builder.models import TOP_N, build_model
from builder.models.ease import EASE, fit_ease, input_weights
from builder.models.ease_lowrank import EASELowRank, lowrank_ease_factors, randomized_svd
from builder.presets import preset
from serving.sparse_input import with_sparse_first_product
from tests.builder.test_elsa import block_matrix


def random_ratings(n_users=60, n_items=40, density=0.15, seed=0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = np.where(rng.random((n_users, n_items)) < density, rng.integers(1, 6, (n_users, n_items)), 0)
    return sp.csr_matrix(dense.astype(np.float32))


def test_is_a_top_n_model_built_from_the_config():
    model = topn.make_top_n_model(TrainConfig(model="ease-lowrank", svd_rank=8, implicit_threshold=4.0), 30)
    assert "ease-lowrank" in TOP_N and isinstance(model, EASELowRank)
    assert model.V.shape == (30, 8) and model.threshold == 4.0
    with pytest.raises(ValueError, match="svd_rank must be >= 1"):
        build_model("ease-lowrank", 30, svd_rank=0)
    with pytest.raises(ValueError, match="ease_input must be one of"):
        build_model("ease-lowrank", 30, ease_input="counts")
    with pytest.raises(ValueError, match="EASE lambda must be > 0"):
        lowrank_ease_factors(np.ones(2), np.zeros((3, 2)), 0.0)
    with pytest.raises(ValueError, match="svd_power_iters must be >= 0"):
        randomized_svd(sp.eye(4, format="csr"), 2, -1)


def test_randomized_svd_at_full_rank_equals_numpy():
    X = random_ratings().astype(np.float64)
    s, V = randomized_svd(X, 40, power_iters=1)
    _, s_ref, vt = np.linalg.svd(X.toarray(), full_matrices=False)
    np.testing.assert_allclose(s, s_ref, rtol=1e-9)
    np.testing.assert_allclose(V.T @ V, np.eye(40), atol=1e-9)
    np.testing.assert_allclose((V * s ** 2) @ V.T, (X.T @ X).toarray(), atol=1e-8)  # the Gram matrix


@pytest.mark.parametrize("ease_input, threshold, n_users", [("binary", 0.0, 60), ("binary", 4.0, 60),
                                                             ("values", 0.0, 60), ("binary", 0.0, 25)])
def test_full_rank_scores_equal_dense_ease(ease_input, threshold, n_users):
    """At rank >= rank(X) the Woodbury form is exact: every score equals dense EASE's x B (its
    zero diagonal included), float32 against float32, also with fewer users than items (V then
    spans X's row space only; P = I / lambda on the rest)."""
    X = random_ratings(n_users=n_users)
    lam = 7.0
    low = EASELowRank(40, rank=40, threshold=threshold, ease_input=ease_input).fit(X, lam, power_iters=1).eval()
    dense = EASE(40, threshold=threshold, ease_input=ease_input).fit(X, lam).eval()
    x = torch.from_numpy(random_ratings(n_users=8, seed=1).toarray())
    with torch.no_grad():
        np.testing.assert_allclose(low(x).numpy(), dense(x).numpy(), atol=2e-5)
        eye = torch.eye(40) * 5.0  # each row rates one item: its own score is b_jj = 0
        np.testing.assert_allclose(torch.diagonal(low(eye)).numpy(), 0.0, atol=2e-5)
    # and the float64 B of the Woodbury form, against fit_ease's
    W = sp.csr_matrix(X, dtype=np.float64)
    W.data = input_weights(W.data, threshold, ease_input)
    s, V = randomized_svd(W, 40, 1)
    d, c = lowrank_ease_factors(s, V, lam)
    B = np.eye(40) - (np.eye(40) - (V * d) @ V.T) / c
    np.testing.assert_allclose(B, fit_ease(W, lam), atol=1e-6)


def test_low_rank_recommends_the_held_out_block_items():
    """Four disjoint blocks of items: at rank 4 (one direction per block) validation recall@10
    is near its ceiling, as dense EASE's (each user has ~13 unrated items of the block)."""
    matrix = block_matrix()
    config = TrainConfig(device="cpu").updated(model="ease-lowrank", svd_rank=4, ease_lambda=10.0, refit=False)
    _, metrics, history = topn.train_top_n(config, matrix, "cpu", progress=False)
    ease = TrainConfig(device="cpu").updated(model="ease", ease_lambda=10.0)
    _, ease_metrics, _ = topn.train_top_n(ease, matrix, "cpu", progress=False)
    assert history == [] and metrics["best_epoch"] == 0
    assert metrics["val_recall@10"] > 0.7
    assert metrics["val_recall@10"] >= ease_metrics["val_recall@10"] - 0.02


def test_onnx_export_equals_pytorch_dense_and_sparse(tmp_path):
    """One [n_items, rank] matrix V read by the first MatMul and the Gemm; the sparse first
    product of serving/sparse_input.py recognises the graph (binary and rating-value input);
    both equal PyTorch within 1e-4."""
    matrix = random_ratings(n_users=200, n_items=300, density=0.05)
    rng = np.random.default_rng(0)
    x = np.where(rng.random((5, 300)) < 0.05, rng.integers(1, 6, (5, 300)), 0).astype(np.float32)
    for ease_input, threshold in (("binary", 4.0), ("values", 0.0)):
        model = EASELowRank(300, rank=16, threshold=threshold, ease_input=ease_input).fit(matrix, 20.0).eval()
        path = tmp_path / f"{ease_input}.onnx"
        export_onnx_fp32(model, 300, path)
        graph = onnx.load(str(path))
        assert sorted(list(i.dims) for i in graph.graph.initializer if len(i.dims) == 2) == [[300, 16]]
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        dense = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(dense.run(None, {dense.get_inputs()[0].name: x})[0], ref, atol=1e-4)
        assert with_sparse_first_product(graph, max_share=1.0)
        sparse = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        for rows in (x[:1], x):
            np.testing.assert_allclose(sparse.run(None, {sparse.get_inputs()[0].name: rows})[0],
                                       ref[:len(rows)], atol=1e-4)


def test_a_200k_item_fit_holds_n_times_r_weights():
    """Memory linear in the items: fitting 200,000 items at rank 32 stores 200,000 x 32 floats
    and three vectors, nothing n x n."""
    n, r = 200_000, 32
    rng = np.random.default_rng(0)
    users = rng.integers(0, 2_000, 40_000)
    matrix = sp.csr_matrix((np.ones(40_000, np.float32), (users, rng.integers(0, n, 40_000))), shape=(2_000, n))
    model = EASELowRank(n, rank=r).fit(matrix, 10.0, power_iters=1)
    sizes = {name: b.numel() for name, b in model.state_dict().items()}
    assert sizes == {"V": n * r, "d": r, "inv_c": n, "self_weight": n}
    assert np.isfinite(model.V.numpy()).all() and (model.inv_c.numpy() >= 1.0).all()


def test_preset_is_a_closed_form_top_n_recipe():
    config = TrainConfig(device="cpu").updated(**preset("ease-lowrank"))
    assert config.model == "ease-lowrank" and config.svd_rank in (64, 128, 256, 512) and config.ease_lambda > 0
    assert config.model in topn.CLOSED_FORM
