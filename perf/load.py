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
