"""Data-parallel epoch of the deep autoencoder at Netflix size: `python -m benchmarks.bench_distributed`.

480,189 users x 17,770 items, 100,480,507 ratings (Netflix's figures) by default, synthetic,
generated straight into CSR, each rank building only its own block of users
(builder.data.synthetic.synthetic_csr_rows). DeepRecommender's network (n-512-512-1024, SELU,
dropout 0.8, dense re-feeding: the `deeprec-paper` preset) is trained for one epoch inside
DistributedDataParallel under torchrun, for each --nproc; each rank's step is its rows of a
global batch of --batch-size (batch / N per rank), through builder.train.train_step.

Prints JSON: per run, seconds to generate and to train, peak RSS of every rank (getrusage
ru_maxrss, gathered to rank 0). --sweep adds smaller user counts (ratings per user kept) so the
growth of time and memory with users and ranks can be fitted. --steps K times K steps and
projects the epoch (marked "projected": true); --users/--ratings scale down for quick runs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NETFLIX = dict(users=480_189, items=17_770, ratings=100_480_507)
CHUNK = 1024  # users per generator block: shard bounds fall on block edges


def peak_rss_gb() -> float:
    """This process's peak resident memory, GB (Linux's ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _worker(args) -> None:
    """One rank: build this rank's users, train one epoch in DDP, gather figures to rank 0."""
    import numpy as np
    import torch

    from builder import distributed
    from builder.config import TrainConfig
    from builder.data.synthetic import synthetic_csr_rows
    from builder.presets import preset
    from builder.predict import dense_rows
    from builder.train import make_model, make_optimizer, train_step

    w = distributed.setup("cpu")
    blocks = math.ceil(args.users / CHUNK)
    b0, b1 = distributed.shard_range(blocks, w)  # whole generator blocks per rank
    start, stop = b0 * CHUNK, min(b1 * CHUNK, args.users)
    t = time.perf_counter()
    matrix = synthetic_csr_rows(args.users, args.items, args.ratings, start, stop, seed=args.seed, chunk=CHUNK)
    gen_s = time.perf_counter() - t
    rss_data = peak_rss_gb()
    config = TrainConfig().updated(**{**preset("deeprec-paper"), "batch_size": args.batch_size}, device="cpu",
                                   seed=args.seed)
    torch.manual_seed(config.seed)
    model = make_model(config, args.items)
    net = distributed.wrap(model, "cpu")
    torch.manual_seed(config.seed + 7919 * w.rank)
    optimizer = make_optimizer(config, model.parameters())
    gen = torch.Generator().manual_seed(config.seed + w.rank)
    rng = np.random.default_rng([config.seed, w.rank])
    rows = np.flatnonzero(np.diff(matrix.indptr) > 0)
    rng.shuffle(rows)
    per_rank = max(1, args.batch_size // w.size)
    # Every rank takes the same number of steps (DDP's all-reduce is collective): the largest shard's.
    steps = total_steps = max(distributed.gather(math.ceil(len(rows) / per_rank)))
    if args.steps:
        steps = min(steps, args.steps)
    n_ratings = int(distributed.all_sum([matrix.nnz])[0])
    distributed.barrier()
    t = time.perf_counter()
    for s in range(steps):
        x = dense_rows(matrix, rows[s * per_rank:(s + 1) * per_rank], "cpu")
        train_step(model, optimizer, x, config, gen, n_ratings, net=net)
    distributed.barrier()
    train_s = time.perf_counter() - t
    mine = {"rank": w.rank, "users": stop - start, "ratings": int(matrix.nnz), "generate_s": round(gen_s, 2),
            "train_s": round(train_s, 2), "peak_rss_gb_after_data": round(rss_data, 3),
            "peak_rss_gb": round(peak_rss_gb(), 3), "threads": torch.get_num_threads()}
    ranks = distributed.gather(mine)
    if w.main:
        epoch_s = train_s * total_steps / steps if steps else 0.0
        Path(args.result).write_text(json.dumps({
            "nproc": w.size, "users": args.users, "items": args.items, "ratings": n_ratings,
            "batch_size": args.batch_size, "steps": steps, "steps_per_epoch": total_steps,
            "projected": steps < total_steps, "epoch_s": round(epoch_s, 2),
            "users_per_s": round(args.users / epoch_s, 1) if epoch_s else None,
            "max_peak_rss_gb": max(r["peak_rss_gb"] for r in ranks), "ranks": ranks}))
    distributed.teardown()


def run_once(nproc: int, users: int, items: int, ratings: int, batch_size: int, steps: int, seed: int) -> dict:
    """One epoch (or `steps` steps) in `nproc` ranks under torchrun; the rank-0 JSON as a dict.
    Raises RuntimeError with the launcher's output when the job fails."""
    from builder.distributed import torchrun_command
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = torchrun_command(nproc, "benchmarks.bench_distributed",
                               ["--worker", "--result", str(result), "--users", str(users), "--items", str(items),
                                "--ratings", str(ratings), "--batch-size", str(batch_size), "--steps", str(steps),
                                "--seed", str(seed)])
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode or not result.is_file():
            raise RuntimeError(f"torchrun with {nproc} ranks failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
        return json.loads(result.read_text())


def main() -> None:
    """`make bench-distributed`: one data-parallel epoch per --nproc, as JSON on stdout."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", default="1,2", help="rank counts to run, comma separated")
    ap.add_argument("--users", type=int, default=NETFLIX["users"])
    ap.add_argument("--items", type=int, default=NETFLIX["items"])
    ap.add_argument("--ratings", type=int, default=NETFLIX["ratings"])
    ap.add_argument("--batch-size", type=int, default=128, help="global batch (each rank: batch / nproc)")
    ap.add_argument("--steps", type=int, default=0, help="time this many steps and project the epoch (0: all)")
    ap.add_argument("--sweep", default="", help="also these user counts, e.g. 60000,120000,240000 "
                    "(ratings scaled with users)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args)
        return
    sizes = [args.users] + [int(u) for u in args.sweep.split(",") if u]
    runs = []
    for users in sizes:
        ratings = round(args.ratings * users / args.users)
        for nproc in (int(n) for n in args.nproc.split(",")):
            run = run_once(nproc, users, args.items, ratings, args.batch_size, args.steps, args.seed)
            print(json.dumps(run), file=sys.stderr, flush=True)
            runs.append(run)
    report = {"network": "deeprec-paper: n-512-512-1024 SELU, dropout 0.8, dense re-feeding, SGD",
              "cpus": os.cpu_count(), "runs": runs}
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
