"""Masking and top-K as ONNX nodes appended to a network, for the fused `recommend` model.

The same selection as builder/ranking.py (already-rated items excluded, highest first, ties to
the lower item index: ONNX TopK's documented order), run by ONNX Runtime in the network's own
session instead of numpy afterwards. tests/server/test_ranking_graph.py holds the two equal.
"""
import onnx
from onnx import TensorProto, helper

K, TOP_VALUES, TOP_INDICES = "K", "TOP_VALUES", "TOP_INDICES"


def with_top_k(model: onnx.ModelProto) -> onnx.ModelProto:
    """The network followed by: already-rated inputs (non-zero) masked to -inf, then TopK(K)."""
    g = model.graph
    x, y = g.input[0].name, g.output[0].name
    g.node.extend([
        helper.make_node("Constant", [], ["aerec_zero"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])),
        helper.make_node("Constant", [], ["aerec_ninf"],
                         value=helper.make_tensor("n", TensorProto.FLOAT, [], [float("-inf")])),
        helper.make_node("Equal", [x, "aerec_zero"], ["aerec_unrated"]),
        helper.make_node("Where", ["aerec_unrated", y, "aerec_ninf"], ["aerec_masked"]),
        helper.make_node("TopK", ["aerec_masked", K], [TOP_VALUES, TOP_INDICES], axis=-1, largest=1, sorted=1),
    ])
    g.input.append(helper.make_tensor_value_info(K, TensorProto.INT64, [1]))
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info(TOP_VALUES, TensorProto.FLOAT, None),
                     helper.make_tensor_value_info(TOP_INDICES, TensorProto.INT64, None)])
    return model
