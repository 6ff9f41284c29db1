"""One server or several on one machine: `python -m benchmarks.bench_replicas` (`make bench-replicas`).

Serves the default pipeline (the `ease-values` ranker beside the `deeprec` rater, as `make perf`) from
one repository on 1 and on 2 replicas (server/replicas.py) and measures each with perf_analyzer
(`--load perf_analyzer`, the default): one perf_analyzer process per replica, all started at
once, each with an even share of the total concurrency, on the `recommend` ensemble with the
harness's known-user input data (USER_ID + TOP_K of held-out ML-100K users), in the two request
shapes the project reports: one user per request and 64 users per request (`-b 64`, as
perf/harness.py's `recommend_grpc_b64`). Throughput is the sum over the replicas; latency is
each replica's p50/p99, and the run's p50/p99 are the worst replica's. A replica whose
perf_analyzer finishes first keeps serving the same load, unmeasured, until the others have
finished, so no replica's windows are measured beside an idle neighbour.

With N replicas on C cores each network gets max(1, C // N) ONNX Runtime intra-op threads
(`--tuning cores`, Tuning.ort_threads) so that N replicas do not each start a pool of C threads
on the same C cores; `--tuning default` keeps ONNX Runtime's default (all cores per
session). `--load sdk` drives the replicas with the Python SDK instead (one RecommenderClient
per worker thread over every replica, round-robin, one user per request): it shows that
failover clients work, and measures the Python client more than the servers.

Writes JSON: users/s, p50/p99 latency (ms), the tuning used, the CPU share stolen by the host in
the window, the 1-minute load average, and each replica's memory from /proc (RSS and PSS of
tritonserver and of its Python stubs; PSS splits shared pages, so it sums across replicas).
On a 2-core machine the replicas share the same two cores, and perf_analyzer runs on them too
(above 4 requests in flight one perf_analyzer keeps them in flight from 4 async threads, at 4 or
fewer one blocking thread each: perf/analyzer.py). `--rounds 2` alternates the replica counts
(1, 2, 1, 2) so that load from other work hits each alike.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from builder.repository import Tuning, write_repository
from builder.run_folder import load_run_dataset
from client import RecommenderClient
from perf import analyzer, inputs
from perf.harness import ensure_runs
from perf.steal import Window
from server.launcher import ROOT, child_pids
from server.replicas import ReplicaSet

MODEL = "recommend"
LOADS = ("perf_analyzer", "sdk")
TUNINGS = ("cores", "default")


def split_concurrency(total: int, replicas: int) -> list[int]:
    """`total` requests in flight spread over `replicas` perf_analyzer processes as evenly as
    integers allow, the larger shares first: split_concurrency(5, 2) == [3, 2].

    Raises ValueError when `replicas` < 1 or `total` < `replicas` (a replica would get no load)."""
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    if total < replicas:
        raise ValueError(f"concurrency {total} cannot load {replicas} replicas: each needs at least 1 request "
                         f"in flight")
    share, extra = divmod(total, replicas)
    return [share + (i < extra) for i in range(replicas)]


def ort_threads_for(replicas: int, cores: int) -> int:
    """ONNX Runtime intra-op threads per network with `replicas` servers on `cores` cores:
    max(1, cores // replicas), so the replicas' sessions together use the cores once.

    Raises ValueError when `replicas` or `cores` < 1."""
    if replicas < 1 or cores < 1:
        raise ValueError(f"replicas and cores must be at least 1, got replicas={replicas}, cores={cores}")
    return max(1, cores // replicas)


def tuning_for(mode: str, replicas: int, cores: int, base: Tuning | None = None) -> Tuning:
    """The serving knobs of a `replicas`-server run: `base` (default Tuning(); `--tuned` reads
    `aerec perf`'s tuned.json) with, in mode "cores", ort_threads_for(replicas, cores); mode
    "default" keeps base's threads. ValueError for another mode."""
    if mode not in TUNINGS:
        raise ValueError(f"tuning must be one of {TUNINGS}, got {mode!r}")
    base = base or Tuning()
    return dataclasses.replace(base, ort_threads=ort_threads_for(replicas, cores)) if mode == "cores" else base


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


def _hold(url: str, protocol: str, data: Path, batch: int, concurrency: int) -> subprocess.Popen:
    """An unmeasured perf_analyzer keeping `concurrency` requests in flight on `url` until stopped."""
    client = (("--async", "--max-threads", str(analyzer.CLIENT_THREADS))
              if concurrency > analyzer.SYNC_MAX_CONCURRENCY else ())
    cmd = [str(analyzer.binary()), "-m", MODEL, "-u", url, "-i", protocol, "-b", str(batch), "--input-data",
           str(data), "--concurrency-range", str(concurrency), "--measurement-interval", "600000", *client]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=analyzer.environment())


def drive_perf_analyzer(urls: list[str], protocol: str, data: Path, batch: int, concurrency: int,
                        seconds: float, csv_dir: Path, timeout_s: float = 300, hold: bool = True) -> dict:
    """One perf_analyzer per url, started together, each at its split_concurrency share of
    `concurrency`, `-b batch` (users per request), windows of `seconds` (perf_analyzer takes 3 or
    more until stable). With `hold`, a replica done first keeps an unmeasured perf_analyzer of the
    same load running until every replica is measured.

    Returns users/s summed over the replicas, requests/s, the worst replica's p50/p99 (ms), each
    replica's row (`per_replica`), errors (a replica whose perf_analyzer failed or timed out, with
    its message), the steal share of the whole window and `overlap`: the share of the longest
    measurement during which all were running (1.0: perfectly together)."""
    shares = split_concurrency(concurrency, len(urls))
    rows: list[dict | None] = [None] * len(urls)
    errors: list[str] = []
    spans: list[tuple[float, float]] = [(0.0, 0.0)] * len(urls)
    lock, all_done, remaining = threading.Lock(), threading.Event(), [len(urls)]

    def worker(i: int) -> None:
        start = time.monotonic()
        try:
            r = analyzer.run(MODEL, urls[i], protocol, data, csv_dir / f"replica{i}.csv", batch=batch,
                             concurrency=str(shares[i]), interval_ms=int(seconds * 1000), timeout_s=timeout_s)
            row = r.rows[0].to_dict()
            rows[i] = {"replica": i, "url": urls[i], "concurrency": shares[i],
                       "users_per_s": round(row["throughput"], 1),
                       "requests_per_s": round(row["throughput"] / batch, 1),
                       **{k: round(row[k], 3) for k in ("p50_ms", "p99_ms", "avg_ms", "server_queue_ms",
                                                        "server_compute_ms") if row.get(k) is not None},
                       "stable": row["stable"], "steal": None if r.steal is None else round(r.steal, 3),
                       "command": r.command}
        except Exception as e:  # counted and shown; the other replicas' figures still come back
            errors.append(f"replica {i}: {type(e).__name__}: {str(e)[-600:]}")
        finally:
            spans[i] = (start, time.monotonic())
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    all_done.set()
        if hold and not all_done.is_set():
            p = _hold(urls[i], protocol, data, batch, shares[i])
            all_done.wait()
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    analyzer.environment()  # links perf_analyzer's libraries once, not from every thread at the same time
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(urls))]
    with Window() as window:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    done = [r for r in rows if r is not None]
    longest = max(end - start for start, end in spans)
    together = min(end for _, end in spans) - max(start for start, _ in spans)
    worst = lambda key: max((r[key] for r in done if key in r), default=None)  # noqa: E731
    users = round(sum(r["users_per_s"] for r in done), 1)
    return {"concurrency": concurrency, "per_replica_concurrency": shares, "users_per_request": batch,
            "users_per_s": users, "requests_per_s": round(users / batch, 1), "p50_ms": worst("p50_ms"),
            "p99_ms": worst("p99_ms"), "errors": len(errors), "first_error": errors[0] if errors else "",
            "stable": all(r["stable"] for r in done) if done else False,
            "seconds": round(longest, 2), "overlap": round(max(0.0, together) / longest, 3) if longest else None,
            "steal": None if window.steal is None else round(window.steal, 3), "per_replica": rows}


