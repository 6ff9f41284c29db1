"""Side by side, the serving knobs the README quotes: `python -m benchmarks.bench_knobs` (`make bench-knobs`).

- ONNX Runtime, one user per forward, on one and on two threads (each forward streams the
  served model's 5.4 MB of weights; one core's share of L2 is 2 MB);
- the stub supervisor's tick: reading only its known stubs vs enumerating every server thread;
- the fused pipeline's configurations, each measured as `aerec perf` tunes (c=16, 64 users per
  request, c=1), alternated `--rounds` times so a noisy minute hits every configuration alike;
  each row prints the stolen CPU share of its windows.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from builder.data.sources import load_dataset
from builder.export import ort_session
from builder.repository import Tuning, write_repository
from builder.run_folder import load_run
from perf import baselines, inputs
from perf.harness import Plan, ensure_runs, tune
from server.launcher import ROOT, TritonServer

CONFIGS = {
    "fused 2 x 1 thread": {"pipeline": "fused", "step_instances": 2, "ort_threads": 1},
    "fused 2 x 1 thread, no delay": {"pipeline": "fused", "step_instances": 2, "ort_threads": 1,
                                     "step_queue_delay_us": 0},
    "fused 1 x 2 spinning, no delay": {"pipeline": "fused", "step_instances": 1, "ort_threads": 2,
                                       "step_queue_delay_us": 0},
    "fused 1 x 2 sleeping, no delay": {"pipeline": "fused", "step_instances": 1, "ort_threads": 2,
                                       "step_queue_delay_us": 0, "ort_spinning": False},
    "fused 2 x 2 sleeping, no delay": {"pipeline": "fused", "step_instances": 2, "ort_threads": 2,
                                       "step_queue_delay_us": 0, "ort_spinning": False},
}


def one_user_latency(onnx_path: Path, x: np.ndarray, threads: int, n: int = 1000) -> float:
    """Median microseconds of one single-user forward."""
    return baselines.median_latency_us(ort_session(onnx_path, threads), x[:1], n)


def supervisor_ticks(server: TritonServer, n: int = 100) -> dict:
    """Milliseconds per supervisor tick: known stubs only, and a full rescan."""
    out = {}
    for label, full in (("known stubs", False), ("full rescan", True)):
        start = time.perf_counter()
        for _ in range(n):
            server.supervisor.scan(full)
        out[label] = (time.perf_counter() - start) / n * 1e3
    return out


def main() -> None:
    """`make bench-knobs`: what the module docstring lists, printed as a table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    run_dir = ensure_runs(None, None)[1]  # the deeprec rating model
    config, _ = load_run(run_dir)
    dataset = load_dataset(config.data, config.split, config.seed)
    users = inputs.held_out_users(dataset.test, dataset.train, 64)
    x = dataset.train[users].toarray().astype(np.float32)
    onnx = run_dir / "export" / "model_fp32.onnx"
    for threads in (1, 2):
        print(f"ONNX Runtime, one user per forward, {threads} thread(s): "
              f"{one_user_latency(onnx, x, threads):.0f} us (median)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        data = {"ratings": inputs.write(inputs.ensemble_ratings_data(dataset.train, dataset.item_ids, users),
                                        out / "ratings.json"),
                "user_ids": inputs.write(inputs.ensemble_user_data(dataset.user_ids, users), out / "ids.json")}
        repo = out / "model_repository"
        write_repository(run_dir, repo, ["onnx"])
        factory = lambda: TritonServer(repo, build_dir=ROOT / "build" / "triton", log=out / "server.log")  # noqa: E731
        with factory() as server:
            for label, ms in supervisor_ticks(server).items():
                print(f"stub supervisor tick, {label}: {ms:.2f} ms")
        plan = Plan.quick()
        plan.tunings = list(CONFIGS.values()) * args.rounds
        trials = tune(factory, repo, data, plan, out).trials
    labels = {str(Tuning(**c).to_dict()): name for name, c in CONFIGS.items()}
    print(f"\n{'configuration':32s} {'c=16 req/s':>10s} {'64/req users/s':>15s} {'c=1 req/s':>10s} "
          f"{'c=1 p50 ms':>10s} {'c=1 p99 ms':>10s}  steal (c=16 / 64 / c=1)")
    for t in trials:
        steal = " / ".join("?" if s is None else f"{s:.0%}" for s in t.steal)
        print(f"{labels[str(t.tuning)]:32s} {t.throughput:10,.0f} {t.batched_users_per_s:15,.0f} "
              f"{t.c1_req_per_s:10,.0f} {t.c1_p50_ms:10.2f} {t.c1_p99_ms:10.2f}  {steal}")

if __name__ == "__main__":
    main()
