"""The fused model's in-graph masking + TopK selects exactly what serving/ranking.py selects,
for one network and for a ranker and a rater merged into one graph."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from builder.export import export_onnx_fp32
from builder.models import build_model
from serving.ranking import top_k_unrated
from serving.ranking_graph import K, TOP_INDICES, TOP_RATINGS, TOP_SCORES, with_top_k


def _exported(name, n_items, path, seed, **kwargs):
    torch.manual_seed(seed)
    export_onnx_fp32(build_model(name, n_items, **kwargs).eval(), n_items, path)
    return path


@pytest.fixture(scope="module")
def network(u1, tmp_path_factory):
    return _exported("deeprec", u1.n_items, tmp_path_factory.mktemp("rg") / "model.onnx", 0, hidden=(32,))


# The raters' endings: a plain Gemm, a Gemm plus the user's mean (served DeepRec's), and a
# sigmoid after the Gemm, which keeps the whole output gathered at the chosen items.
RATER_TAILS = {"gemm": dict(last_activation=False),
               "gemm+mean": dict(last_activation=False, center=True, implicit=True, input_norm=True),
               "activation": dict(last_activation=True)}


@pytest.fixture(scope="module", params=list(RATER_TAILS))
def rater(u1, tmp_path_factory, request):
    """A second network with the same layer names as `network` (one family, other weights):
    merging must keep the two apart."""
    return request.param, _exported("deeprec", u1.n_items, tmp_path_factory.mktemp("rg") / "rater.onnx", 1,
                                    hidden=(48,), **RATER_TAILS[request.param])


def _at(values, top):
    """values at the chosen columns, NaN where top_k_unrated padded (-1): what the graph sends."""
    return np.where(top >= 0, np.take_along_axis(values, np.maximum(top, 0), axis=1), np.nan)


def _run(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("k", [1, 10, 500, 1682])
def test_in_graph_top_k_equals_ranking_py_on_real_users(network, u1, k):
    x = u1.train[:200].toarray().astype(np.float32)
    plain = ort.InferenceSession(str(network), providers=["CPUExecutionProvider"])
    fused = ort.InferenceSession(with_top_k(onnx.load(str(network))).SerializeToString(),
                                 providers=["CPUExecutionProvider"])
    preds = plain.run(None, {plain.get_inputs()[0].name: x})[0]
    top, scores = fused.run([TOP_INDICES, TOP_SCORES], {fused.get_inputs()[0].name: x, K: np.array([k], np.int64)})
    ref = top_k_unrated(preds, x != 0, k)
    assert np.array_equal(top, ref)  # ties ordered alike; -1 padding alike when k exceeds the unrated
    assert ((ref < 0).any()) == (k == 1682)
    np.testing.assert_allclose(scores, _at(preds, ref), rtol=1e-6)


@pytest.mark.parametrize("k", [1, 10, 1682])
def test_merged_ranker_and_rater_list_equals_ranking_py(network, rater, u1, k):
    """One session over both networks on the shared input: the ranker's list is top_k_unrated's,
    and the rater's predictions are read at exactly those items (from its output layer's rows
    there where it ends in a Gemm: the full layer is then gone from the graph)."""
    tail, rater = rater
    x = u1.train[:200].toarray().astype(np.float32)
    scores, ratings = _run(network, x), _run(rater, x)
    rater_output = onnx.load(str(rater)).graph.output[0].name
    merged = with_top_k(onnx.load(str(network)), onnx.load(str(rater)))
    assert [i.name for i in merged.graph.input] == ["RATINGS", K]
    full_layer = any(o == f"rater/{rater_output}" for n in merged.graph.node for o in n.output)
    assert full_layer == (tail == "activation")
    s = ort.InferenceSession(merged.SerializeToString(), providers=["CPUExecutionProvider"])
    top, top_scores, top_ratings = s.run([TOP_INDICES, TOP_SCORES, TOP_RATINGS],
                                         {"RATINGS": x, K: np.array([k], np.int64)})
    ref = top_k_unrated(scores, x != 0, k)
    assert np.array_equal(top, ref)
    np.testing.assert_allclose(top_scores, _at(scores, ref), rtol=1e-6)
    np.testing.assert_allclose(top_ratings, _at(ratings, ref), rtol=1e-6, atol=1e-6)
    assert not np.allclose(top_scores[ref >= 0], top_ratings[ref >= 0])  # two networks, not one read twice


def test_tied_scores_go_to_the_lower_item_index():
    from onnx import TensorProto, helper
    inp = helper.make_tensor_value_info("RATINGS", TensorProto.FLOAT, [None, 6])
    out = helper.make_tensor_value_info("PREDICTIONS", TensorProto.FLOAT, [None, 6])
    const = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.FLOAT, [6],
                                                                             [3, 5, 5, 1, 5, 3]))
    graph = helper.make_graph([const, helper.make_node("Add", ["RATINGS", "c"], ["sum"]),
                               helper.make_node("Sub", ["sum", "RATINGS"], ["PREDICTIONS"])], "g", [inp], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    s = ort.InferenceSession(with_top_k(model).SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([[0, 0, 4, 0, 0, 0]], np.float32)  # item 2 rated: excluded
    top = s.run([TOP_INDICES], {"RATINGS": x, K: np.array([4], np.int64)})[0]
    reference = top_k_unrated(np.array([[3, 5, 5, 1, 5, 3]], np.float32), x != 0, 4)
    assert top.tolist() == [[1, 4, 0, 5]] == reference.tolist()


def _six_item_graph(scores):
    """A network whose output is `scores` [6] whatever the input (the F-01 catalogue's size)."""
    from onnx import TensorProto, helper
    inp = helper.make_tensor_value_info("RATINGS", TensorProto.FLOAT, [None, 6])
    out = helper.make_tensor_value_info("PREDICTIONS", TensorProto.FLOAT, [None, 6])
    const = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.FLOAT, [6], scores))
    graph = helper.make_graph([const, helper.make_node("Add", ["RATINGS", "c"], ["sum"]),
                               helper.make_node("Sub", ["sum", "RATINGS"], ["PREDICTIONS"])], "g", [inp], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(with_top_k(model).SerializeToString(), providers=["CPUExecutionProvider"])


def test_k_beyond_the_unrated_items_pads_instead_of_returning_a_rated_one():
    """A user who rated item 0 of six, asking for all six, gets the five others then -1, in
    ranking.py and in the graph alike; a row with every item rated gets only padding; an
    unrated item scored -inf still comes before the padding."""
    scores = [9.0, 5.0, 3.0, float("-inf"), 4.0, 1.0]   # item 0 is the best scored, but rated
    x = np.array([[5, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], np.float32)
    expected = [[1, 4, 2, 5, 3, -1], [-1] * 6, [0, 1, 4, 2, 5, 3]]
    assert top_k_unrated(np.array([scores] * 3, np.float32), x != 0, 6).tolist() == expected
    assert top_k_unrated(np.array([scores] * 3, np.float32), x != 0, 10).tolist() == expected  # k capped
    s = _six_item_graph(scores)
    top, values = s.run([TOP_INDICES, TOP_SCORES], {"RATINGS": x, K: np.array([6], np.int64)})
    assert top.tolist() == expected
    assert np.isnan(values[0, 5]) and np.isnan(values[1]).all() and values[0, 0] == 5.0


def test_padding_is_ignored_by_the_metrics():
    """recall, NDCG and coverage count -1 as no item (offline evaluation pads as the server does)."""
    import scipy.sparse as sp
    from builder.metrics import coverage, ndcg_at_k, recall_at_k
    relevant = sp.csr_matrix(np.array([[0, 1, 0, 0], [0, 0, 0, 1]], np.float32))
    top = np.array([[1, 2, -1], [-1, -1, -1]])
    users = np.arange(2)
    assert recall_at_k(top, relevant, users) == 0.5
    assert ndcg_at_k(top, relevant, users) == 0.5
    assert coverage(top, 4) == 0.5
