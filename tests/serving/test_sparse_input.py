"""serving/sparse_input.py: the sparse branch equals the dense product, the switch happens at the
limit, and networks without the pattern are left alone. Real EASE on ML-100K u1; DeepRec's
architecture as served (ratings and the rated-item indicator, centred and scaled) for the first
dense layer, its weights as initialised (the rewrite is exact whatever they are)."""
import json

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
import pytest
import torch

from builder.config import TrainConfig
from builder.export import export_onnx_fp32
from builder.presets import preset
from builder.train import train
from serving.contract import BLOCKED
from serving.ranking_graph import K, TOP_INDICES, TOP_RATINGS, with_top_k
from serving.sparse_input import with_sparse_first_layer, with_sparse_first_product


@pytest.fixture(scope="module")
def ease_onnx(u1, tmp_path_factory):
    result = train(TrainConfig(device="cpu").updated(**preset("ease")), u1, progress=False, evaluate=False)
    path = tmp_path_factory.mktemp("ease") / "model.onnx"
    export_onnx_fp32(result.model, u1.train.shape[1], path)
    return path


def _session(model: onnx.ModelProto, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def test_sparse_and_dense_branches_give_the_dense_scores(ease_onnx, u1):
    dense = _session(onnx.load(ease_onnx))
    model = onnx.load(ease_onnx)
    assert with_sparse_first_product(model)
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node].count("If") == 1
    x = u1.train[:64].toarray().astype(np.float32)
    name = dense.get_inputs()[0].name
    for threads in (1, 2):   # two threads: the per-user sums must not race (ScatterND's "add" did)
        sparse = _session(model, threads)
        for rows in (x[:1], x[1:2], x[:4], x[:16], x, np.zeros_like(x[:2])):   # sparse ... dense
            want = dense.run(None, {name: rows})[0]
            for _ in range(5):
                np.testing.assert_allclose(sparse.run(None, {name: rows})[0], want, rtol=1e-5, atol=1e-5)


def test_the_branch_follows_the_number_of_ratings(ease_onnx, u1, tmp_path):
    x = u1.train[:8].toarray().astype(np.float32)
    nnz = int((x[:1] >= 4).sum())   # the preset's implicit_threshold: ratings of 4 and 5 count
    n_items = x.shape[1]
    name = onnx.load(ease_onnx).graph.input[0].name
    outputs = {}
    # max_share set so the limit is exactly the user's ratings, then one fewer (int() of the product)
    for share in ((nnz + 0.5) / n_items, (nnz - 0.5) / n_items):
        model = onnx.load(ease_onnx)
        with_sparse_first_product(model, max_share=share)
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(tmp_path / f"profile_{share}")
        s = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        outputs[share] = s.run(None, {name: x[:1]})[0]
        with open(s.end_profiling()) as f:
            events = json.load(f)
        ran_sparse = any(e.get("cat") == "Node" and e.get("args", {}).get("op_name") == "Range" for e in events)
        assert ran_sparse == (share > nnz / n_items), share
    a, b = outputs.values()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_the_lists_of_the_fused_graph_are_unchanged(ease_onnx, u1):
    x = u1.train[:32].toarray().astype(np.float32)
    plain = _session(with_top_k(onnx.load(ease_onnx)))
    model = with_top_k(onnx.load(ease_onnx))   # as the fused model serves it: merged, then rewritten
    assert with_sparse_first_product(model)
    rewritten = _session(model)
    name = plain.get_inputs()[0].name
    for rows in (x[i:i + 1] for i in range(32)):
        feed = {name: rows, K: np.array([10], np.int64)}
        np.testing.assert_array_equal(rewritten.run([TOP_INDICES], feed)[0], plain.run([TOP_INDICES], feed)[0])


def test_a_network_reading_the_ratings_themselves_is_left_alone(u1, tmp_path):
    from builder.train import make_model
    model = make_model(TrainConfig(model="deeprec", hidden=[32]), u1.train.shape[1]).eval()
    export_onnx_fp32(model, u1.train.shape[1], tmp_path / "m.onnx")
    graph = onnx.load(tmp_path / "m.onnx")
    before = graph.SerializeToString()
    assert not with_sparse_first_product(graph)
    assert graph.SerializeToString() == before


