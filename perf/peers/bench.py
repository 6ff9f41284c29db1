"""Triton, the serving peers and the hand-written service under one HTTP/JSON load generator
(perf/load.py), in two request shapes: one user per request and 64 users per request.

Every server answers the same users with the same lists (the peers run serving/'s code; the
hand-written service runs PyTorch with serving.ranking), so only serving differs. Each peer's
batching knobs (max batch size, wait) are chosen by a small grid: the point with the highest
geometric mean, over the two shapes, of its best users/s.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from perf import load
from perf.peers import PEERS
from perf.peers.launch import Peer, PeerFailed
from perf.soak import process_tree_rss_mb
from server.launcher import ROOT, free_port

SHAPES = (1, 64)   # users per request
WARMUP_S = 1.0


def drive_shapes(host: str, port: int, path: str, bodies: dict[int, list[bytes]], concurrency: list[int],
                 seconds: float) -> dict[str, list[dict]]:
    """Each shape's bodies at each concurrency for `seconds`: {"1": rows, "64": rows}; a row is
    load.LoadResult's fields plus users_per_s (requests/s times users per request). Each shape
    is first driven for WARMUP_S, unmeasured: a fresh peer process answers its first requests
    slowly (allocations, first runs), and only Triton would otherwise be warm."""
    out = {}
    for shape, shape_bodies in bodies.items():
        load.drive(host, port, path, shape_bodies, 4, WARMUP_S)
        rows = []
        for c in concurrency:
            r = asdict(load.drive(host, port, path, shape_bodies, c, seconds))
            rows.append(dict(r, users_per_s=r["throughput"] * shape))
        out[str(shape)] = rows
    return out


def shape_figures(rows: list[dict]) -> dict:
    """One shape's figures: the best concurrency's throughput, p50/p99 at concurrency 1 and 16."""
    ok = [x for x in rows if x["requests"]]
    best = max(ok, key=lambda x: x["throughput"]) if ok else None
    at = lambda c: next((x for x in ok if x["concurrency"] == c), None)  # noqa: E731
    return {"best_concurrency": best and best["concurrency"], "req_per_s": best and best["throughput"],
            "users_per_s": best and best["users_per_s"],
            **{f"{p}_c{c}": (at(c) or {}).get(f"{p}_ms") for c in (1, 16) for p in ("p50", "p99")},
            "errors": sum(x["errors"] for x in rows)}


def score(shapes: dict[str, list[dict]]) -> float:
    """The geometric mean over the shapes of the best users/s: no shape sacrificed to the other."""
    best = [max((x["users_per_s"] for x in rows), default=0.0) for rows in shapes.values()]
    prod = 1.0
    for b in best:
        prod *= b
    return prod ** (1 / len(best)) if best else 0.0


def measure_peer(kind: str, repo: Path, threads: int, bodies: dict[int, list[bytes]], concurrency: list[int],
                 seconds: float, grid: list[tuple[int, float]], out: Path, say=print) -> dict:
    """Peer `kind` on `repo` at each grid point (max_batch_size, batch_wait_timeout_s), a fresh
    process each; returns {"grid": [each point's shapes, rss_mb, startup_s, score], "chosen"
    (the best score's point), "shapes", "rss_mb"} or {"error"} when it cannot start."""
    points = []
    for i, (size, wait) in enumerate(grid):
        try:
            with Peer(kind, repo, threads, size, wait, log=out / f"peer_{kind}_{i}.log") as p:
                shapes = drive_shapes("127.0.0.1", p.port, "/recommend", bodies, concurrency, seconds)
                rss = p.rss_mb()
                startup = p.startup_s
        except PeerFailed as e:
            say(f"{kind}: {str(e)[:300]}")
            return {"error": str(e), "grid": points}
        points.append({"max_batch_size": size, "batch_wait_timeout_s": wait, "startup_s": round(startup, 1),
                       "rss_mb": round(rss, 1), "score": score(shapes), "shapes": shapes})
        say(f"{kind} max_batch_size={size} wait={wait * 1000:g} ms: score {points[-1]['score']:,.0f} users/s, "
            f"RSS {rss:,.0f} MB")
    chosen = max(points, key=lambda x: x["score"])
    return {"grid": points, "chosen": {k: chosen[k] for k in ("max_batch_size", "batch_wait_timeout_s")},
            "shapes": chosen["shapes"], "rss_mb": chosen["rss_mb"], "threads": threads}


def measure_naive(runs: list[Path], bodies: dict[int, list[bytes]], concurrency: list[int], seconds: float) -> dict:
    """The hand-written service (perf/naive_service.py) on `runs` ([ranker, rater] or one)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    rater = ["--rating-model", str(runs[1])] if len(runs) > 1 else []
    proc = subprocess.Popen([sys.executable, "-m", "perf.naive_service", str(runs[0]), *rater, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        line = proc.stdout.readline().decode()
        if "naive service" not in line:
            raise RuntimeError(f"naive service did not start: {line}")
        shapes = drive_shapes("127.0.0.1", port, "/recommend", bodies, concurrency, seconds)
        rss = process_tree_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return {"shapes": shapes, "rss_mb": round(rss, 1)}


def compare(server, runs: list[Path], repo: Path, threads: int, requests: list[tuple[list[int], list[float]]],
            concurrency: list[int], seconds: float, grid: list[tuple[int, float]], out: Path,
            peers=PEERS, say=print) -> dict:
    """Triton's HTTP/JSON endpoint (`server`, running `repo`), the hand-written service and
    each peer, both shapes, the same generator and users. `threads`: ONNX Runtime threads for
    the peers (the served configs'). Returns {"shapes", "concurrency", "seconds", "grid",
    "servers": {"triton": ..., "naive": ..., peer: ...}}; each server has "shapes" (rows per
    shape), "figures" (shape_figures per shape) and "rss_mb"."""
    peer_bodies = {s: load.peer_bodies(requests, s) for s in SHAPES}
    triton_bodies = {1: load.triton_bodies(requests), 64: load.triton_batch_bodies(requests, 64)}
    host, port = server.http_url.split(":")
    servers = {"triton": {"shapes": drive_shapes(host, int(port), "/v2/models/recommend/infer", triton_bodies,
                                                 concurrency, seconds),
                          "rss_mb": round(process_tree_rss_mb(server.process.pid), 1)}}
    say("Triton HTTP/JSON measured; the hand-written service next")
    servers["naive"] = measure_naive(runs, peer_bodies, concurrency, seconds)
    for kind in peers:
        servers[kind] = measure_peer(kind, repo, threads, peer_bodies, concurrency, seconds, grid, out, say)
    for v in servers.values():
        if "shapes" in v:
            v["figures"] = {shape: shape_figures(rows) for shape, rows in v["shapes"].items()}
    return {"shapes": list(SHAPES), "concurrency": concurrency, "seconds": seconds,
            "grid": [list(g) for g in grid], "servers": servers}


def ratios(http: dict) -> dict:
    """The summary's figures from compare()'s result. `served_vs_best_peer`: per shape, Triton's
    best throughput over the best peer's (each at its own best concurrency), the lower of the
    two shapes (> 1: Triton serves more). `p99_c1_vs_best_peer`: Triton's p99 at concurrency 1,
    one user per request, over the lowest such p99 of the peers (< 1: Triton answers a lone
    user faster). `served_vs_naive`: as served_vs_best_peer against the hand-written service."""
    servers = http["servers"]
    fig = lambda name, shape: servers[name].get("figures", {}).get(str(shape), {})  # noqa: E731
    peers = [p for p in servers if p not in ("triton", "naive") and "figures" in servers[p]]
    per_shape, vs_naive = {}, {}
    for shape in http["shapes"]:
        t = fig("triton", shape).get("req_per_s")
        best_peer = max(((fig(p, shape).get("req_per_s") or 0.0, p) for p in peers), default=(0.0, None))
        per_shape[str(shape)] = {"triton_req_per_s": t, "best_peer": best_peer[1], "best_peer_req_per_s": best_peer[0],
                                 "ratio": t / best_peer[0] if t and best_peer[0] else None}
        n = fig("naive", shape).get("req_per_s")
        vs_naive[str(shape)] = t / n if t and n else None
    p99s = [(fig(p, 1).get("p99_c1"), p) for p in peers if fig(p, 1).get("p99_c1")]
    lowest = min(p99s, default=(None, None))
    t99 = fig("triton", 1).get("p99_c1")
    valid = [v["ratio"] for v in per_shape.values() if v["ratio"]]
    naive_valid = [v for v in vs_naive.values() if v]
    return {"served_vs_best_peer": min(valid) if valid else None, "served_vs_best_peer_by_shape": per_shape,
            "p99_c1_vs_best_peer": t99 / lowest[0] if t99 and lowest[0] else None,
            "p99_c1_ms": {"triton": t99, "best_peer": lowest[1], "best_peer_ms": lowest[0]},
            "served_vs_naive": min(naive_valid) if naive_valid else None, "served_vs_naive_by_shape": vs_naive}
