"""One server or several on one machine: `python -m perf.bench_replicas` (`make bench-replicas`).

Serves the default pipeline (the `ease` ranker beside the `deeprec` rater, as `make perf`) from
one repository on 1 and on 2 replicas (server/replicas.py), drives each with the same closed-loop
load (the SDK over every replica, round-robin, one client per worker thread, the same total
concurrency, one known user per request) and writes JSON: users/s, p50/p99 latency (ms), errors,
the CPU share stolen by the host in the window, and each replica's memory from /proc (RSS and
PSS of tritonserver and of its Python stubs; PSS splits shared pages, so it sums across replicas).
On a 2-core machine a second replica adds little: both share the same two cores. `--rounds 2`
alternates the replica counts (1, 2, 1, 2) so that load from other work hits each alike; each
run also records the 1-minute load average.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from builder.data.sources import load_dataset
from builder.repository import write_repository
from builder.runs import load_run
from client import RecommenderClient
from perf.harness import ensure_runs
from perf.steal import Window
from server.launcher import ROOT, child_pids
from server.replicas import ReplicaSet


def _kib(pid: int, path: str, field: str) -> int:
    """One `field:   N kB` line of /proc/<pid>/<path>, in KiB; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def replica_memory(server) -> dict:
    """MiB of one replica: RSS and PSS of tritonserver, of its Python stubs, and their sum."""
    pid = server.process.pid
    stubs = child_pids(pid)
    mib = lambda kib: round(kib / 1024, 1)  # noqa: E731
    out = {"server_rss_mb": mib(_kib(pid, "status", "VmRSS")), "server_pss_mb": mib(_kib(pid, "smaps_rollup", "Pss")),
           "stubs": len(stubs), "stubs_rss_mb": mib(sum(_kib(p, "status", "VmRSS") for p in stubs)),
           "stubs_pss_mb": mib(sum(_kib(p, "smaps_rollup", "Pss") for p in stubs))}
    out["total_rss_mb"] = round(out["server_rss_mb"] + out["stubs_rss_mb"], 1)
    out["total_pss_mb"] = round(out["server_pss_mb"] + out["stubs_pss_mb"], 1)
    return out


def drive(urls: list[str], users: list[int], concurrency: int, seconds: float, protocol: str = "grpc",
          k: int = 10) -> dict:
    """`concurrency` threads, each with its own RecommenderClient over all `urls`, recommending
    for `users` in turn for `seconds`: users/s (= requests/s), p50/p99 ms, errors, first error."""
    stop = time.monotonic() + seconds
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []

    def worker(w: int) -> None:
        rc = RecommenderClient(urls, protocol, timeout_s=30)
        i = w
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                rc.recommend(user_id=users[i % len(users)], k=k)
                lat[w].append(time.perf_counter() - t0)
            except Exception as e:  # counted and shown; a figure with errors is not comparable
                errors.append(f"{type(e).__name__}: {e}")
            i += concurrency

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    start = time.monotonic()
    with Window() as window:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elapsed = time.monotonic() - start
    ms = np.concatenate([np.array(x) for x in lat]) * 1e3 if any(lat) else np.zeros(1)
    n = sum(len(x) for x in lat)
    return {"concurrency": concurrency, "requests": n, "errors": len(errors), "seconds": round(elapsed, 2),
            "users_per_s": round(n / elapsed, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "steal": None if window.steal is None else round(window.steal, 3),
            "first_error": errors[0] if errors else ""}


def main() -> None:
    """`make bench-replicas`: the module docstring's table, as JSON on stdout and in a file."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", default="1,2", help="replica counts to compare (comma-separated)")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight in total")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured window per replica count")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured load first (seconds)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the comparison, alternating replica counts (a noisy minute then hits each alike)")
    ap.add_argument("--protocol", default="grpc", choices=["grpc", "http"])
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default perf/results/replicas_<stamp>.json)")
    args = ap.parse_args()

    ranker, rater = ensure_runs(None, None)
    config, _ = load_run(ranker)
    dataset = load_dataset(config.data, config.split, config.seed)
    users = [int(u) for u in dataset.user_ids[:256]]
    results = {"protocol": args.protocol, "concurrency": args.concurrency, "seconds": args.seconds,
               "users_per_request": 1, "pipeline": f"{ranker.name} ranker + {rater.name} rater", "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "model_repository"
        write_repository(ranker, repo, ["onnx"], rating_run=rater)
        for n in [int(x) for x in args.replicas.split(",")] * args.rounds:
            with ReplicaSet(repo, n, build_dir=ROOT / "build" / "triton", log_dir=Path(tmp)) as rs:
                urls = rs.urls(args.protocol)
                drive(urls, users, args.concurrency, args.warmup, args.protocol)
                run = {"replicas": n, **drive(urls, users, args.concurrency, args.seconds, args.protocol),
                       "loadavg_1m": round(os.getloadavg()[0], 2),  # other work on the machine shows here
                       "memory": [replica_memory(s) for s in rs.servers]}
                run["total_rss_mb"] = round(sum(m["total_rss_mb"] for m in run["memory"]), 1)
                run["total_pss_mb"] = round(sum(m["total_pss_mb"] for m in run["memory"]), 1)
            results["runs"].append(run)
            print(f"{n} replica(s): {run['users_per_s']:,.0f} users/s, p50 {run['p50_ms']} ms, "
                  f"p99 {run['p99_ms']} ms, errors {run['errors']}, steal {run['steal']}, load {run['loadavg_1m']}, "
                  f"PSS {run['total_pss_mb']} MiB (RSS {run['total_rss_mb']} MiB)", flush=True)
    # Against the mean of the smallest replica count's runs.
    first = min(r["replicas"] for r in results["runs"])
    base = float(np.mean([r["users_per_s"] for r in results["runs"] if r["replicas"] == first]))
    for run in results["runs"]:
        run[f"speedup_vs_{first}"] = round(run["users_per_s"] / base, 3) if base else None
    out = args.out or ROOT / "perf" / "results" / f"replicas_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
