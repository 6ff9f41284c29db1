"""A network whose first step is `binary feedback @ constant matrix` or `weighted feedback @ constant
matrix`, computed from the rated items alone when a batch rates few of them (EASE: scores =
binarise(x) @ B; EASE on rating values: scores = (x * binarise(x)) @ B).

For a 0/1 row, the product is the sum of the matrix rows at the row's rated items; for a row of
weights (the ratings that count, 0 elsewhere), their sum weighted by the ratings. The rewrite
keeps the dense MatMul and puts beside it, behind an ONNX `If`, the gather of those rows
(NonZero -> Gather), summed per user by a product with the [batch, nnz] matrix saying which
user each row belongs to (0/1, or the entry's rating for weighted feedback). The sparse branch
runs while the batch's ratings number at most `max_share` of the matrix's rows: a lone user
with 100 ratings of 1,682 items reads 100 rows (0.7 MB) instead of the whole 11 MB matrix,
most of the cost of serving that user on a CPU;
a batch of 64 users, which reads the matrix once for all of them, keeps the dense product.
Measured on ML-100K's EASE merged with the deeprec rater (one graph, one thread, median us):
1 user 213 -> 106, 4 users 254 -> 162, 8 users (393 ratings) 447 -> 370, 16 users (838)
739 against 785 sparse, 64 users 2,832 against 3,028 sparse; hence MAX_SHARE = 0.25. Both
branches give the same scores up to float32 summation order (tests/serving/test_sparse_input.py).

Apply it to the graph as served, after merging (serving.ranking_graph.with_top_k prefixes names
in the main graph only, not inside an If's branches). Only these exact patterns are rewritten: a
Cast of a comparison (Greater, GreaterOrEqual) of the graph's input with a constant, multiplied
(MatMul) by an initializer, either directly (binary) or after a Mul with the graph's input
itself (weighted: the sparse branch reads the weights' non-zero entries, and a zero weight adds
nothing to the product).

with_sparse_first_layer does the same for a network's first dense layer (a Gemm with a constant
weight), whatever computes its input: the autoencoders' features are zero off the rated items
(DeepRec's: the centred ratings and the rated-item indicator, 3,364 wide for 1,682 items). The
sparse branch sums the weight's rows at the input's non-zero entries, each weighted by its
value, by the same product with a [batch, nnz] matrix. Measured on ML-100K's DeepRec rater
(256-128 layers, 60 ratings per held-out user, one thread, a loaded 2-core host, best of five):
one user 1,105 -> 406 us for the rater alone, 1,694 -> 1,138 us for the fused graph (EASE
beside it); from 4 users the dense Gemm is about as fast (docs/performance.md). An earlier
attempt summed with ScatterND and gained little (scripts/sparse_first_layer.py).
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

COMPARISONS = ("Greater", "GreaterOrEqual")
MIN_OPSET = 13   # Squeeze's axes as an input
MAX_SHARE = 0.25


def with_sparse_first_product(model: onnx.ModelProto, max_share: float = MAX_SHARE) -> bool:
    """Rewrite `model` in place when its graph has the pattern above; returns whether it did.

    `max_share`: the sparse branch runs while the batch's rated entries number at most this
    share of the matrix's rows (1.0: sparse whenever it reads less than the dense product)."""
    g = model.graph
    if not g.input or _opset(model) < MIN_OPSET:
        return False
    x = g.input[0].name
    producers = {o: n for n in g.node for o in n.output}
    weights = {i.name: i for i in g.initializer}
    for node in g.node:
        if node.op_type != "MatMul" or node.input[1] not in weights or len(weights[node.input[1]].dims) != 2:
            continue
        weighted = _weighted_feedback(producers.get(node.input[0]), x)
        cast = producers.get(weighted.input[1] if weighted is not None else node.input[0])
        compare = cast is not None and cast.op_type == "Cast" and producers.get(cast.input[0])
        if not compare or compare.op_type not in COMPARISONS or compare.input[0] != x:
            continue
        if weighted is None:
            _rewrite(g, node, cast, compare.output[0], weights[node.input[1]], max_share)
        else:
            _rewrite(g, node, cast, weighted.output[0], weights[node.input[1]], max_share, weighted=True)
        return True
    return False


