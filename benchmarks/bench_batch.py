"""Batch recommendations' throughput and memory: `python -m benchmarks.bench_batch`.

Two catalogues: ML-100K u1 (EASE, trained here in a second) and a synthetic interaction log
(builder.data.synthetic.synthetic_log: string ids, power-law item popularity; by default 200k
users x 20k items, 4M events) with a Mult-DAE run folder over it holding its initial weights
(the cost of a batch job depends on the shapes, not on the values). Each `aerec batch` job
runs in a fresh process (builder.batch.batch_recommend, Parquet out) and records wall seconds,
users/s and the process's peak RSS (VmHWM, imports and the loaded run included), per chunk size
and, on the log, for a tenth of the users beside all of them: with chunks the peak follows the
chunk, not the number of users.

    python -m benchmarks.bench_batch --out /tmp/bench_batch
    python -m benchmarks.bench_batch --out /tmp/bench_batch --users 20000 --items 5000 --events 400000   # quick
    python -m benchmarks.bench_batch --out /tmp/bench_ray --users 20000 --items 5000 --events 400000 \
        --chunk-sizes 1024 --engines local,ray
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

PROBE = """
import json, sys, time
from builder.batch import batch_recommend
run, out, chunk, users = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] or None
start = time.perf_counter()
m = batch_recommend(run, out, users_file=users, chunk_size=chunk, progress=False)
seconds = time.perf_counter() - start
hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))
print(json.dumps({"seconds": seconds, "peak_rss_mb": hwm / 1024, "users": m["users"], "rows": m["rows"]}))
"""

RAY_PROBE = """
import json, sys, time
import ray
from ray.cluster_utils import Cluster
from builder.batch_ray import batch_recommend_ray
run, out, chunk, nodes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
try:
    for _ in range(nodes):
        c.add_node(num_cpus=1)
    c.wait_for_nodes()
    start = time.perf_counter()
    m = batch_recommend_ray(run, out, chunk_size=chunk, address=c.address, progress=False)
    seconds = time.perf_counter() - start
finally:
    ray.shutdown()
    c.shutdown()
print(json.dumps({"seconds": seconds, "users": m["users"], "rows": m["rows"], "peak_rss_mb": None,
                  "ray_seconds": m["ray_seconds"]}))
"""


def measure_ray(run: Path, out: Path, chunk_size: int, nodes: int) -> dict:
    """One `--engine ray` job in a fresh interpreter on a local cluster of `nodes` one-CPU worker
    nodes: seconds (the job, the cluster's start excluded), ray_seconds (of which the actors' start,
    ranking and Ray's write) and users/s; no peak RSS (the work is in other processes). The run's
    graph must be exported already (builder.batch_ray.served_graph)."""
    r = subprocess.run([sys.executable, "-c", RAY_PROBE, str(run), str(out), str(chunk_size), str(nodes)],
                       capture_output=True, text=True, check=True)
    got = json.loads(r.stdout.strip().splitlines()[-1])
    got.update(chunk_size=chunk_size, users_per_s=got["users"] / got["seconds"], engine=f"ray x{nodes}")
    return got


def actor_rate(run: Path, chunk_size: int) -> dict:
    """What one `--engine ray` actor ranks per second on one core, without Ray around it:
    builder.batch_ray.RankShard (one ONNX Runtime thread) called here on every user of `run`,
    `chunk_size` at a time, its session's start excluded."""
    import numpy as np
    from builder.batch import _default_titles
    from builder.batch_ray import RankShard, ShardInputs, served_graph
    from builder.config import TrainConfig
    from builder.models.popularity import item_counts
    from builder.run_folder import load_run_dataset
    d = load_run_dataset(run)
    titles = np.array(d.titles, dtype=object) if d.titles != _default_titles(d.item_ids) else None
    shard = RankShard(ShardInputs(served_graph(run).read_bytes(), d.train.tocsr(), d.user_ids, d.item_ids, titles,
                                  item_counts(d.train), TrainConfig.load(run / "config.json")), top_k=10)
    users = np.arange(d.n_users, dtype=np.int64)
    start = time.perf_counter()
    rows = sum(shard({"user": users[s:s + chunk_size]}).num_rows for s in range(0, len(users), chunk_size))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "users": d.n_users, "rows": rows, "peak_rss_mb": None, "chunk_size": chunk_size,
            "users_per_s": d.n_users / seconds, "engine": "1 actor"}


