"""Masking and top-K as ONNX nodes appended to a network, for the fused `recommend` model.

The same selection as serving/ranking.py (already-rated items excluded, highest first, ties to
the lower item index: ONNX TopK's documented order), run by ONNX Runtime in the network's own
session instead of numpy afterwards. With a rater beside the ranker, both networks become one
graph on the shared RATINGS input, so one session runs both and reads the rater's predictions
at the ranker's chosen items: from its output layer's weight rows at those items where that
layer is a plain Gemm (the autoencoders'), else gathered from its whole output. For DeepRec on
ML-100K beside EASE, one user's run of the merged graph fell from 629 to 528 us (median of 300,
one thread, caches flushed between runs, a loaded 2-core host).
tests/serving/test_ranking_graph.py holds the lists equal to ranking.py's.
"""
from typing import NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
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
    predictions read at those items too (TOP_RATINGS; only there when its output layer allows,
    _rater_at_items). `blocked`: a second input BLOCKED
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
        rater_tail = _output_layer(rater)
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
        if not _rater_at_items(g, rater_tail, "aerec_top_raw", "aerec_top_ratings"):
            g.node.extend([helper.make_node("GatherElements", [other.output[0].name, "aerec_top_raw"],
                                            ["aerec_top_ratings"], axis=1)])
        g.node.extend([helper.make_node("Where", ["aerec_padded", "aerec_nan", "aerec_top_ratings"], [TOP_RATINGS])])
        outputs.append(helper.make_tensor_value_info(TOP_RATINGS, TensorProto.FLOAT, None))
    g.input.append(helper.make_tensor_value_info(K, TensorProto.INT64, [1]))
    if blocked:
        g.input.append(helper.make_tensor_value_info(BLOCKED, TensorProto.BOOL, None))
    del g.output[:]
    g.output.extend(outputs)
    return ranker


class _OutputLayer(NamedTuple):
    """A rater's last dense layer, when its output is `Gemm(hidden, weight, bias)` [+ per-row
    offset]: the outputs (prefixed as merged) of the Gemm and the optional Add, the hidden input,
    the weight's rows per item (float32 [n_items, width]), the bias (float32 [n_items] or
    None) and the per-row offset ([batch, 1], or None)."""
    outputs: tuple[str, ...]
    hidden: str
    rows: np.ndarray
    bias: np.ndarray | None
    offset: str | None


def _output_layer(rater: onnx.ModelProto) -> _OutputLayer | None:
    """The rater's output layer (_OutputLayer) if its graph ends as the autoencoders' do: a Gemm
    (alpha = beta = 1, no transposed input, constant weight and bias), optionally followed by an
    Add of a [batch, 1] tensor (DeepRec's user mean); None for any other ending. Names carry
    the "rater/" prefix with_top_k gives them."""
    g = rater.graph
    if not g.node or max((o.version for o in rater.opset_import if o.domain in ("", "ai.onnx")), default=0) < 13:
        return None
    consumers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    producers = {o: n for n in g.node for o in n.output}
    last = producers.get(g.output[0].name)
    offset = add = None
    if last is not None and last.op_type == "Add" and not consumers.get(last.output[0]):
        shapes = {v.name: v for v in onnx.shape_inference.infer_shapes(rater).graph.value_info}
        for mine, theirs in ((0, 1), (1, 0)):
            gemm = producers.get(last.input[mine])
            if gemm is not None and gemm.op_type == "Gemm" and _per_row(shapes.get(last.input[theirs])):
                add, offset, last = last, last.input[theirs], gemm
                break
        else:
            return None
    if last is None or last.op_type != "Gemm" or consumers.get(last.output[0], 0) > (1 if add else 0):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in last.attribute}
    if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
        return None
    weights = {i.name: i for i in g.initializer}
    if last.input[1] not in weights or (len(last.input) > 2 and last.input[2] not in weights):
        return None
    w = numpy_helper.to_array(weights[last.input[1]])
    rows = w if attrs.get("transB", 0) else w.T
    bias = numpy_helper.to_array(weights[last.input[2]]).reshape(-1) if len(last.input) > 2 else None
    if w.ndim != 2 or rows.dtype != np.float32 or (bias is not None and bias.size not in (1, rows.shape[0])):
        return None
    name = lambda n: "rater/" + n  # noqa: E731
    return _OutputLayer(tuple(name(n.output[0]) for n in (last, add) if n is not None), name(last.input[0]),
                        np.ascontiguousarray(rows), bias, name(offset) if offset else None)