@pytest.fixture(scope="module")
def deeprec_onnx(u1, tmp_path_factory):
    from builder.train import make_model
    torch.manual_seed(0)
    config = TrainConfig(model="deeprec", hidden=[64, 32], activation="selu", center=True, implicit=True,
                         input_norm=True, last_activation=False)
    path = tmp_path_factory.mktemp("deeprec") / "model.onnx"
    export_onnx_fp32(make_model(config, u1.train.shape[1]).eval(), u1.train.shape[1], path)
    return path


def _ran(session: ort.InferenceSession, op: str) -> bool:
    """Whether the profiled `session`'s one run executed an `op` node."""
    with open(session.end_profiling()) as f:
        return any(e.get("cat") == "Node" and e.get("args", {}).get("op_name") == op for e in json.load(f))


def test_the_first_dense_layer_from_the_rated_rows_equals_the_dense_one(deeprec_onnx, u1, tmp_path):
    dense = _session(onnx.load(deeprec_onnx))
    model = onnx.load(deeprec_onnx)
    assert with_sparse_first_layer(model)
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("If") == 1 and ops.count("Gemm") == 3   # of the network's four layers, the first moved
    x = u1.train[:64].toarray().astype(np.float32)
    name = dense.get_inputs()[0].name
    width = 2 * x.shape[1]   # the first layer reads the ratings and the rated-item indicator
    for threads in (1, 2):
        sparse = _session(model, threads)
        for rows in (x[:1], x[1:2], x[:4], x[:16], x, np.zeros_like(x[:2])):   # sparse ... dense
            want = dense.run(None, {name: rows})[0]
            for _ in range(3):
                np.testing.assert_allclose(sparse.run(None, {name: rows})[0], want, rtol=1e-5, atol=1e-5)
    # The sparse branch (its Range) runs while the features' non-zeros are at most a quarter of
    # the layer's input width, one user's two per rating; the dense Gemm beyond.
    for rows in (x[:1], x[:16]):
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(tmp_path / f"profile_{len(rows)}")
        s = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        s.run(None, {name: rows})
        assert _ran(s, "Range") == (2 * (rows != 0).sum() <= width // 4), len(rows)


def test_the_fused_graph_with_both_rewrites_gives_the_same_lists(ease_onnx, deeprec_onnx, u1):
    x = u1.train[:32].toarray().astype(np.float32)
    merged = lambda: with_top_k(onnx.load(ease_onnx), onnx.load(deeprec_onnx), blocked=True)  # noqa: E731
    plain = _session(merged())
    model = merged()   # as the fused model serves it
    assert with_sparse_first_product(model) and with_sparse_first_layer(model)
    rewritten = _session(model)
    name = plain.get_inputs()[0].name
    for rows in [x[i:i + 1] for i in range(32)] + [x]:
        feed = {name: rows, K: np.array([10], np.int64), BLOCKED: np.zeros_like(rows, bool)}
        (top, ratings), (want_top, want_ratings) = (s.run([TOP_INDICES, TOP_RATINGS], feed) for s in (rewritten, plain))
        np.testing.assert_array_equal(top, want_top)
        np.testing.assert_allclose(ratings, want_ratings, rtol=1e-5, atol=1e-5)


def test_a_network_without_a_dense_layer_is_left_alone(ease_onnx):
    model = onnx.load(ease_onnx)
    before = model.SerializeToString()
    assert not with_sparse_first_layer(model)
    assert model.SerializeToString() == before


def test_a_weight_the_first_product_reads_too_is_kept_for_it():
    # The layer's weight is also the matrix of an EASE-like product (ELSA reads one matrix
    # twice): after both rewrites the product's branches still find it.
    rng = np.random.default_rng(0)
    n = 40
    w = helper.make_tensor("W", TensorProto.FLOAT, [n, n], rng.normal(size=(n, n)).astype(np.float32).ravel())
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    graph = helper.make_graph([
        helper.make_node("Greater", ["x", "zero"], ["rated"]),
        helper.make_node("Cast", ["rated"], ["binary"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["binary", "W"], ["scores"]),
        helper.make_node("Gemm", ["x", "W"], ["hidden"]),
        helper.make_node("Add", ["scores", "hidden"], ["y"])], "two_reads",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])], [w, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    dense = _session(model)
    assert with_sparse_first_product(model) and with_sparse_first_layer(model)
    onnx.checker.check_model(model)
    x = np.where(rng.random((3, n)) < 0.1, rng.integers(1, 6, (3, n)), 0).astype(np.float32)
    for rows in (x[:1], x):
        np.testing.assert_allclose(_session(model).run(None, {"x": rows})[0], dense.run(None, {"x": rows})[0],
                                   rtol=1e-5, atol=1e-4)