def ray_rows(run: Path, out: Path, name: str, model: str, chunk_size: int, node_counts: list[int]) -> list[dict]:
    """`--engine ray` jobs over every user of `run`, one per worker-node count, after one actor's
    rate on one core (actor_rate: the figure a cluster multiplies)."""
    from builder.batch_ray import served_graph
    if not node_counts:
        return []
    served_graph(run)
    jobs = [dict(measure_ray(run, out / f"ray-{run.name}-{n}.parquet", chunk_size, n), data=name, model=model)
            for n in node_counts]
    return [dict(actor_rate(run, chunk_size), data=name, model=model)] + jobs


def measure(run: Path, out: Path, chunk_size: int, users_file: Path | None = None) -> dict:
    """One batch job in a fresh interpreter: seconds (the job, imports excluded), users/s and peak
    RSS in MB (the whole process)."""
    r = subprocess.run([sys.executable, "-c", PROBE, str(run), str(out), str(chunk_size), str(users_file or "")],
                       capture_output=True, text=True, check=True)
    got = json.loads(r.stdout.strip().splitlines()[-1])
    got.update(chunk_size=chunk_size, users_per_s=got["users"] / got["seconds"], engine="local")
    return got


def train(changes: dict, out: Path) -> float:
    """Train a run folder (skipped when `out` already holds one); returns the seconds taken."""
    from builder.stages import train_run
    if (out / "weights.safetensors").is_file():
        return 0.0
    start = time.perf_counter()
    train_run(changes, out, progress=False)
    return time.perf_counter() - start


def bench_ml100k(out: Path, chunk_sizes: list[int], ray_nodes: list[int] = ()) -> list[dict]:
    """EASE on ML-100K u1, one job per chunk size (and per Ray worker-node count)."""
    run = out / "ml100k-ease"
    train({"model": "ease", "device": "cpu"}, run)
    rows = [dict(measure(run, out / f"ml100k-{c}.parquet", c), data="ml-100k u1", model="ease")
            for c in chunk_sizes]
    return rows + ray_rows(run, out, "ml-100k u1", "ease", max(chunk_sizes), list(ray_nodes))


def untrained_run(log: Path, model: str, hidden: int, out: Path) -> float:
    """A run folder of `model` over the log (split per user) holding its initial weights, not
    trained ones: a batch job's cost depends on the shapes, not the values, and training and
    evaluating (dense users x items test scores) at this size is a job of its own. Returns the
    seconds taken (load, split, save)."""
    from builder.config import TrainConfig
    from builder.data.sources import load_dataset
    from builder.run_folder import save_run
    from builder.train import TrainResult, make_model
    if (out / "weights.safetensors").is_file():
        return 0.0
    start = time.perf_counter()
    config = TrainConfig(model=model, hidden=[hidden], data=str(log), split="per-user", device="cpu")
    dataset = load_dataset(config.data, config.split, config.seed)
    net = make_model(config, dataset.n_items)
    save_run(TrainResult(net.eval(), config, {"weights": "initial (untrained)"}, []), dataset, out)
    return time.perf_counter() - start


