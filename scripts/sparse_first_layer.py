"""An experiment kept for its answer (README, Performance): does a sparse first layer speed up
the served network? `python scripts/sparse_first_layer.py`.

The served network's first product multiplies a user's features (ratings and the rated-item
indicator, 3,364 wide, ~4% non-zero for the held-out users) by a 3,364 x 256 matrix. The rewrite below gathers only
the rated rows of that matrix inside the ONNX graph (NonZero -> Gather -> Mul -> ScatterND
with add), so a lone user reads ~120 rows instead of 3,364. It prints the largest difference
from the dense graph and the median latency of both per batch size, on real held-out users.
Answer on this 2-core VM: not kept. ONNX Runtime's gather/scatter kernels cost about what the
dense product does for one user and 1.5-2x more from 8 users per request. Summed by a product
with the [batch, nnz] matrix of which user each row is in, and switched to the dense product from
about 4 users, it pays and is kept: serving/sparse_input.py, with_sparse_first_layer.
"""
from __future__ import annotations


import numpy as np
import onnx
from onnx import helper, numpy_helper

from builder.data.sources import load_dataset
from builder.export import ort_session
from builder.run_folder import load_run
from perf import inputs
from perf.baselines import median_latency_us
from perf.harness import ensure_runs


def with_sparse_first_layer(model: onnx.ModelProto) -> onnx.ModelProto:
    """The first Gemm with a constant weight, computed from the non-zero entries of its input."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    node = next(n for n in g.node if n.op_type == "Gemm" and n.input[1] in inits)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    w = numpy_helper.to_array(inits[node.input[1]])
    g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T if attrs.get("transB") else w), "sp_wt"))
    a = node.input[0]

    def const(name, value):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(value, np.int64)))
    new = [const("sp_0", 0), const("sp_1", 1), const("sp_axis1", [1]),
           helper.make_node("NonZero", [a], ["sp_nz"]),                       # [2, nnz]: rows, columns
           helper.make_node("Gather", ["sp_nz", "sp_0"], ["sp_rows"], axis=0),
           helper.make_node("Gather", ["sp_nz", "sp_1"], ["sp_cols"], axis=0),
           helper.make_node("Transpose", ["sp_nz"], ["sp_nzt"], perm=[1, 0]),
           helper.make_node("GatherND", [a, "sp_nzt"], ["sp_vals"]),
           helper.make_node("Gather", ["sp_wt", "sp_cols"], ["sp_wrows"], axis=0),   # [nnz, out]
           helper.make_node("Unsqueeze", ["sp_vals", "sp_axis1"], ["sp_vals2"]),
           helper.make_node("Mul", ["sp_wrows", "sp_vals2"], ["sp_contrib"]),
           helper.make_node("Shape", [a], ["sp_batch"], start=0, end=1),
           helper.make_node("Shape", ["sp_wt"], ["sp_width"], start=1, end=2),
           helper.make_node("Concat", ["sp_batch", "sp_width"], ["sp_shape"], axis=0),
           helper.make_node("Expand", [node.input[2], "sp_shape"], ["sp_bias"]),
           helper.make_node("Unsqueeze", ["sp_rows", "sp_axis1"], ["sp_rows2"]),
           helper.make_node("ScatterND", ["sp_bias", "sp_rows2", "sp_contrib"], [node.output[0]], reduction="add")]
    nodes = list(g.node)
    i = nodes.index(node)
    nodes[i:i + 1] = new
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.remove(inits[node.input[1]])
    return model


def main() -> None:
    run_dir = ensure_runs(None, None)[1]  # the deeprec rating model
    config, _ = load_run(run_dir)
    dataset = load_dataset(config.data, config.split, config.seed)
    x = dataset.train[inputs.held_out_users(dataset.test, dataset.train, 64)].toarray().astype(np.float32)
    path = run_dir / "export" / "model_fp32.onnx"
    sparse = with_sparse_first_layer(onnx.load(str(path)))
    onnx.checker.check_model(sparse)
    for threads in (1, 2):
        dense_s = ort_session(path, threads)
        sparse_s = ort_session(sparse, threads)
        if threads == 1:
            diff = np.abs(dense_s.run(None, {"RATINGS": x})[0] - sparse_s.run(None, {"RATINGS": x})[0]).max()
            print(f"largest difference from the dense graph: {diff:.2e}; "
                  f"{(x != 0).sum(1).mean():.0f} ratings per user")
        for b in (1, 2, 4, 8, 16, 64):
            print(f"{threads} thread(s), {b:2d} users: dense {median_latency_us(dense_s, x[:b]):6.0f} us, "
                  f"sparse {median_latency_us(sparse_s, x[:b]):6.0f} us")


if __name__ == "__main__":
    main()
