"""Top-N models on large catalogues: `python -m benchmarks.bench_catalogue` (`make bench-catalogue`).

Synthetic logs (builder.data.synthetic.synthetic_csr_rows: Zipf item popularity, log-normal user
activity, rank-8 tastes; every event a positive) at each catalogue size, for each of `--models`:
ease-lowrank (closed form on a rank-r randomized SVD), ELSA trained by the top-N loop (early
stopping on NDCG@100, no refit) and EASE (closed form), validated on 20% of each user's events.
EASE runs where its n x n fit stays under `--ease-max-gb`; above it the case's line is EASE's
refusal. Per case, in its own process (so the peak RSS is the case's): train seconds, peak RSS
(resource.getrusage) and its growth during training, weights and ONNX size, validation
recall@10 / NDCG@100, and the exported graph as the fused `recommend` model serves it
(serving.ranking_graph.with_top_k, then the sparse first product of serving/sparse_input.py) at
one user per request in ONNX Runtime, one thread: users/s, p50 and p99 latency, against the same
graph with the dense first product. With `--triton`, the trained model is also saved as a run,
exported, written to a model repository and served by the embedded Triton server: `recommend`
requests for one known user each (gRPC, one at a time), users/s, p50 and p99. One JSON line per
case.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

MODELS = ("ease-lowrank", "elsa", "ease")


def peak_rss_mb() -> float:
    """This process's peak resident set so far, MB (Linux reports ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """This process's resident set now, MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def serve_latency(onnx_path: Path, rows, sparse: bool, requests: int) -> dict:
    """users/s, p50 and p99 ms of the fused graph (network + top-10) at one user per request, one
    ONNX Runtime thread, over `requests` real histories (csr rows, raw values)."""
    import onnx

    from builder.export import ort_session
    from serving.ranking_graph import with_top_k
    from serving.sparse_input import with_sparse_first_product
    graph = with_top_k(onnx.load(str(onnx_path)))
    rewritten = with_sparse_first_product(graph) if sparse else False
    session = ort_session(graph, threads=1)
    name = session.get_inputs()[0].name
    k = np.array([10], np.int64)
    xs = [rows[i].toarray().astype(np.float32) for i in range(min(requests, rows.shape[0]))]
    for x in xs[:5]:
        session.run(None, {name: x, "K": k})
    times = []
    for x in xs:
        t = time.perf_counter()
        session.run(None, {name: x, "K": k})
        times.append(time.perf_counter() - t)
    times = np.array(times)
    return {"sparse_first_product": bool(rewritten), "users_per_s": round(len(times) / times.sum(), 1),
            "p50_ms": round(float(np.percentile(times, 50)) * 1e3, 2),
            "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 2)}


def serve_triton(trained, config, matrix, metrics: dict, requests: int, folder: Path) -> dict:
    """Save `trained` (fitted on `matrix`, users x items) as a run, export it (fp32, compared on 64
    sampled users), write a model repository and serve it in the embedded Triton server; time
    `requests` `recommend` calls (gRPC, top 10, one known user each, one at a time, after 5 warm-up
    calls). Returns users/s, p50 and p99 ms."""
    from builder.data.dataset import Dataset
    from builder.export import ExportConfig, export_run
    from builder.repository import write_repository
    from builder.run_folder import save_run
    from builder.train import TrainResult
    from client.sdk import RecommenderClient
    from server.launcher import TritonServer
    n_users, n_items = matrix.shape
    test = validation_split_holdout(matrix, config)
    dataset = Dataset(matrix, test, np.arange(n_users), np.arange(n_items), [f"item {i}" for i in range(n_items)],
                      (1.0, float(matrix.data.max())), f"synthetic-{n_items}", f"synthetic {n_users}x{n_items}",
                      "implicit")
    run = save_run(TrainResult(trained, config, metrics), dataset, folder / "run")
    export_run(run, ExportConfig(precisions=["fp32"], max_test_rows=64), bench_seconds=0.05)
    write_repository(run, folder / "repo", ["onnx"])
    users = np.random.default_rng(0).choice(np.flatnonzero(np.diff(matrix.indptr) > 0), requests + 5)
    with TritonServer(folder / "repo", log=folder / "server.log") as server:
        client = RecommenderClient(server.grpc_url)
        times = []
        for i, user in enumerate(users):
            t = time.perf_counter()
            client.recommend(user_id=int(user), k=10)
            if i >= 5:
                times.append(time.perf_counter() - t)
    times = np.array(times)
    return {"users_per_s": round(len(times) / times.sum(), 1),
            "p50_ms": round(float(np.percentile(times, 50)) * 1e3, 2),
            "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 2)}


def validation_split_holdout(matrix, config):
    """The hidden part of `matrix`'s top-N validation split: the served run's test set (what
    export_run compares ONNX Runtime and PyTorch on)."""
    from builder.topn import validation_split_top_n
    return validation_split_top_n(matrix, config)[1]


def run_case(model: str, n_items: int, n_users: int, n_events: int, rank: int, lr: float, epochs: int,
             requests: int, lam: float = 500.0, ease_max_gb: float = 8.0, triton: bool = False,
             val_users: int = 0) -> dict:
    """One (model, catalogue) case in this process; see the module docstring. The closed forms
    (EASE, ease-lowrank) are fitted once, on the visible part of the validation split: that fit is
    validated, exported and served (train_top_n would fit them a second time on every event).
    `val_users` > 0: validation scores that many users, a sample drawn with seed 0 (the same for
    every model of a catalogue size), else all."""
    import torch

    from builder.config import TrainConfig
    from builder.data.synthetic import synthetic_csr_rows
    from builder.export import export_onnx_fp32
    from builder.models.ease import check_ease_memory
    from builder.topn import CLOSED_FORM, fit_closed_form, train_top_n, validation_metrics, validation_split_top_n
    torch.set_num_threads(2)
    matrix = synthetic_csr_rows(n_users, n_items, n_events, seed=0)
    own = {"elsa": {"elsa_rank": rank, "lr": lr}, "ease-lowrank": {"svd_rank": rank, "ease_lambda": lam},
           "ease": {"ease_lambda": lam, "ease_max_gb": ease_max_gb}}[model]
    config = TrainConfig(device="cpu").updated(
        model=model, implicit_threshold=0.0, relevant_threshold=0.0, batch_size=512, epochs=epochs, patience=2,
        refit=False, **own)
    before = current_rss_mb()
    start = time.perf_counter()
    if model in CLOSED_FORM:
        if model == "ease":  # refuse before any work
            check_ease_memory(n_items, ease_max_gb)
        visible, hidden = validation_split_top_n(matrix, config)
        if val_users:
            users = np.flatnonzero(np.diff(hidden.indptr) > 0)
            keep = np.zeros(n_users)
            keep[np.random.default_rng(0).choice(users, min(val_users, len(users)), replace=False)] = 1.0
            hidden = sp.csr_matrix(sp.diags(keep) @ hidden)
            hidden.eliminate_zeros()
        trained = fit_closed_form(config, visible)
        fit_seconds = time.perf_counter() - start
        metrics = {f"val_{k}": v for k, v in validation_metrics(trained, visible, hidden, config, "cpu").items()}
        metrics.update(epochs_run=0, best_epoch=0, fit_s=round(fit_seconds, 1))
    else:
        trained, metrics, history = train_top_n(config, matrix, "cpu", progress=False)
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    weights = sum(t.numel() for t in [*trained.parameters(), *trained.buffers()])
    out = {"model": model, "items": n_items, "users": n_users, "events": int(matrix.nnz),
           "rank": rank if model != "ease" else None, "lr": lr if model == "elsa" else None,
           "lambda": lam if model != "elsa" else None,
           "train_s": round(seconds, 1), "fit_s": metrics.get("fit_s"), "val_users": val_users or None,
           "epochs_run": metrics["epochs_run"], "best_epoch": metrics["best_epoch"],
           "val_recall@10": round(metrics["val_recall@10"], 4), "val_ndcg@100": round(metrics["val_ndcg@100"], 4),
           "rss_before_train_mb": round(before, 0), "peak_rss_mb": round(peak, 0),
           "train_rss_growth_mb": round(peak - before, 0), "weights_mb": round(4 * weights / 2**20, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx_fp32(trained, n_items, path)
        out["onnx_mb"] = round(path.stat().st_size / 2**20, 1)
        visible, _ = validation_split_top_n(matrix, config)
        out["served_sparse"] = serve_latency(path, visible, True, requests)
        out["served_dense"] = serve_latency(path, visible, False, requests)
        if triton:
            out["triton"] = serve_triton(trained, config, matrix, metrics, requests, Path(tmp))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", default="10000,100000", help="catalogue sizes, comma-separated")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--lam", type=float, default=500.0, help="EASE's and ease-lowrank's lambda")
    ap.add_argument("--ease-max-gb", type=float, default=8.0, help="EASE refuses a fit peaking above this")
    ap.add_argument("--val-users", type=int, default=0, help="closed forms: validate on a sample of this many "
                    "users (0: all)")
    ap.add_argument("--triton", action="store_true", help="also serve each case through the embedded Triton")
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--events-per-user", type=float, default=40.0)
    ap.add_argument("--rank", type=int, default=64, help="ELSA's and ease-lowrank's rank")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--case", help=argparse.SUPPRESS)  # "model:items": run one case in this process
    args = ap.parse_args()
    if args.case:
        model, n = args.case.split(":")
        print(json.dumps(run_case(model, int(n), args.users, int(args.users * args.events_per_user), args.rank,
                                  args.lr, args.epochs, args.requests, args.lam, args.ease_max_gb, args.triton,
                                  args.val_users)),
              flush=True)
        return
    for n in (int(v) for v in args.items.split(",")):
        for model in args.models.split(","):
            cmd = [sys.executable, "-m", "benchmarks.bench_catalogue", "--case", f"{model}:{n}",
                   *[a for k, v in vars(args).items() if k not in ("case", "items", "models", "triton")
                     for a in (f"--{k.replace('_', '-')}", str(v))], *(["--triton"] if args.triton else [])]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(json.dumps({"model": model, "items": n, "error": done.stderr.strip().splitlines()[-1:]}),
                      flush=True)
            else:
                print(done.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