def bench_log(out: Path, users: int, items: int, events: int, model: str, hidden: int,
              chunk_sizes: list[int], ray_nodes: list[int] = ()) -> tuple[list[dict], dict]:
    """A top-N model over a synthetic log; jobs per chunk size over every user, and one over a
    tenth of the users at the largest chunk size."""
    from builder.data.synthetic import synthetic_log, write_log
    from builder.run_folder import load_run_dataset
    log = out / f"log-{users}x{items}-{events}.parquet"
    if not log.is_file():
        write_log(synthetic_log(users, items, events, seed=0), log)
    run = out / f"log-{model}-{users}x{items}"
    seconds = untrained_run(log, model, hidden, run)
    d = load_run_dataset(run)
    name = f"synthetic log {d.n_users} users x {d.n_items} items"
    rows = [dict(measure(run, out / f"log-{c}.parquet", c), data=name, model=model) for c in chunk_sizes]
    tenth = out / "tenth.txt"
    tenth.write_text("\n".join(map(str, d.user_ids[:: 10].tolist())) + "\n")
    rows.append(dict(measure(run, out / "log-tenth.parquet", max(chunk_sizes), tenth), data=name + " (a tenth)",
                     model=model))
    rows += ray_rows(run, out, name, model, max(chunk_sizes), list(ray_nodes))
    return rows, {"setup_seconds": seconds, "users": d.n_users, "items": d.n_items, "train_entries": int(d.train.nnz)}


def csr_run(users: int, items: int, per_user: int, model: str, hidden: int, out: Path,
            test_users: int = 1000) -> float:
    """A run folder of `model` (initial weights) over a users x items interaction matrix built
    straight into CSR (builder.data.synthetic.synthetic_csr_rows: Zipf items, log-normal activity,
    about `per_user` items a user; every entry a positive of an implicit log). Only the first
    `test_users` users hold out one item each as the test split: a full per-user split would hold
    a test row for every user, and exporting the run (the Triton comparison) densifies every test
    user. Memory: the CSR arrays, never users x items. Returns the seconds taken."""
    import numpy as np
    import scipy.sparse as sp
    from builder.config import TrainConfig
    from builder.data.dataset import Dataset
    from builder.data.synthetic import synthetic_csr_rows
    from builder.run_folder import save_run
    from builder.train import TrainResult, make_model
    if (out / "weights.safetensors").is_file():
        return 0.0
    start = time.perf_counter()
    m = synthetic_csr_rows(users, items, users * per_user, seed=0)
    m.data[:] = 1.0
    held = np.zeros(m.shape[0], bool)
    held[:test_users] = np.diff(m.indptr)[:test_users] > 1
    last = m.indptr[1:][held] - 1                       # each held-out user's last entry
    test = sp.csr_matrix((np.ones(len(last), np.float32), (np.flatnonzero(held), m.indices[last])), shape=m.shape)
    keep = np.ones(m.nnz, bool)
    keep[last] = False
    train = sp.csr_matrix((m.data[keep], m.indices[keep], np.concatenate([[0], np.cumsum(np.diff(m.indptr)
                                                                                          - held)])), shape=m.shape)
    del m
    dataset = Dataset(train, test, np.arange(users, dtype=np.int64), np.arange(items, dtype=np.int64),
                      [f"item {i}" for i in range(items)], (1.0, 1.0), f"synthetic-csr-{users}x{items}-{per_user}",
                      "synthetic", "implicit")
    config = TrainConfig(model=model, hidden=[hidden], device="cpu")
    net = make_model(config, items)
    save_run(TrainResult(net.eval(), config, {"weights": "initial (untrained)"}, []), dataset, out)
    return time.perf_counter() - start


