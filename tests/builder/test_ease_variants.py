"""EASE's variants (builder/models/ease.py): rating values as input weights, EDLAE's dropout
penalty (Steck 2020) and the popularity correction. The defaults are plain EASE; EDLAE's closed
form is checked against a direct least-squares solve of its objective; the exported network
scores the same weights, and the fast path for a served history equals the dense product."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import scipy.sparse as sp
import torch

from builder.config import TrainConfig
from builder.export import export_onnx_fp32
from builder.models import EASE, build_model
from builder.models.ease import ease_from_gram, edlae_penalty, fit_ease, gram, input_weights, popularity_scale
from builder.presets import preset
from builder.train import train
from serving.sparse_input import with_sparse_first_product

RATINGS = np.array([[5, 3, 0, 0, 1, 0],
                    [0, 4, 2, 0, 0, 5],
                    [1, 0, 5, 4, 0, 0],
                    [4, 5, 3, 0, 2, 0],
                    [0, 0, 4, 5, 0, 3]], dtype=np.float64)


def _plain_ease(X: np.ndarray, lam: float) -> np.ndarray:
    """Steck 2019's formula written out: B = I - P diag(1/diag(P)), P = (X^T X + lam I)^-1."""
    P = np.linalg.inv(X.T @ X + lam * np.eye(X.shape[1]))
    return np.eye(X.shape[1]) - P / np.diag(P)


def test_the_defaults_are_plain_ease():
    config = TrainConfig()
    assert (config.ease_input, config.edlae_dropout, config.popularity_gamma) == ("binary", 0.0, 0.0)
    model = build_model("ease", 6, implicit_threshold=4.0)
    assert model.ease_input == "binary"
    model.fit(sp.csr_matrix(RATINGS), 3.0)  # no dropout, no correction: the defaults of fit
    liked = (RATINGS >= 4).astype(np.float64)
    np.testing.assert_allclose(model.B.numpy(), _plain_ease(liked, 3.0), atol=1e-6)
    x = torch.tensor(RATINGS[:2], dtype=torch.float32)
    np.testing.assert_allclose(model(x).numpy(), liked[:2] @ model.B.numpy(), atol=1e-6)


def test_edlae_closed_form_minimises_its_objective():
    """EDLAE with full emphasis: min_B ||X - XB||^2 + sum_i Lambda_ii ||B_i.||^2 s.t. diag(B) = 0,
    Lambda = lam + p/(1-p) diag(X^T X). Column j is a least-squares fit of x_j on the other items
    with rows sqrt(Lambda_ii) e_i appended, solved by lstsq (no normal equations)."""
    X = RATINGS
    lam, p = 2.0, 0.4
    penalty = lam + p / (1 - p) * (X ** 2).sum(axis=0)
    n = X.shape[1]
    expected = np.zeros((n, n))
    for j in range(n):
        others = [i for i in range(n) if i != j]
        A = np.vstack([X[:, others], np.diag(np.sqrt(penalty[others]))])
        y = np.concatenate([X[:, j], np.zeros(n - 1)])
        expected[others, j] = np.linalg.lstsq(A, y, rcond=None)[0]
    G = gram(sp.csr_matrix(X))
    np.testing.assert_allclose(edlae_penalty(G, lam, p), penalty)
    B = ease_from_gram(G, lam, p)
    np.testing.assert_allclose(B, expected, atol=1e-5)
    assert not np.allclose(B, fit_ease(sp.csr_matrix(X), lam), atol=1e-3)  # the penalty matters
    np.testing.assert_allclose(fit_ease(sp.csr_matrix(X), lam, 0.0), _plain_ease(X, lam), atol=1e-6)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
            edlae_penalty(G, lam, bad)


