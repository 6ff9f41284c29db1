"""In-process baselines and the roof, measured on the same users as the served figures.

Each baseline takes one model or a list of them: a served pipeline with a ranker and a rater
runs both networks on every user, so its in-process ceiling does too.

- the seed notebook's way: PyTorch eager, one user per forward;
- PyTorch batched;
- ONNX Runtime batched in-process: the ceiling for any server of the same graphs;
- the machine's measured FP32 GEMM peak, and each model's FLOPs per user -> % of the roof.
"""
from __future__ import annotations

import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from builder.export import ort_session


def _rate(fn, n_items: int, min_seconds: float) -> float:
    """Calls fn() (which processes n_items users) until min_seconds pass; users per second."""
    fn()  # warm-up: first-call allocations and kernel selection are not throughput
    done, start = 0, time.perf_counter()
    while True:
        fn()
        done += n_items
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def _all(one_or_many) -> list:
    return list(one_or_many) if isinstance(one_or_many, (list, tuple)) else [one_or_many]


@torch.no_grad()
def torch_one_per_forward(models, x: np.ndarray, seconds: float = 1.0) -> float:
    """Users per second, one user per forward of each model (`models`: one nn.Module or a list)."""
    rows, models = [torch.from_numpy(r[None]) for r in x], _all(models)

    def go():
        for r in rows:
            for m in models:
                m(r)
    return _rate(go, len(rows), seconds)


@torch.no_grad()
def torch_batched(models, x: np.ndarray, batch: int = 64, seconds: float = 1.0) -> float:
    """Users per second, `batch` users per forward of each model."""
    xb, models = torch.from_numpy(tile(x, batch)), _all(models)
    return _rate(lambda: [m(xb) for m in models], batch, seconds)


def ort_batched(sessions, x: np.ndarray, batch: int = 64, seconds: float = 1.0) -> float:
    """Users per second, `batch` users per run of each ONNX Runtime session (one or a list: the
    ranker and the rater of a two-network pipeline both run on every user)."""
    runs = [(s, s.get_inputs()[0].name) for s in _all(sessions)]
    xb = tile(x, batch)
    return _rate(lambda: [s.run(None, {name: xb}) for s, name in runs], batch, seconds)


def ort_batched_parallel(paths, x: np.ndarray, batch: int = 64, seconds: float = 1.0, workers: int = 0) -> float:
    """Users per second of `workers` threads (0: one per core) side by side, each with its own
    one-thread session of every graph in `paths` (one path or a list) running `batch` users at a
    time: what a server with one single-thread instance per core can reach. ONNX Runtime releases
    the GIL while it runs, so the threads compute in parallel."""
    import os
    import threading
    workers = workers or os.cpu_count() or 1
    rates: list[float] = []
    start = threading.Barrier(workers)

    def work():
        sessions = [ort_session(p, threads=1) for p in _all(paths)]
        start.wait()  # measure only while every worker runs
        rates.append(ort_batched(sessions, x, batch, seconds))
    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return float(sum(rates))


def ort_ceiling(paths, x: np.ndarray, batch: int = 64, seconds: float = 1.0) -> float:
    """The in-process ceiling for serving the graphs in `paths` (one or a list, every graph run
    on every user): the higher of one session per graph on every core and one single-thread
    worker per core (ort_batched_parallel), so no server configuration can beat it by running
    the graphs a way the ceiling did not try. Users per second."""
    one = ort_batched([ort_session(p) for p in _all(paths)], x, batch, seconds)
    return max(one, ort_batched_parallel(paths, x, batch, seconds))


def median_latency_us(session: ort.InferenceSession, x: np.ndarray, n: int = 400) -> float:
    """Median microseconds of one forward of the batch x (after one warm-up call)."""
    name = session.get_inputs()[0].name
    session.run(None, {name: x})
    times = []
    for _ in range(n):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e6)


def tile(x: np.ndarray, batch: int) -> np.ndarray:
    """`batch` rows made by repeating the users of `x`: a batch of any size from real users."""
    reps = -(-batch // len(x))
    return np.ascontiguousarray(np.tile(x, (reps, 1))[:batch], dtype=np.float32)


def gemm_peak_gflops(n: int = 2048, seconds: float = 2.0) -> float:
    """FP32 GEMM peak of this machine (GFLOP/s, n x n x n products on every core): the higher of
    torch's BLAS and ONNX Runtime's MLAS, the compute roof for CPU inference. Both are read
    because on some CPUs MLAS outruns torch's GEMM, and a roof below what a served model
    reaches measures nothing."""
    from onnx import TensorProto, helper
    a, b = torch.randn(n, n), torch.randn(n, n)
    per_call = 2 * n ** 3
    torch_rate = _rate(lambda: torch.mm(a, b), 1, seconds / 2)
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "gemm",
                              [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])],
                              [numpy_helper.from_array(b.numpy(), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort_session(model)
    feed = {"A": a.numpy()}
    ort_rate = _rate(lambda: session.run(None, feed), 1, seconds / 2)
    return max(torch_rate, ort_rate) * per_call / 1e9


def flops_per_user(onnx_paths) -> int:
    """2*K*N for every weight matrix a MatMul/Gemm multiplies a user's vector with (fp32 graph;
    one path or a list, whose FLOPs add up)."""
    total = 0
    for path in _all(onnx_paths):
        total += _graph_flops(onnx.load(str(path)).graph)
    return total


def _graph_flops(graph) -> int:
    weights = {i.name: numpy_helper.to_array(i).shape for i in graph.initializer}
    total = 0
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            for name in node.input[1:2]:
                shape = weights.get(name)
                if shape is not None and len(shape) == 2:
                    total += 2 * shape[0] * shape[1]
    return total