def bench_rss(out: Path, counts: list[int], items: int, per_user: int, model: str, hidden: int,
              chunk_size: int, run_users: int | None = None) -> tuple[list[dict], dict]:
    """Peak RSS of the local engine as the users scored grow: one run folder of max(counts) users
    (csr_run), then one job per count over that many users spread evenly over it (`--users`
    file; a count of every user has no file). `run_users`: the run's users (default the largest
    count). The run's data set is loaded whole by every job, so what grows with users is the
    job, not the data. Each result is also written to rss-<count>.json as it comes."""
    import numpy as np
    from builder.run_folder import load_run_dataset
    top = run_users or max(counts)
    run = out / f"csr-{model}-{top}x{items}"
    seconds = csr_run(top, items, per_user, model, hidden, run)
    d = load_run_dataset(run)
    info = {"setup_seconds": seconds, "run_users": d.n_users, "run_items": d.n_items,
            "train_entries": int(d.train.nnz)}
    del d
    rows = []
    for n in counts:
        users = None
        if n < top:
            users = out / f"users-{n}.txt"
            users.write_text("\n".join(map(str, np.linspace(0, top - 1, n).astype(np.int64).tolist())) + "\n")
        got = measure(run, out / f"csr-{n}.parquet", chunk_size, users)
        rows.append(dict(got, data=f"synthetic {top} users x {items} items", model=model))
        print(json.dumps(rows[-1]), flush=True)
        (out / f"rss-{n}.json").write_text(json.dumps({**rows[-1], **info}, indent=2))
    return rows, info


def served_rate(run: Path, out: Path, users: list, k: int = 10, rows: int = 64) -> dict:
    """The same users through the embedded Triton server's `recommend` (the run exported in fp32,
    a repository without a rater, started from this checkout's build/triton), `rows` user ids a
    request (serving.contract.MAX_ROWS), one request in flight: seconds (a warm-up request
    excluded, as the local engine's imports are), users/s. The lists are checked to hold k items."""
    from builder.batch_ray import served_graph
    from builder.repository import write_repository
    from client import RecommenderClient
    from server.launcher import ROOT, TritonServer
    served_graph(run)
    repo = out / f"repo-{run.name}"
    if not repo.exists():
        write_repository(run, repo, ["onnx"])
    with TritonServer(repo, build_dir=ROOT / "build" / "triton", log=out / f"server-{run.name}.log") as server:
        rc = RecommenderClient(server.grpc_url)
        ask = lambda ids: rc._parse_rows(rc._infer(rc._tensors(ids, None, k)), k)  # noqa: E731
        ask(users[:rows])
        start = time.perf_counter()
        got = [rec for lo in range(0, len(users), rows) for rec in ask(users[lo:lo + rows])]
        seconds = time.perf_counter() - start
    assert len(got) == len(users) and all(len(r.item_ids) == k for r in got)
    return {"seconds": seconds, "users": len(users), "users_per_s": len(users) / seconds, "engine": "triton",
            "chunk_size": rows, "peak_rss_mb": None, "rows": len(users) * k}