def test_popularity_correction_divides_each_column_by_its_count_to_the_gamma():
    gamma = 0.3
    plain = EASE(6).fit(sp.csr_matrix(RATINGS), 3.0).B.numpy()
    corrected = EASE(6).fit(sp.csr_matrix(RATINGS), 3.0, popularity_gamma=gamma).B.numpy()
    counts = (RATINGS > 0).sum(axis=0)
    np.testing.assert_allclose(corrected, plain / counts[None, :] ** gamma, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(popularity_scale(np.array([0.0, 1.0, 8.0]), 1 / 3), [1.0, 1.0, 0.5])
    np.testing.assert_allclose(popularity_scale(counts, 0.0), 1.0)


def test_values_input_weighs_each_rating_in_the_fit_and_the_forward():
    binary = EASE(6, threshold=0.0).fit(sp.csr_matrix(RATINGS), 3.0)
    values = EASE(6, threshold=0.0, ease_input="values").fit(sp.csr_matrix(RATINGS), 3.0)
    np.testing.assert_allclose(values.B.numpy(), _plain_ease(RATINGS, 3.0), atol=1e-6)
    assert not np.allclose(values.B.numpy(), binary.B.numpy(), atol=1e-3)
    x = torch.tensor(RATINGS[:3], dtype=torch.float32)
    np.testing.assert_allclose(values(x).numpy(), RATINGS[:3] @ values.B.numpy(), rtol=1e-5, atol=1e-6)
    # With a threshold, ratings below it drop out, the others keep their values.
    liked = EASE(6, threshold=4.0, ease_input="values").fit(sp.csr_matrix(RATINGS), 3.0)
    kept = RATINGS * (RATINGS >= 4)
    np.testing.assert_allclose(liked.B.numpy(), _plain_ease(kept, 3.0), atol=1e-6)
    np.testing.assert_allclose(liked(x).numpy(), kept[:3] @ liked.B.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(input_weights(np.array([0.0, 2.0, 4.0]), 4.0, "values"), [0.0, 0.0, 4.0])
    with pytest.raises(ValueError, match="ease_input must be one of"):
        EASE(6, ease_input="counts")


def test_the_memory_guard_holds_for_every_variant(u1):
    changes = {**preset("ease-values"), "ease_max_gb": 0.01}
    with pytest.raises(ValueError, match=r"1,682 x 1,682 .*0\.01 GB"):
        train(TrainConfig(device="cpu").updated(**changes), u1, progress=False)
    with pytest.raises(ValueError, match="0.01 GB"):
        build_model("ease", 1682, ease_max_gb=0.01, ease_input="values")


@pytest.fixture(scope="module")
def ease_values(u1, tmp_path_factory):
    result = train(TrainConfig(device="cpu").updated(**preset("ease-values")), u1, progress=False, evaluate=False)
    path = tmp_path_factory.mktemp("ease-values") / "model.onnx"
    export_onnx_fp32(result.model, u1.train.shape[1], path)
    return result.model, path


def test_the_preset_fits_values_with_dropout_and_correction(ease_values, u1):
    model, _ = ease_values
    config = TrainConfig().updated(**preset("ease-values"))
    assert model.ease_input == "values" and config.edlae_dropout > 0 and config.popularity_gamma > 0
    counts = np.diff(u1.train.tocsc().indptr)
    expected = ease_from_gram(gram(u1.train), config.ease_lambda, config.edlae_dropout)
    expected = expected * popularity_scale(counts, config.popularity_gamma).astype(np.float32)
    np.testing.assert_allclose(model.B.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_served_network_and_its_sparse_path_score_the_rating_values(ease_values, u1):
    """The exported graph reads the raw RATINGS and weighs them itself; the rewrite that scores a
    few histories from their rows of B alone gives the dense product's scores."""
    model, path = ease_values
    x = u1.train[:64].toarray().astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(want, x @ model.B.numpy(), rtol=1e-5, atol=1e-5)
    dense = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rewritten = onnx.load(path)
    assert with_sparse_first_product(rewritten)
    onnx.checker.check_model(rewritten)
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops.count("If") == 1 and "MatMul" not in ops
    sparse = ort.InferenceSession(rewritten.SerializeToString(), providers=["CPUExecutionProvider"])
    name = dense.get_inputs()[0].name
    for rows in (x[:1], x[1:2], x[:4], x, np.zeros_like(x[:2])):   # sparse ... dense (64 users)
        np.testing.assert_allclose(dense.run(None, {name: rows})[0], rows @ model.B.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(sparse.run(None, {name: rows})[0], dense.run(None, {name: rows})[0],
                                   rtol=1e-5, atol=1e-5)


def test_a_shard_of_users_with_the_sums_of_all_shards_fits_the_whole():
    """Data-parallel EASE: each process fits its rows, `reduce` sums the Gram matrices and the
    item counts (the popularity correction's) over processes; here the other shard's are added."""
    top, bottom = sp.csr_matrix(RATINGS[:2]), sp.csr_matrix(RATINGS[2:])
    other_gram = gram(sp.csr_matrix(input_weights(RATINGS[2:], 0.0, "values")))
    other_counts = (RATINGS[2:] > 0).sum(axis=0).astype(np.float64)
    reduced = []

    def reduce(part):
        reduced.append(np.shape(part))
        return part + (other_gram if np.ndim(part) == 2 else other_counts)

    options = dict(dropout=0.5, popularity_gamma=0.2)
    whole = EASE(6, ease_input="values").fit(sp.vstack([top, bottom]).tocsr(), 3.0, **options).B.numpy()
    shard = EASE(6, ease_input="values").fit(top, 3.0, reduce=reduce, **options).B.numpy()
    assert reduced == [(6, 6), (6,)]
    np.testing.assert_allclose(shard, whole, rtol=1e-5, atol=1e-7)


def test_rdlae_closed_form_minimises_its_objective_with_the_diagonal_bounded():
    """RDLAE (Moon et al. 2023): min_B ||X - XB||^2 + sum_i Lambda_ii ||B_i.||^2 s.t. diag(B) <= xi.
    Column j by lstsq: with every item as input; where that fit's own weight exceeds xi, again with
    b_j fixed at xi (x_j - xi x_j regressed on the others). lam is chosen so that the bound binds
    for some columns and not others; xi = 0 is EDLAE exactly."""
    X = RATINGS
    lam, p, xi = 6.0, 0.3, 0.3
    penalty = lam + p / (1 - p) * (X ** 2).sum(axis=0)
    n = X.shape[1]
    expected, active = np.zeros((n, n)), []
    for j in range(n):
        A = np.vstack([X, np.diag(np.sqrt(penalty))])
        b = np.linalg.lstsq(A, np.concatenate([X[:, j], np.zeros(n)]), rcond=None)[0]
        active.append(b[j] > xi)
        if b[j] > xi:
            others = [i for i in range(n) if i != j]
            A = np.vstack([X[:, others], np.diag(np.sqrt(penalty[others]))])
            b = np.zeros(n)
            b[j] = xi
            b[others] = np.linalg.lstsq(A, np.concatenate([(1 - xi) * X[:, j], np.zeros(n - 1)]), rcond=None)[0]
        expected[:, j] = b
    assert any(active) and not all(active), active
    B = ease_from_gram(gram(sp.csr_matrix(X)), lam, p, xi)
    np.testing.assert_allclose(B, expected, atol=1e-5)
    assert (np.diag(B) <= xi + 1e-6).all()
    np.testing.assert_array_equal(ease_from_gram(gram(sp.csr_matrix(X)), lam, p, 0.0),
                                  ease_from_gram(gram(sp.csr_matrix(X)), lam, p))
    with pytest.raises(ValueError, match=r"xi must be in \[0, 1\)"):
        ease_from_gram(gram(sp.csr_matrix(X)), lam, p, 1.0)
