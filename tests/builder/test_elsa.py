"""ELSA (builder/models/elsa.py): the closed-form loss against the dense one, a short training on
a block-structured matrix, ONNX export (dense and with the sparse first product) against
PyTorch, and memory linear in the items."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

import builder.topn as topn
from builder.config import TrainConfig
from builder.data.splits import holdout_share_per_user
from builder.export import export_onnx_fp32
from builder.models import TOP_N, build_model
from builder.models.elsa import ELSA, elsa_nmse
from builder.predict import sparse_rows
from builder.presets import preset
from builder.topn import train_top_n, validation_metrics
from serving.sparse_input import with_sparse_first_product


def block_matrix(n_blocks=4, block_items=25, users_per_block=60, share=0.6, seed=0) -> sp.csr_matrix:
    """Users x items 1..5 ratings: the users of block b rate a random `share` of block b's items
    and nothing else, so an item's neighbours are its block."""
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for b in range(n_blocks):
        for u in range(users_per_block):
            items = b * block_items + np.flatnonzero(rng.random(block_items) < share)
            rows += [b * users_per_block + u] * len(items)
            cols += items.tolist()
    data = rng.integers(1, 6, len(rows)).astype(np.float32)
    return sp.csr_matrix((data, (rows, cols)), shape=(n_blocks * users_per_block, n_blocks * block_items))


def test_elsa_is_a_top_n_model_built_from_the_config():
    model = topn.make_top_n_model(TrainConfig(model="elsa", elsa_rank=8, implicit_threshold=4.0), 30)
    assert "elsa" in TOP_N and isinstance(model, ELSA)
    assert model.W.shape == (30, 8) and model.threshold == 4.0
    with pytest.raises(ValueError, match="elsa_rank must be >= 1"):
        build_model("elsa", 30, elsa_rank=0)


def test_closed_form_loss_equals_the_normalised_mse_of_the_dense_scores():
    """|y|^2 and <y, x> from the r x r Gram matrix equal the paper's NMSE on y = x(AA^T - I)."""
    torch.manual_seed(0)
    A = F.normalize(torch.randn(40, 6, dtype=torch.float64), dim=1)
    x = (torch.rand(5, 40, dtype=torch.float64) < 0.2).double()
    x[:, 0] = 1.0
    y = x @ A @ A.T - x
    dense = ((F.normalize(y, dim=1) - F.normalize(x, dim=1)) ** 2).sum(1)
    torch.testing.assert_close(elsa_nmse(A, x), dense)
    torch.testing.assert_close(elsa_nmse(A, x.to_sparse()), dense)


def test_diagonal_of_b_is_zero_and_eval_keeps_the_scores():
    """B = AA^T - I has a zero diagonal (unit rows): a lone rated item scores 0 for itself; eval()
    rescales W's rows in place without changing a score."""
    torch.manual_seed(0)
    model = ELSA(20, rank=4)
    x = torch.zeros(1, 20)
    x[0, 3] = 5.0
    with torch.no_grad():
        before = model.train()(x)
        after = model.eval()(x)
    torch.testing.assert_close(before, after)
    assert abs(after[0, 3].item()) < 1e-6
    torch.testing.assert_close(model.W.norm(dim=1), torch.ones(20))


def test_elsa_trains_and_recommends_the_held_out_block_items():
    """On four disjoint blocks of items, trained on each user's visible 80%: every user's unrated
    items of its own block all score above every item of the other blocks, so the hidden items
    (all in the block) are ranked first; validation recall@10 is near its ceiling (about 10 of
    a user's ~13 unrated block items are in the top 10: ~0.77 by chance within the block)."""
    matrix = block_matrix()
    config = TrainConfig(device="cpu").updated(model="elsa", elsa_rank=8, lr=0.05, batch_size=32, epochs=40,
                                               patience=5, implicit_threshold=0.0, relevant_threshold=0.0,
                                               seed=0, refit=True)
    model, metrics, history = train_top_n(config, matrix, "cpu", progress=False)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert metrics["val_recall@10"] > 0.7
    x = matrix.toarray()
    with torch.no_grad():
        scores = model(torch.from_numpy(x)).numpy()
    block = np.arange(x.shape[1]) // 25
    for u in range(len(x)):
        own = block == u // 60
        assert scores[u, own & (x[u] == 0)].min() > scores[u, ~own].max()


def test_validation_in_blocks_of_users_equals_one_block(monkeypatch):
    """Scoring 7 users at a time gives the per-user means of scoring all at once."""
    matrix = block_matrix(seed=1)
    config = TrainConfig(device="cpu", model="elsa", relevant_threshold=0.0)
    visible, hidden = holdout_share_per_user(matrix, 0.2, seed=0)
    torch.manual_seed(0)
    model = ELSA(matrix.shape[1], rank=4).eval()
    whole = validation_metrics(model, visible, hidden, config, "cpu")
    monkeypatch.setattr(topn, "VALIDATION_BLOCK_SCORES", 7 * matrix.shape[1])
    blocked = validation_metrics(model, visible, hidden, config, "cpu")
    assert blocked == pytest.approx(whole, abs=1e-12)


def test_onnx_export_equals_pytorch_dense_and_sparse(tmp_path):
    """Two MatMuls against one [n_items, rank] initializer; the sparse first product of
    serving/sparse_input.py recognises the graph; both equal PyTorch within 1e-4."""
    torch.manual_seed(0)
    model = ELSA(300, rank=16, threshold=4.0).eval()
    path = tmp_path / "elsa.onnx"
    export_onnx_fp32(model, 300, path)
    graph = onnx.load(str(path))
    assert [list(i.dims) for i in graph.graph.initializer] == [[300, 16]]
    rng = np.random.default_rng(0)
    x = np.where(rng.random((5, 300)) < 0.05, rng.integers(1, 6, (5, 300)), 0).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    dense = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(dense.run(None, {dense.get_inputs()[0].name: x})[0], ref, atol=1e-4)
    assert with_sparse_first_product(graph, max_share=1.0)
    assert any(n.op_type == "If" for n in graph.graph.node)
    sparse = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    for rows in (x[:1], x):
        np.testing.assert_allclose(sparse.run(None, {sparse.get_inputs()[0].name: rows})[0],
                                   ref[:len(rows)], atol=1e-4)


def test_a_200k_item_model_holds_n_times_r_weights():
    """Memory linear in the items: 200,000 x 64 weights (51 MB), nothing n x n; the loss of a
    batch forms nothing 200,000 wide but the factors and their gradient."""
    n, r = 200_000, 64
    model = ELSA(n, rank=r)
    assert sum(p.numel() for p in model.parameters()) == n * r
    assert all(t.numel() <= n * r for t in [*model.parameters(), *model.buffers()])
    rng = np.random.default_rng(0)
    users, items = np.repeat(np.arange(8), 10), rng.choice(n, 80, replace=False)
    rows = sp.csr_matrix((np.ones(80, np.float32), (users, items)), shape=(8, n))
    loss = model.loss(sparse_rows(rows, np.arange(8), "cpu")).mean()
    loss.backward()
    assert model.W.grad.shape == (n, r) and torch.isfinite(loss)


def test_elsa_preset_is_a_top_n_recipe():
    config = TrainConfig(device="cpu").updated(**preset("elsa"))
    assert config.model == "elsa" and config.elsa_rank in (64, 128, 256) and config.refit