def local_vs_served(run: Path, out: Path, name: str, model: str, n_users: int | None, chunk_size: int) -> list[dict]:
    """The local engine (a fresh process, as measure) and the Triton server over the same users
    (every user, or `n_users` spread evenly), interleaved local, served, local; the ratio is the
    served users/s over the mean of the two local runs."""
    import numpy as np
    from builder.run_folder import load_run_dataset
    d = load_run_dataset(run)
    pick = np.arange(d.n_users) if not n_users or n_users >= d.n_users else np.linspace(
        0, d.n_users - 1, n_users).astype(np.int64)
    ids = d.user_ids[pick].tolist()
    users_file = out / f"served-users-{run.name}-{len(ids)}.txt"
    users_file.write_text("\n".join(map(str, ids)) + "\n")
    del d
    first = measure(run, out / f"vs-{run.name}-a.parquet", chunk_size, users_file)
    served = served_rate(run, out, ids)
    second = measure(run, out / f"vs-{run.name}-b.parquet", chunk_size, users_file)
    local_rate = (first["users_per_s"] + second["users_per_s"]) / 2
    served["ratio_local_over_served"] = local_rate / served["users_per_s"]
    return [dict(r, data=name, model=model) for r in (first, served, second)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_batch"))
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--events", type=int, default=4_000_000)
    ap.add_argument("--model", default="mult-dae", help="the top-N model trained on the log")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--chunk-sizes", default="1024,4096")
    ap.add_argument("--skip-log", action="store_true", help="ML-100K only")
    ap.add_argument("--engines", default="local", help="local, or local,ray for `--engine ray` jobs too")
    ap.add_argument("--ray-nodes", default="1,2", help="worker-node counts (one CPU each) of the Ray jobs")
    ap.add_argument("--rss-users", default="", help="user counts of the peak-RSS jobs (e.g. "
                    "10000,100000,300000,1000000): one run of the largest, --users files for the rest")
    ap.add_argument("--rss-per-user", type=int, default=20, help="items a user in the peak-RSS run")
    ap.add_argument("--rss-run-users", type=int, default=None, help="users of the peak-RSS run (default: the "
                    "largest count)")
    ap.add_argument("--served", default="", help="local engine vs the Triton server at 64 users a request: "
                    "ml100k, and/or csr:N (N users of the --rss-run-users run, built as for --rss-users)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.served:
        rows = []
        for what in args.served.split(","):
            if what == "ml100k":
                run = args.out / "ml100k-ease"
                train({"model": "ease", "device": "cpu"}, run)
                rows += local_vs_served(run, args.out, "ml-100k u1", "ease", None, 1024)
            else:
                n = int(what.partition(":")[2])
                top = args.rss_run_users or n
                run = args.out / f"csr-{args.model}-{top}x{args.items}"
                csr_run(top, args.items, args.rss_per_user, args.model, args.hidden, run)
                rows += local_vs_served(run, args.out, f"synthetic {top} users x {args.items} items", args.model, n,
                                        1024)
            (args.out / "served.json").write_text(json.dumps(rows, indent=2))
        for r in rows:
            extra = f"  local/served x{r['ratio_local_over_served']:.2f}" if "ratio_local_over_served" in r else ""
            print(f"{r['data']:<40} {r['engine']:<7} {r['users']:>8} users {r['seconds']:8.2f} s "
                  f"{r['users_per_s']:9.0f} users/s{extra}")
        return
    if args.rss_users:
        rows, info = bench_rss(args.out, [int(n) for n in args.rss_users.split(",")], args.items, args.rss_per_user,
                               args.model, args.hidden, min(int(c) for c in args.chunk_sizes.split(",")),
                               args.rss_run_users)
        for r in rows:
            print(f"{r['users']:>8} users  {r['seconds']:8.1f} s  {r['users_per_s']:7.0f} users/s  "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB")
        print(json.dumps(info))
        return
    chunks = [int(c) for c in args.chunk_sizes.split(",")]
    engines = {e.strip() for e in args.engines.split(",")}
    nodes = [int(n) for n in args.ray_nodes.split(",")] if "ray" in engines else []
    rows = bench_ml100k(args.out, chunks, nodes)
    report = {"ml100k": rows}
    if not args.skip_log:
        log_rows, info = bench_log(args.out, args.users, args.items, args.events, args.model, args.hidden, chunks,
                                   nodes)
        rows += log_rows
        report["log"] = {"rows": log_rows, **info}
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    print(f"{'data':<48} {'model':<9} {'engine':<8} {'chunk':>6} {'users':>8} {'seconds':>8} {'users/s':>9} "
          f"{'peak RSS MB':>12} {'in Ray s':>9}")
    for r in rows:
        rss = "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
        print(f"{r['data']:<48} {r['model']:<9} {r['engine']:<8} {r['chunk_size']:>6} {r['users']:>8} "
              f"{r['seconds']:>8.1f} {r['users_per_s']:>9.0f} {rss:>12} {r.get('ray_seconds') or '-':>9}")
    if "log" in report:
        print(f"log run: {report['log']['train_entries']} training entries (initial weights)")


if __name__ == "__main__":
    main()