def _weighted_feedback(node: onnx.NodeProto | None, x: str) -> onnx.NodeProto | None:
    """`node` when it is Mul(x, mask) (either order), as a copy with the inputs ordered (x, mask);
    else None."""
    if node is None or node.op_type != "Mul" or x not in node.input or len(node.input) != 2:
        return None
    other = node.input[1] if node.input[0] == x else node.input[0]
    if other == x:
        return None
    return helper.make_node("Mul", [x, other], list(node.output))


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _rewrite(g: onnx.GraphProto, matmul: onnx.NodeProto, cast: onnx.NodeProto, mask: str,
             weight: onnx.TensorProto, max_share: float, weighted: bool = False) -> None:
    """`mask`: the bool mask of the rated entries (binary), or with `weighted` the float
    [batch, n_items] weights (the mask times the ratings), which the dense branch multiplies as
    they are and the sparse branch reads at their non-zero entries."""
    rows_in_matrix = weight.dims[0]
    y = matmul.output[0]
    p = lambda name: f"aerec_sparse/{name}"  # noqa: E731

    # The dense branch casts the mask itself: a Cast left outside, read only inside a branch,
    # makes ONNX Runtime's optimiser warn that it cannot rename a subgraph's implicit input.
    dense = helper.make_graph([
        helper.make_node("Identity" if weighted else "Cast", [mask], [p("dense_in")],
                         **({} if weighted else {"to": TensorProto.FLOAT})),
        helper.make_node("MatMul", [p("dense_in"), weight.name], [p("dense_out")])], "aerec_dense", [],
        [helper.make_tensor_value_info(p("dense_out"), TensorProto.FLOAT, None)])
    # Weighted feedback: each gathered row weighs its entry's value, the [batch, nnz] owner
    # matrix's 1s become the values (GatherND of the weights at the non-zero coordinates).
    weigh = _weighed_by_values(p, mask) if weighted else []
    sparse = helper.make_graph([
        *_gathered_rows(p, mask, weight.name, "owner_1" if weighted else "owner_f"),
        *weigh,
        helper.make_node("MatMul", [p("owner_f"), p("picked")], [p("sparse_out")]),
    ], "aerec_sparse", [], [helper.make_tensor_value_info(p("sparse_out"), TensorProto.FLOAT, None)])

    before = _switch(p, mask, max(1, int(max_share * rows_in_matrix)), y, sparse, dense)
    at = list(g.node).index(matmul)
    g.node.remove(matmul)
    read = any(cast.output[0] in n.input for n in g.node) or cast.output[0] in {o.name for o in g.output}
    if not weighted and not read:
        at -= list(g.node).index(cast) < at
        g.node.remove(cast)
    for offset, node in enumerate(before):
        g.node.insert(at + offset, node)


def with_sparse_first_layer(model: onnx.ModelProto, max_share: float = MAX_SHARE) -> bool:
    """Rewrite `model` in place so that its first Gemm with a constant float weight (a dense
    layer: `A @ W + bias`; alpha 1, A not transposed) sums, for a batch with few non-zero entries
    in A, the rows of W at those entries weighted by their values; returns whether it did.

    Exact for any A (a zero entry adds nothing to the product); it pays where A is sparse, as
    an autoencoder's first layer is: DeepRec's features (serving a user's ~100 of 1,682 items,
    ratings and the rated-item indicator, 3,364 wide) are zero off the rated items. W is stored
    once, transposed to [in, out] so that a rated item's row is contiguous, for both branches.
    `max_share`: the sparse branch runs while A's non-zero entries number at most this share of
    W's rows (its input width). Apply it after serving.ranking_graph.with_top_k (which prefixes
    names in the main graph only) and after with_sparse_first_product (whose branches hold a
    MatMul, no Gemm)."""
    g = model.graph
    if not g.input or _opset(model) < MIN_OPSET:
        return False
    weights = {i.name: i for i in g.initializer}
    for node in g.node:
        if node.op_type != "Gemm" or node.input[1] not in weights:
            continue
        w = weights[node.input[1]]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (len(w.dims) != 2 or w.data_type != TensorProto.FLOAT or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0):
            continue
        _rewrite_layer(g, node, w, bool(attrs.get("transB", 0)), float(attrs.get("beta", 1.0)), max_share)
        return True
    return False


def _rewrite_layer(g: onnx.GraphProto, gemm: onnx.NodeProto, weight: onnx.TensorProto, transposed: bool,
                   beta: float, max_share: float) -> None:
    """The Gemm `gemm` (A @ W, W `weight`, [out, in] when `transposed`) as an If: the dense Gemm on
    W [in, out], or the gather of W's rows at A's non-zero entries (see with_sparse_first_layer)."""
    p = lambda name: f"aerec_sparse_layer/{name}"  # noqa: E731
    a, y = gemm.input[0], gemm.output[0]
    bias = list(gemm.input[2:3])
    w = numpy_helper.to_array(weight)
    w_in = p("weight")   # [in, out]
    read_elsewhere = any(n is not gemm and _reads(n, weight.name) for n in g.node)
    g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T if transposed else w), w_in))
    if not read_elsewhere:
        g.initializer.remove(weight)
    dense = helper.make_graph([
        helper.make_node("Gemm", [a, w_in, *bias], [p("dense_out")], beta=beta)], "aerec_dense_layer", [],
        [helper.make_tensor_value_info(p("dense_out"), TensorProto.FLOAT, None)])
    sparse = helper.make_graph([
        # Each row's entries summed by a product with the [batch, nnz] matrix holding an entry's
        # value in its row's line (_gathered_rows says why not ScatterND).
        *_gathered_rows(p, a, w_in, "owner_1"),
        *_weighed_by_values(p, a),
        helper.make_node("Gemm", [p("owner_f"), p("picked"), *bias], [p("sparse_out")], beta=beta),
    ], "aerec_sparse_layer", [], [helper.make_tensor_value_info(p("sparse_out"), TensorProto.FLOAT, None)])
    before = _switch(p, a, max(1, int(max_share * w.shape[1 if transposed else 0])), y, sparse, dense)
    at = list(g.node).index(gemm)
    g.node.remove(gemm)
    for offset, node in enumerate(before):
        g.node.insert(at + offset, node)


