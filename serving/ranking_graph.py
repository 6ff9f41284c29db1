"""Masking and top-K as ONNX nodes appended to a network, for the fused `recommend` model.

The same selection as serving/ranking.py (already-rated items excluded, highest first, ties to
the lower item index: ONNX TopK's documented order), run by ONNX Runtime in the network's own
session instead of numpy afterwards. With a rater beside the ranker, both networks become one
graph on the shared RATINGS input, so one session runs both and gathers the rater's
predictions at the ranker's chosen items. tests/serving/test_ranking_graph.py holds the lists
equal to ranking.py's.
"""
import numpy as np
import onnx
from onnx import TensorProto, helper
from onnx.compose import add_prefix_graph

from serving.contract import BLOCKED, PAD  # ranking.py's padding value; the rules' mask

# K: int64 [1], the list length; TOP_INDICES: int64 [batch, K], item columns, best first, PAD
# (-1) in the slots beyond a row's unrated items; TOP_SCORES: float32 [batch, K], the ranker's
# scores there (NaN at PAD); TOP_RATINGS: float32 [batch, K], the rater's predictions there
# (NaN at PAD; only when a rater is merged in).
K, TOP_INDICES, TOP_SCORES, TOP_RATINGS = "K", "TOP_INDICES", "TOP_SCORES", "TOP_RATINGS"
# BLOCKED (with_top_k(blocked=True)): bool [batch, n_items], items masked as rated ones are, the
# request's rules (serving/rules.py rule_mask).


def with_top_k(ranker: onnx.ModelProto, rater: onnx.ModelProto | None = None,
               blocked: bool = False) -> onnx.ModelProto:
    """`ranker` (input [batch, n_items] raw ratings -> output [batch, n_items] scores) followed by:
    already-rated inputs (non-zero) masked to -inf, TopK(K), PAD where TopK had to take a rated
    item (fewer unrated items than K), and the ranker's scores at the chosen items. With `rater`
    (same input, output predicted ratings), its graph is merged in on the same input and its
    predictions gathered at those items too (TOP_RATINGS). `blocked`: a second input BLOCKED
    (bool [batch, n_items]) whose True items are masked too, as serving/rules.py top_k_allowed does.

    The ranker is modified in place and returned. Raises ValueError when the two networks' input
    names differ (they would not share one input).
    """
    g = ranker.graph
    x = g.input[0].name
    if rater is not None:
        if rater.graph.input[0].name != x:
            raise ValueError(f"rater input {rater.graph.input[0].name!r} differs from the ranker's {x!r}")
        # Prefixed so that the two exports' node and weight names (often alike) cannot collide;
        # the shared input keeps its name.
        add_prefix_graph(g, "ranker/", rename_inputs=False, inplace=True)
        other = add_prefix_graph(rater.graph, "rater/", rename_inputs=False)
        g.node.extend(other.node)
        g.initializer.extend(other.initializer)
        g.sparse_initializer.extend(other.sparse_initializer)
        g.value_info.extend(other.value_info)
        _merge_opsets(ranker, rater)
    y = g.output[0].name
    scalar = lambda name, dtype, value: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=helper.make_tensor(name, dtype, [], [value]))
    g.node.extend([
        scalar("aerec_zero", TensorProto.FLOAT, 0.0),
        scalar("aerec_ninf", TensorProto.FLOAT, float("-inf")),
        scalar("aerec_lowest", TensorProto.FLOAT, float(np.finfo(np.float32).min)),
        scalar("aerec_nan", TensorProto.FLOAT, float("nan")),
        scalar("aerec_pad", TensorProto.INT64, PAD),
        helper.make_node("Equal", [x, "aerec_zero"], ["aerec_unrated_only" if blocked else "aerec_unrated"]),
        *([helper.make_node("Not", [BLOCKED], ["aerec_allowed"]),
           helper.make_node("And", ["aerec_unrated_only", "aerec_allowed"], ["aerec_unrated"])] if blocked else []),
        # Unrated scores of -inf raised to the lowest float, as ranking.py does: every unrated
        # item outranks every rated one, so a rated item is chosen only once they run out.
        helper.make_node("Max", [y, "aerec_lowest"], ["aerec_floored"]),
        helper.make_node("Where", ["aerec_unrated", "aerec_floored", "aerec_ninf"], ["aerec_masked"]),
        helper.make_node("TopK", ["aerec_masked", K], ["aerec_top_masked", "aerec_top_raw"], axis=-1, largest=1,
                         sorted=1),
        # A slot whose chosen item is rated (-inf) is padding: PAD for its index, NaN for its values.
        helper.make_node("Equal", ["aerec_top_masked", "aerec_ninf"], ["aerec_padded"]),
        helper.make_node("Where", ["aerec_padded", "aerec_pad", "aerec_top_raw"], [TOP_INDICES]),
        helper.make_node("GatherElements", [y, "aerec_top_raw"], ["aerec_top_scores"], axis=1),
        helper.make_node("Where", ["aerec_padded", "aerec_nan", "aerec_top_scores"], [TOP_SCORES]),
    ])
    outputs = [helper.make_tensor_value_info(TOP_INDICES, TensorProto.INT64, None),
               helper.make_tensor_value_info(TOP_SCORES, TensorProto.FLOAT, None)]
    if rater is not None:
        g.node.extend([
            helper.make_node("GatherElements", [other.output[0].name, "aerec_top_raw"], ["aerec_top_ratings"],
                             axis=1),
            helper.make_node("Where", ["aerec_padded", "aerec_nan", "aerec_top_ratings"], [TOP_RATINGS])])
        outputs.append(helper.make_tensor_value_info(TOP_RATINGS, TensorProto.FLOAT, None))
    g.input.append(helper.make_tensor_value_info(K, TensorProto.INT64, [1]))
    if blocked:
        g.input.append(helper.make_tensor_value_info(BLOCKED, TensorProto.BOOL, None))
    del g.output[:]
    g.output.extend(outputs)
    return ranker


def _merge_opsets(into: onnx.ModelProto, other: onnx.ModelProto) -> None:
    """One opset per domain, the newer of the two: the operators both exports use (MatMul,
    Gemm, activations) have kept their meaning across the opsets an exporter writes."""
    versions = {o.domain: o.version for o in into.opset_import}
    for o in other.opset_import:
        versions[o.domain] = max(versions.get(o.domain, 0), o.version)
    del into.opset_import[:]
    into.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(versions.items()))
    into.ir_version = max(into.ir_version, other.ir_version)
