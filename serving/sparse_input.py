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
nothing to the product). Networks whose first layer reads the ratings themselves (the
autoencoders) are left as they are: for them the gather kernels cost about what the dense
product does (scripts/sparse_first_layer.py).
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
    const = lambda name, value: helper.make_node(  # noqa: E731
        "Constant", [], [p(name)], value=numpy_helper.from_array(np.array(value, np.int64), p(name)))

    # The dense branch casts the mask itself: a Cast left outside, read only inside a branch,
    # makes ONNX Runtime's optimiser warn that it cannot rename a subgraph's implicit input.
    dense = helper.make_graph([
        helper.make_node("Identity" if weighted else "Cast", [mask], [p("dense_in")],
                         **({} if weighted else {"to": TensorProto.FLOAT})),
        helper.make_node("MatMul", [p("dense_in"), weight.name], [p("dense_out")])], "aerec_dense", [],
        [helper.make_tensor_value_info(p("dense_out"), TensorProto.FLOAT, None)])
    # Weighted feedback: each gathered row weighs its entry's value, the [batch, nnz] owner
    # matrix's 1s become the values (GatherND of the weights at the non-zero coordinates).
    weigh = [
        helper.make_node("Transpose", [p("nz")], [p("coords")], perm=[1, 0]),               # [nnz, 2]
        helper.make_node("GatherND", [mask, p("coords")], [p("values")]),                    # [nnz]
        helper.make_node("Mul", [p("owner_1"), p("values")], [p("owner_f")]),                # [batch, nnz]
    ] if weighted else []
    sparse = helper.make_graph([
        const("zero", [0]), const("one", [1]), const("step", 1), const("zero_scalar", 0),
        # nz: [2, nnz] (user row, item column) of the rated entries, row-major.
        helper.make_node("Gather", [p("nz"), p("zero")], [p("users")], axis=0),        # [1, nnz]
        helper.make_node("Gather", [p("nz"), p("one")], [p("items_1")], axis=0),       # [1, nnz]
        helper.make_node("Squeeze", [p("items_1"), p("zero")], [p("items")]),           # [nnz]
        helper.make_node("Gather", [weight.name, p("items")], [p("picked")], axis=0),    # [nnz, width]
        # Each user's rows summed by a product with the [batch, nnz] 0/1 matrix of whose they
        # are: deterministic, unlike ScatterND's "add", which ONNX Runtime runs in parallel
        # with lost updates when two threads add into one user's row.
        helper.make_node("Shape", [mask], [p("mask_shape")]),
        helper.make_node("Gather", [p("mask_shape"), p("zero_scalar")], [p("batch")], axis=0),
        helper.make_node("Range", [p("zero_scalar"), p("batch"), p("step")], [p("user_range")]),   # [batch]
        helper.make_node("Unsqueeze", [p("user_range"), p("one")], [p("user_column")]),     # [batch, 1]
        helper.make_node("Equal", [p("user_column"), p("users")], [p("owner")]),            # [batch, nnz]
        helper.make_node("Cast", [p("owner")], [p("owner_1" if weighted else "owner_f")], to=TensorProto.FLOAT),
        *weigh,
        helper.make_node("MatMul", [p("owner_f"), p("picked")], [p("sparse_out")]),
    ], "aerec_sparse", [], [helper.make_tensor_value_info(p("sparse_out"), TensorProto.FLOAT, None)])

    limit = max(1, int(max_share * rows_in_matrix))
    before = [
        helper.make_node("NonZero", [mask], [p("nz")]),
        helper.make_node("Shape", [p("nz")], [p("nz_shape")]),
        const("last", [1]), const("end", [2]),
        helper.make_node("Slice", [p("nz_shape"), p("last"), p("end")], [p("nnz")]),
        const("limit", [limit]),
        helper.make_node("LessOrEqual", [p("nnz"), p("limit")], [p("few_1")]),
        helper.make_node("Squeeze", [p("few_1")], [p("few")]),
        helper.make_node("If", [p("few")], [y], then_branch=sparse, else_branch=dense),
    ]
    at = list(g.node).index(matmul)
    g.node.remove(matmul)
    read = any(cast.output[0] in n.input for n in g.node) or cast.output[0] in {o.name for o in g.output}
    if not weighted and not read:
        at -= list(g.node).index(cast) < at
        g.node.remove(cast)
    for offset, node in enumerate(before):
        g.node.insert(at + offset, node)
