"""How one served network grows with the catalogue: `python -m benchmarks.bench_items` (`make bench-items`).

For each item count, the DeepRecommender layout n-512-512-1024 (mirrored; untrained weights: the
cost does not depend on their values) is exported to ONNX, served alone by the embedded Triton
server (one instance, two ONNX Runtime threads, dynamic batching) and driven by perf_analyzer at 64
users per request with the tensors in system shared memory, as `aerec perf` measures the large
model. Printed per size, as JSON lines: ONNX file size, FLOP per user, users/s, GFLOP/s, the
GEMM roof read right after the window, and the server's resident memory (tritonserver and its
Python stubs, from /proc) once loaded and after the window. docs/scaling.md fits its model to
these figures.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from builder.config import TrainConfig
from builder.data.synthetic import synthetic_ratings
from builder.export import export_onnx_fp32
from builder.repository import add_network
from builder.train import make_model
from perf import analyzer, baselines, inputs
from serving.contract import ADMIN_HEADER
from server.launcher import ROOT, TritonServer, child_pids

HIDDEN = [512, 512, 1024]   # DeepRecommender's Netflix layers
DEFAULT_ITEMS = "1682,4443,8885,17770,35540"


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` and every process below it, MB (VmRSS from /proc)."""
    total = 0
    for p in [pid, *child_pids(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:   # a stub that exited between listing and reading
            pass
    return total / 1024


def network(folder: Path, n_items: int, users: int = 64) -> tuple[Path, np.ndarray]:
    """An untrained n-512-512-1024 network for `n_items` items and `users` synthetic rating rows."""
    torch.manual_seed(0)
    model = make_model(TrainConfig(model="deeprec", hidden=HIDDEN, last_activation=False), n_items).eval()
    path = folder / f"items{n_items}.onnx"
    export_onnx_fp32(model, n_items, path)
    matrix = synthetic_ratings(users * 4, n_items, users * 4 * min(100, n_items // 10), seed=0)
    rows = np.flatnonzero(np.diff(matrix.indptr) > 0)[:users]
    return path, matrix[rows].toarray().astype(np.float32)


def measure(n_items: int, out: Path, interval_ms: int) -> dict:
    """One catalogue size: export, serve, drive at 64 users per request, read memory."""
    folder = out / f"items{n_items}"
    folder.mkdir(parents=True)
    onnx_path, x = network(folder, n_items)
    repo = folder / "model_repository"
    repo.mkdir()
    (repo / "aerec_repository.json").write_text("{}")
    name = "network"
    add_network(repo, name, onnx_path, n_items)
    data = inputs.write({"data": [{"RATINGS": {"content": [float(v) for v in r], "shape": [len(r)]}} for r in x]},
                        folder / "data.json")
    flops = baselines.flops_per_user(onnx_path)
    with TritonServer(repo, build_dir=ROOT / "build" / "triton", log=folder / "server.log") as server:
        loaded = rss_mb(server.process.pid)
        shm = ("--shared-memory", "system", "-H", f"{ADMIN_HEADER}:{server.admin_key}")
        r = analyzer.run(name, server.http_url, "http", data, folder / "w.csv", batch=64, concurrency="2",
                         interval_ms=interval_ms, extra=shm)
        after = rss_mb(server.process.pid)
    roof = baselines.gemm_peak_gflops(seconds=1.0)
    users_s = max(row.throughput for row in r.rows)
    return {"items": n_items, "onnx_mb": round(onnx_path.stat().st_size / 2**20, 1),
            "mflop_per_user": round(flops / 1e6, 1), "users_per_s": round(users_s, 1),
            "gflop_s": round(users_s * flops / 1e9, 1), "roof_gflop_s": round(roof, 1),
            "roof_fraction": round(users_s * flops / 1e9 / roof, 3),
            "server_rss_mb_loaded": round(loaded, 1), "server_rss_mb_after": round(after, 1),
            "steal": None if r.steal is None else round(r.steal, 4)}


def main() -> None:
    """`make bench-items`: one JSON line per catalogue size."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", default=DEFAULT_ITEMS, help="comma-separated catalogue sizes")
    ap.add_argument("--interval-ms", type=int, default=2000, help="perf_analyzer's measurement window")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(v) for v in args.items.split(",")):
            print(json.dumps(measure(n, Path(tmp), args.interval_ms)), flush=True)


if __name__ == "__main__":
    main()