def _parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--{what}: comma-separated integers expected, got {text!r}") from None
    if not values or min(values) < 1:
        raise SystemExit(f"--{what}: positive integers expected, got {text!r}")
    return values


def main() -> None:
    """`make bench-replicas`: the module docstring's table, as JSON on stdout and in a file."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", default="1,2", help="replica counts to compare (comma-separated)")
    ap.add_argument("--load", default="perf_analyzer", choices=LOADS,
                    help="perf_analyzer per replica (measures the servers) or the Python SDK (shows failover)")
    ap.add_argument("--shapes", default="1,64",
                    help="users per request to measure (perf_analyzer -b; the SDK sends 1 only)")
    ap.add_argument("--concurrency", type=int, default=8,
                    help="requests in flight in total at 1 user per request (split over the replicas)")
    ap.add_argument("--batched-concurrency", type=int, default=4,
                    help="requests in flight in total at more than 1 user per request (split over the replicas)")
    ap.add_argument("--tuning", default="cores", choices=TUNINGS,
                    help="cores: each network gets max(1, cores // replicas) ONNX Runtime threads; "
                         "default: ONNX Runtime's own thread count")
    ap.add_argument("--tuned", type=Path, default=None,
                    help="start from this tuned.json (`aerec perf`'s choice, e.g. perf/results/latest) "
                         "instead of the repository defaults")
    ap.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)),
                    help="cores the replicas share (default: this process's CPU affinity)")
    ap.add_argument("--seconds", type=float, default=10.0,
                    help="perf_analyzer's measurement window (it takes 3 or more); the SDK's whole window")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured SDK load first (seconds)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the comparison, alternating replica counts (a noisy minute then hits each alike)")
    ap.add_argument("--protocol", default="grpc", choices=["grpc", "http"])
    ap.add_argument("--timeout", type=float, default=300.0, help="limit of one perf_analyzer call (seconds)")
    ap.add_argument("--log-dir", type=Path, default=None, help="the replicas' server logs (default: temporary)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default perf/results/replicas_<stamp>.json)")
    args = ap.parse_args()
    counts = _parse_ints(args.replicas, "replicas")
    shapes = [1] if args.load == "sdk" else _parse_ints(args.shapes, "shapes")
    if args.cores < 1:
        raise SystemExit(f"--cores must be at least 1, got {args.cores}")
    concurrency = {b: args.concurrency if b == 1 else args.batched_concurrency for b in shapes}
    for b, c in concurrency.items():
        for n in counts:
            try:
                split_concurrency(c, n)
            except ValueError as e:
                raise SystemExit(f"{b} user(s) per request: {e}") from None

    base = Tuning.load(args.tuned) if args.tuned else None
    version = analyzer.check() if args.load == "perf_analyzer" else None  # fail first, and clearly
    ranker, rater = ensure_runs(None, None)
    dataset = load_run_dataset(ranker)
    held_out = inputs.held_out_users(dataset.test, dataset.train, 64)  # the harness's known users
    users = [int(dataset.user_ids[u]) for u in held_out]
    results = {"load": args.load, "perf_analyzer": version, "protocol": args.protocol, "model": MODEL,
               "concurrency": {str(b): c for b, c in concurrency.items()}, "seconds": args.seconds,
               "cores": args.cores, "tuning_mode": args.tuning, "input": "known users: USER_ID + TOP_K",
               "users": len(users), "pipeline": f"{ranker.name} ranker + {rater.name} rater", "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = inputs.write(inputs.ensemble_user_data(dataset.user_ids, held_out),
                            tmp / "data" / "recommend_user_ids.json")
        repos, tunings = {}, {}
        for n in dict.fromkeys(counts):  # one repository per replica count: its threads follow the cores
            tunings[n] = tuning_for(args.tuning, n, args.cores, base)
            repos[n] = tmp / f"model_repository_r{n}"
            write_repository(ranker, repos[n], ["onnx"], tuning=tunings[n], rating_run=rater)
        for k, n in enumerate(counts * args.rounds):
            with ReplicaSet(repos[n], n, build_dir=ROOT / "build" / "triton", log_dir=args.log_dir or tmp) as rs:
                urls = rs.urls(args.protocol)
                drive(urls, users, min(args.concurrency, 8), args.warmup, args.protocol)
                for b in shapes:
                    if args.load == "sdk":
                        measured = drive(urls, users, concurrency[b], args.seconds, args.protocol)
                        measured["users_per_request"] = 1
                    else:
                        csv_dir = tmp / f"csv_{k}_b{b}"
                        csv_dir.mkdir()
                        measured = drive_perf_analyzer(urls, args.protocol, data, b, concurrency[b], args.seconds,
                                                       csv_dir, args.timeout)
                    run = {"replicas": n, "round": k // len(counts), "tuning": tunings[n].to_dict(), **measured,
                           "alive": rs.alive(),  # a replica that died mid-window shows here; its log says why
                           "loadavg_1m": round(os.getloadavg()[0], 2),  # other work on the machine shows here
                           "memory": [replica_memory(s) for s in rs.servers]}
                    for i, up in enumerate(run["alive"]):
                        if not up:  # say why now: the default log folder goes with the run
                            tail = rs.servers[i].log.read_text(errors="replace")[-2000:]
                            print(f"replica {i} died; the end of {rs.servers[i].log}:\n{tail}", file=sys.stderr)
                    run["total_rss_mb"] = round(sum(m["total_rss_mb"] for m in run["memory"]), 1)
                    run["total_pss_mb"] = round(sum(m["total_pss_mb"] for m in run["memory"]), 1)
                    results["runs"].append(run)
                    each = ", ".join(f"{r['users_per_s']:,.0f} (p99 {r.get('p99_ms')} ms)"
                                     for r in run.get("per_replica") or [] if r)
                    worst = " (worst replica)" if args.load == "perf_analyzer" else ""
                    print(f"{n} replica(s), {b} user(s)/request, c={concurrency[b]}, ort_threads "
                          f"{tunings[n].ort_threads or 'default'}: {run['users_per_s']:,.0f} users/s, "
                          f"p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms{worst}, errors {run['errors']}, "
                          f"steal {run['steal']}, load {run['loadavg_1m']}, PSS {run['total_pss_mb']} MiB "
                          f"(RSS {run['total_rss_mb']} MiB)" + (f"; per replica: {each}" if each else ""), flush=True)
    # Against the mean of the smallest replica count's runs of the same shape.
    first = min(counts)
    for b in shapes:
        same = [r for r in results["runs"] if r["users_per_request"] == b]
        base = float(np.mean([r["users_per_s"] for r in same if r["replicas"] == first]))
        for run in same:
            run[f"speedup_vs_{first}"] = round(run["users_per_s"] / base, 3) if base else None
    out = args.out or ROOT / "perf" / "results" / f"replicas_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
