"""A closed-loop HTTP load generator: N workers, each with one keep-alive connection, sending
JSON bodies in turn for a fixed time. It drives the naive service and Triton's HTTP/JSON
endpoint alike, so the two are compared under exactly the same load.
"""
from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class LoadResult:
    """What one drive() measured: requests (successes) and errors, throughput per second, latency percentiles in
    ms, the first error's text."""
    concurrency: int
    requests: int
    errors: int
    seconds: float
    throughput: float
    p50_ms: float
    p99_ms: float
    first_error: str = ""


def drive(host: str, port: int, path: str, bodies: list[bytes], concurrency: int, seconds: float,
          ok=lambda status, payload: status == 200) -> LoadResult:
    """POST `bodies` (in turn) to http://host:port/path from `concurrency` keep-alive connections for `seconds`;
    returns throughput and latency of the successful requests and the error count. The same generator for
    every HTTP service compared."""
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    first_error: list[str] = []
    stop = time.monotonic() + seconds

    def worker(w: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        i = w
        while time.monotonic() < stop:
            body = bodies[i % len(bodies)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                payload = resp.read()
                good = ok(resp.status, payload)
            except (OSError, http.client.HTTPException) as e:
                good, payload = False, str(e).encode()
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30)
            if good:
                lat[w].append(time.perf_counter() - t0)
            else:
                errors[w] += 1
                if not first_error:
                    first_error.append(payload[:300].decode(errors="replace"))
        conn.close()

    start = time.monotonic()
    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    all_lat = np.concatenate([np.array(x) for x in lat]) * 1000 if any(lat) else np.zeros(1)
    n = sum(len(x) for x in lat)
    return LoadResult(concurrency, n, sum(errors), round(elapsed, 2), n / elapsed,
                      float(np.percentile(all_lat, 50)), float(np.percentile(all_lat, 99)),
                      first_error[0] if first_error else "")


def naive_bodies(requests: list[tuple[list[int], list[float]]], k: int = 10) -> list[bytes]:
    """Request bodies for the hand-written service (perf/naive_service.py): JSON item_ids, ratings and k per
    request."""
    return [json.dumps({"item_ids": i, "ratings": r, "k": k}).encode() for i, r in requests]


def triton_bodies(requests: list[tuple[list[int], list[float]]], k: int = 10) -> list[bytes]:
    """KServe v2 JSON requests for the `recommend` ensemble (what a curl user would send)."""
    out = []
    for items, ratings in requests:
        out.append(json.dumps({"inputs": [
            {"name": "ITEM_IDS", "datatype": "INT64", "shape": [1, len(items)], "data": items},
            {"name": "RATINGS", "datatype": "FP32", "shape": [1, len(ratings)], "data": ratings},
            {"name": "TOP_K", "datatype": "INT32", "shape": [1, 1], "data": [k]}],
            "outputs": [{"name": "RECOMMENDED_IDS"}, {"name": "SCORES"}]}).encode())
    return out


def padded(requests: list[tuple[list[int], list[float]]]) -> tuple[list[list[int]], list[list[float]]]:
    """Several users' lists as the contract's [rows, longest] rows: shorter ones padded with item
    PAD (-1) and rating 0 (serving.contract)."""
    width = max(len(i) for i, _ in requests)
    return ([list(i) + [-1] * (width - len(i)) for i, _ in requests],
            [list(r) + [0.0] * (width - len(r)) for _, r in requests])


def groups(requests: list, per_request: int) -> list[list]:
    """`requests` cut into consecutive groups of `per_request` users (wrapping around, so every
    group is full): the users of each multi-user request."""
    n = max(1, len(requests) // per_request)
    return [[requests[(g * per_request + j) % len(requests)] for j in range(per_request)] for g in range(n)]


def triton_batch_bodies(requests: list[tuple[list[int], list[float]]], per_request: int, k: int = 10) -> list[bytes]:
    """KServe v2 JSON requests for `recommend` carrying `per_request` users each (ITEM_IDS and
    RATINGS [users, longest], padded as the contract says; TOP_K [users, 1])."""
    out = []
    for group in groups(requests, per_request):
        items, ratings = padded(group)
        n, width = len(group), len(items[0])
        out.append(json.dumps({"inputs": [
            {"name": "ITEM_IDS", "datatype": "INT64", "shape": [n, width], "data": items},
            {"name": "RATINGS", "datatype": "FP32", "shape": [n, width], "data": ratings},
            {"name": "TOP_K", "datatype": "INT32", "shape": [n, 1], "data": [k] * n}],
            "outputs": [{"name": "RECOMMENDED_IDS"}, {"name": "SCORES"}]}).encode())
    return out


def peer_bodies(requests: list[tuple[list[int], list[float]]], per_request: int = 1, k: int = 10) -> list[bytes]:
    """Request bodies for the serving peers (perf/peers/core.py) and the hand-written service:
    one user as {"item_ids", "ratings", "k"}, several as {"users": [...], "k"}."""
    if per_request == 1:
        return naive_bodies(requests, k)
    return [json.dumps({"users": [{"item_ids": i, "ratings": r} for i, r in group], "k": k}).encode()
            for group in groups(requests, per_request)]