def _per_row(info) -> bool:
    """Whether a value_info says [batch, 1]."""
    dims = info.type.tensor_type.shape.dim if info is not None else []
    return len(dims) == 2 and dims[1].dim_value == 1


def _rater_at_items(g: onnx.GraphProto, tail: _OutputLayer | None, items: str, out: str) -> bool:
    """Compute the rater's predictions only at `items` (int64 [batch, K] columns) into `out`
    (float32 [batch, K]), from its output layer's weight rows at those items, instead of its
    whole [batch, n_items] output gathered there: a lone user's forward otherwise streams the
    whole output layer (1,682 x 256 floats for DeepRec on ML-100K) to read K of its columns.
    Removes the full output layer's nodes; returns False (nothing changed) when `tail` is None
    or its nodes are not found."""
    if tail is None:
        return False
    made = {o for n in g.node for o in n.output}
    if not all(o in made for o in tail.outputs):
        return False
    keep = [n for n in g.node if not set(n.output) & set(tail.outputs)]
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in g.node for i in n.input}
    kept = [i for i in g.initializer if i.name in used or not i.name.startswith("rater/")]
    del g.initializer[:]
    g.initializer.extend(kept)   # the full layer's weight and bias, unused now
    g.initializer.append(numpy_helper.from_array(tail.rows, "aerec_rater_rows"))
    axes = numpy_helper.from_array(np.array([2], np.int64), "aerec_axis2")
    g.initializer.append(axes)
    nodes = [
        helper.make_node("Gather", ["aerec_rater_rows", items], ["aerec_rater_rows_at"], axis=0),  # [b, K, w]
        helper.make_node("Unsqueeze", [tail.hidden, "aerec_axis2"], ["aerec_rater_hidden"]),        # [b, w, 1]
        helper.make_node("MatMul", ["aerec_rater_rows_at", "aerec_rater_hidden"], ["aerec_rater_dot"]),
        helper.make_node("Squeeze", ["aerec_rater_dot", "aerec_axis2"], ["aerec_rater_at"]),        # [b, K]
    ]
    at = "aerec_rater_at"
    if tail.bias is not None:
        g.initializer.append(numpy_helper.from_array(np.broadcast_to(tail.bias, tail.rows.shape[:1]).copy(),
                                                     "aerec_rater_bias"))
        nodes += [helper.make_node("Gather", ["aerec_rater_bias", items], ["aerec_rater_bias_at"], axis=0),
                  helper.make_node("Add", [at, "aerec_rater_bias_at"], ["aerec_rater_biased"])]
        at = "aerec_rater_biased"
    if tail.offset is not None:
        nodes.append(helper.make_node("Add", [at, tail.offset], ["aerec_rater_offset"]))
    nodes[-1].output[0] = out   # the last step writes `out`
    g.node.extend(nodes)
    return True


def _merge_opsets(into: onnx.ModelProto, other: onnx.ModelProto) -> None:
    """One opset per domain, the newer of the two: the operators both exports use (MatMul,
    Gemm, activations) have kept their meaning across the opsets an exporter writes."""
    versions = {o.domain: o.version for o in into.opset_import}
    for o in other.opset_import:
        versions[o.domain] = max(versions.get(o.domain, 0), o.version)
    del into.opset_import[:]
    into.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(versions.items()))
    into.ir_version = max(into.ir_version, other.ir_version)
