"""In-process baselines and the roof, measured on the same users as the served figures.

- the seed notebook's way: PyTorch eager, one user per forward;
- PyTorch batched;
- ONNX Runtime batched in-process: the ceiling for any server of the same graph;
- the machine's measured FP32 GEMM peak, and each model's FLOPs per user -> % of the roof.
"""
from __future__ import annotations

import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper


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


@torch.no_grad()
def torch_one_per_forward(model, x: np.ndarray, seconds: float = 1.0) -> float:
    rows = [torch.from_numpy(r[None]) for r in x]

    def go():
        for r in rows:
            model(r)
    return _rate(go, len(rows), seconds)


@torch.no_grad()
def torch_batched(model, x: np.ndarray, batch: int = 64, seconds: float = 1.0) -> float:
    xb = torch.from_numpy(tile(x, batch))
    return _rate(lambda: model(xb), batch, seconds)


def ort_session(path, threads: int = 0) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_batched(session: ort.InferenceSession, x: np.ndarray, batch: int = 64, seconds: float = 1.0) -> float:
    name = session.get_inputs()[0].name
    xb = tile(x, batch)
    return _rate(lambda: session.run(None, {name: xb}), batch, seconds)


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
    """FP32 GEMM peak of this machine with torch's BLAS: the compute roof for CPU inference."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    per_call = 2 * n ** 3
    calls = _rate(lambda: torch.mm(a, b), 1, seconds)
    return calls * per_call / 1e9


def flops_per_user(onnx_path) -> int:
    """2*K*N for every weight matrix a MatMul/Gemm multiplies a user's vector with (fp32 graph)."""
    graph = onnx.load(str(onnx_path)).graph
    weights = {i.name: numpy_helper.to_array(i).shape for i in graph.initializer}
    total = 0
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            for name in node.input[1:2]:
                shape = weights.get(name)
                if shape is not None and len(shape) == 2:
                    total += 2 * shape[0] * shape[1]
    return total
