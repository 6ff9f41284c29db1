"""The 17,770-item network at 64 users per request, side by side: `python -m benchmarks.bench_large`
(`make bench-large`). What the README's large-model bullet quotes:

- ONNX Runtime in-process: each layer's share of one 64-user forward (ORT's own profiler), and
  users/s at 64 and 128 users per forward, one two-thread session against two one-thread
  sessions run at once;
- served (tensors in system shared memory, as `aerec perf` measures it), alternated `--rounds`
  times: one two-thread instance at concurrency 1, two one-thread instances at concurrency 2,
  and the batcher joining requests into 128 rows at concurrency 4; each window with the GEMM
  roof read right after it and the CPU share the host stole.
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from builder.export import ort_session
from builder.repository import Tuning, add_network, network_config
from perf import analyzer, baselines, inputs
from perf.harness import LARGE_ITEMS, large_models
from serving.contract import ADMIN_HEADER
from server.launcher import ROOT, TritonServer

NAME = "large_w1024"
SERVED = {  # label: (tuning, concurrency)
    "1 instance x 2 threads, c=1": (Tuning(), "1"),
    "2 instances x 1 thread, c=2": (Tuning(network_instances=2, ort_threads=1, network_queue_delay_us=0), "2"),
    "1 x 2, batcher joins 128 rows, c=4": (Tuning(preferred_batch_sizes=[128], network_queue_delay_us=2000), "4"),
}


def layer_profile(onnx_path: Path, x: np.ndarray, runs: int = 50) -> dict[str, float]:
    """Median microseconds of each node in one 64-user forward (two threads)."""
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    # ORT writes its profile into the working directory unless told otherwise
    opts.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort_profile")
    session = ort_session(onnx_path, threads=2, options=opts)
    name = session.get_inputs()[0].name
    for _ in range(runs):
        session.run(None, {name: x})
    times = collections.defaultdict(list)
    profile = Path(session.end_profiling())
    for event in json.loads(profile.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times[event["name"].removesuffix("_kernel_time")].append(event["dur"])
    profile.unlink()
    profile.parent.rmdir()
    return {k: float(np.median(v)) for k, v in times.items()}


def concurrent_sessions(onnx_path: Path, x: np.ndarray, sessions: int, threads: int, seconds: float = 3.0) -> float:
    """Users/s of `sessions` sessions of `threads` threads each, run at once on the same batch."""
    made = [ort_session(onnx_path, threads) for _ in range(sessions)]
    counts, stop = [0] * sessions, time.perf_counter() + seconds

    def go(i):
        name = made[i].get_inputs()[0].name
        made[i].run(None, {name: x})
        while time.perf_counter() < stop:
            made[i].run(None, {name: x})
            counts[i] += 1
    workers = [threading.Thread(target=go, args=(i,)) for i in range(sessions)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) * len(x) / (time.perf_counter() - start)


def main() -> None:
    """`make bench-large`: what the module docstring lists, printed."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        model = large_models(out / "models")[NAME]
        flops = baselines.flops_per_user(model["onnx"])
        x64 = baselines.tile(model["x"], 64)
        print(f"{NAME}: {flops / 1e6:.1f} MFLOP per user; one 64-user forward, two threads, ORT's profile:")
        for node, us in layer_profile(model["onnx"], x64).items():
            print(f"  {node:24s} {us / 1e3:6.2f} ms")
        for rows in (64, 128):
            xb = baselines.tile(model["x"], rows)
            for sessions, threads in ((1, 2), (2, 1)):
                tp = concurrent_sessions(model["onnx"], xb, sessions, threads)
                print(f"in-process, {rows} users per forward, {sessions} session(s) x {threads} thread(s): "
                      f"{tp:,.0f} users/s ({tp * flops / 1e9:.0f} GFLOP/s)")
        print(f"GEMM roof: {baselines.gemm_peak_gflops(seconds=1.0):.0f} GFLOP/s")

        repo = out / "model_repository"
        repo.mkdir()
        (repo / "aerec_repository.json").write_text("{}")
        add_network(repo, NAME, model["onnx"], LARGE_ITEMS)
        data = inputs.write({"data": [{"RATINGS": {"content": [float(v) for v in r], "shape": [len(r)]}}
                                      for r in model["x"]]}, out / "data.json")
        print(f"\n{'served, 64 users per request':36s} {'users/s':>8s} {'roof GFLOP/s':>12s} {'of roof':>8s}  steal")
        with TritonServer(repo, build_dir=ROOT / "build" / "triton", log=out / "server.log") as server:
            shm = ("--shared-memory", "system", "-H", f"{ADMIN_HEADER}:{server.admin_key}")
            for _ in range(args.rounds):
                for label, (tuning, concurrency) in SERVED.items():
                    (repo / NAME / "config.pbtxt").write_text(network_config(NAME, LARGE_ITEMS, tuning=tuning))
                    server.load_model(NAME, force=True)
                    r = analyzer.run(NAME, server.http_url, "http", data, out / "w.csv", batch=64,
                                     concurrency=concurrency, interval_ms=1500, extra=shm)
                    roof = baselines.gemm_peak_gflops(seconds=1.0)
                    tp = max(row.throughput for row in r.rows)
                    steal = "?" if r.steal is None else f"{r.steal:.1%}"
                    print(f"{label:36s} {tp:8,.0f} {roof:12.0f} {tp * flops / 1e9 / roof:8.1%}  {steal}")


if __name__ == "__main__":
    main()