def _const(p, name: str, value) -> onnx.NodeProto:
    """An int64 Constant named p(name)."""
    return helper.make_node("Constant", [], [p(name)],
                            value=numpy_helper.from_array(np.array(value, np.int64), p(name)))


def _weighed_by_values(p, source: str) -> list[onnx.NodeProto]:
    """p("owner_f"): the owner matrix p("owner_1") (_gathered_rows) with each entry's 1 replaced
    by its value in `source` (GatherND at the non-zero coordinates p("nz"))."""
    return [
        helper.make_node("Transpose", [p("nz")], [p("coords")], perm=[1, 0]),               # [nnz, 2]
        helper.make_node("GatherND", [source, p("coords")], [p("values")]),                  # [nnz]
        helper.make_node("Mul", [p("owner_1"), p("values")], [p("owner_f")])]                # [batch, nnz]


def _gathered_rows(p, source: str, weight: str, owner: str) -> list[onnx.NodeProto]:
    """A sparse branch's common nodes: from p("nz") (NonZero of `source`, [2, nnz]: row, column
    of each entry, row-major), p("picked") = `weight`'s rows at the columns [nnz, width] and
    `owner` (p(owner)) = the float [batch, nnz] 0/1 matrix of which row of `source` each entry is in."""
    return [
        _const(p, "zero", [0]), _const(p, "one", [1]), _const(p, "step", 1), _const(p, "zero_scalar", 0),
        helper.make_node("Gather", [p("nz"), p("zero")], [p("users")], axis=0),        # [1, nnz]
        helper.make_node("Gather", [p("nz"), p("one")], [p("items_1")], axis=0),       # [1, nnz]
        helper.make_node("Squeeze", [p("items_1"), p("zero")], [p("items")]),           # [nnz]
        helper.make_node("Gather", [weight, p("items")], [p("picked")], axis=0),         # [nnz, width]
        # Each user's rows summed by a product with the [batch, nnz] 0/1 matrix of whose they
        # are: deterministic, unlike ScatterND's "add", which ONNX Runtime runs in parallel
        # with lost updates when two threads add into one user's row.
        helper.make_node("Shape", [source], [p("source_shape")]),
        helper.make_node("Gather", [p("source_shape"), p("zero_scalar")], [p("batch")], axis=0),
        helper.make_node("Range", [p("zero_scalar"), p("batch"), p("step")], [p("user_range")]),   # [batch]
        helper.make_node("Unsqueeze", [p("user_range"), p("one")], [p("user_column")]),     # [batch, 1]
        helper.make_node("Equal", [p("user_column"), p("users")], [p("owner")]),            # [batch, nnz]
        helper.make_node("Cast", [p("owner")], [p(owner)], to=TensorProto.FLOAT)]


def _switch(p, source: str, limit: int, y: str, sparse: onnx.GraphProto, dense: onnx.GraphProto) -> list:
    """The nodes that count `source`'s non-zero entries (p("nz"), read by the sparse branch) and
    give `y` from `sparse` while they number at most `limit`, else from `dense`."""
    return [
        helper.make_node("NonZero", [source], [p("nz")]),
        helper.make_node("Shape", [p("nz")], [p("nz_shape")]),
        _const(p, "last", [1]), _const(p, "end", [2]),
        helper.make_node("Slice", [p("nz_shape"), p("last"), p("end")], [p("nnz")]),
        _const(p, "limit", [limit]),
        helper.make_node("LessOrEqual", [p("nnz"), p("limit")], [p("few_1")]),
        helper.make_node("Squeeze", [p("few_1")], [p("few")]),
        helper.make_node("If", [p("few")], [y], then_branch=sparse, else_branch=dense)]


def _reads(node: onnx.NodeProto, name: str) -> bool:
    """Whether `node`, or a node of a subgraph it holds (an If's branches), reads `name`."""
    if name in node.input:
        return True
    return any(_reads(n, name) for a in node.attribute if a.type == onnx.AttributeProto.GRAPH for n in a.g.node)
