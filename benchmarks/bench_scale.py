"""One epoch of the deep autoencoder on a synthetic Netflix-like set: `python -m benchmarks.bench_scale`.

48,000 users x 17,770 items, 10M ratings by default (a tenth of Netflix's users, all of its
items); the DeepRecommender paper's layers n-512-512-1024 with dense re-feeding. Prints the
epoch time and the process's peak RSS; the matrix is never made dense.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from builder.config import TrainConfig
from builder.data.synthetic import synthetic_ratings
from builder.presets import preset
from builder.train import make_optimizer, make_model, run_epoch


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB (getrusage)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    """`make bench-scale`: seconds per epoch and peak memory on synthetic Netflix-sized data."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=48_000)
    ap.add_argument("--items", type=int, default=17_770)
    ap.add_argument("--ratings", type=int, default=10_000_000)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    t = time.perf_counter()
    matrix = synthetic_ratings(args.users, args.items, args.ratings, seed=0)
    gen_s = time.perf_counter() - t
    rss_data = peak_rss_mb()
    config = TrainConfig().updated(**preset("deeprec-paper"), device=args.device)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = make_model(config, args.items).to(device)
    opt = make_optimizer(config, model.parameters())
    t = time.perf_counter()
    gen = torch.Generator(device=device).manual_seed(0)
    loss = run_epoch(model, opt, matrix, config, np.random.default_rng(0), gen, device)
    epoch_s = time.perf_counter() - t
    dense_gb = args.users * args.items * 4 / 1e9
    print(json.dumps({
        "users": args.users, "items": args.items, "ratings": int(matrix.nnz), "device": args.device,
        "generate_s": round(gen_s, 1), "epoch_s": round(epoch_s, 1), "train_rmse": round(float(np.sqrt(loss)), 4),
        "peak_rss_mb": round(peak_rss_mb(), 0), "rss_after_data_mb": round(rss_data, 0),
        "dense_matrix_would_be_gb": round(dense_gb, 2), "limit_mb": 4096,
        "within_limit": peak_rss_mb() <= 4096,
    }, indent=2))


if __name__ == "__main__":
    main()
