"""The fused model's in-graph masking + TopK selects exactly what builder/ranking.py selects."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from builder.export import export_onnx_fp32
from builder.models import build_model
from builder.ranking import top_k_unrated
from server.steps.ranking_graph import K, TOP_INDICES, TOP_VALUES, with_top_k


@pytest.fixture(scope="module")
def network(u1, tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("deeprec", u1.n_items, hidden=(32,)).eval()
    path = tmp_path_factory.mktemp("rg") / "model.onnx"
    export_onnx_fp32(model, u1.n_items, path)
    return path


@pytest.mark.parametrize("k", [1, 10, 500, 1682])
def test_in_graph_top_k_equals_ranking_py_on_real_users(network, u1, k):
    x = u1.train[:200].toarray().astype(np.float32)
    plain = ort.InferenceSession(str(network), providers=["CPUExecutionProvider"])
    fused = ort.InferenceSession(with_top_k(onnx.load(str(network))).SerializeToString(),
                                 providers=["CPUExecutionProvider"])
    preds = plain.run(None, {plain.get_inputs()[0].name: x})[0]
    values, top = fused.run([TOP_VALUES, TOP_INDICES], {fused.get_inputs()[0].name: x, K: np.array([k], np.int64)})
    ref = top_k_unrated(preds, x != 0, k)
    assert np.array_equal(top, ref)  # ties (and -inf rated items when k is large) ordered alike
    np.testing.assert_allclose(values, np.take_along_axis(np.where(x != 0, -np.inf, preds), ref, axis=1), rtol=1e-6)


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
