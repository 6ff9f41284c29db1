"""A closed-loop HTTP load generator: N connections, each keep-alive with one request in flight,
sending JSON bodies in turn for a fixed time. It drives Triton's HTTP/JSON endpoint, the serving
peers and the hand-written service alike, so they are compared under exactly the same load.

One asyncio event loop (uvloop's where installed) writes pre-encoded requests and parses the
responses with httptools (llhttp, the parser uvicorn uses): about 25 us of the generator's CPU
per request, a quarter of what a thread per connection with http.client costs. The generator
shares the machine's cores with the server it measures, so its own cost is kept small: the
cheaper a server's requests, the more a heavy generator would understate it.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import numpy as np

TIMEOUT_S = 30.0   # a request unanswered this long is an error; its connection is dropped


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


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight: `send(wire)` returns
    a future of (status, body, keep_alive), or of the error that ended the connection."""

    def __init__(self, httptools):
        self.parser = httptools.HttpResponseParser(self)
        self.parser_error = httptools.HttpParserError
        self.transport = None
        self.waiter: asyncio.Future | None = None
        self.sent_at = 0.0
        self.body: list[bytes] = []

    def connection_made(self, transport):
        self.transport = transport

    def send(self, wire: bytes) -> asyncio.Future:
        self.body = []
        self.waiter = asyncio.get_running_loop().create_future()
        self.sent_at = time.monotonic()
        self.transport.write(wire)
        return self.waiter

    def data_received(self, data: bytes):
        try:
            self.parser.feed_data(data)
        except self.parser_error as e:
            self._fail(ConnectionError(f"bad HTTP response: {e}"))
            self.transport.abort()

    def on_body(self, body: bytes):
        self.body.append(body)

    def on_message_complete(self):
        if self.waiter is not None and not self.waiter.done():
            status, keep_alive = self.parser.get_status_code(), self.parser.should_keep_alive()
            self.waiter.set_result((status, b"".join(self.body), keep_alive))

    def connection_lost(self, exc):
        self._fail(ConnectionError(f"connection closed: {exc}" if exc else "connection closed by the server"))

    def _fail(self, error: Exception):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)

    def close(self):
        if self.transport is not None:
            self.transport.close()


def _wire(host: str, port: int, path: str, body: bytes) -> bytes:
    """A whole POST request as bytes, encoded once before the clock starts."""
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


async def _drive(host, port, path, bodies, concurrency, seconds, ok, httptools) -> LoadResult:
    loop = asyncio.get_running_loop()
    wires = [_wire(host, port, path, b) for b in bodies]
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    first_error: list[str] = []
    live: set[_Connection] = set()
    stop = time.monotonic() + seconds

    def drop(conn: _Connection | None) -> None:
        if conn is not None:
            conn.close()
            live.discard(conn)

    async def worker(w: int) -> None:
        conn, i = None, w
        while time.monotonic() < stop:
            wire = wires[i % len(wires)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                if conn is None:
                    _, conn = await loop.create_connection(lambda: _Connection(httptools), host, port)
                    live.add(conn)
                status, payload, keep_alive = await conn.send(wire)
                good = ok(status, payload)
                if not keep_alive:
                    drop(conn)
                    conn = None
            except OSError as e:   # ConnectionError included: refused, reset, closed, timed out
                good, payload = False, str(e).encode()
                drop(conn)
                conn = None
            if good:
                lat[w].append(time.perf_counter() - t0)
            else:
                errors[w] += 1
                if not first_error:
                    first_error.append(payload[:300].decode(errors="replace"))
        drop(conn)

    async def watchdog() -> None:
        # One timer for all connections (a timeout per request would cost more than the request).
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for conn in list(live):
                if conn.waiter is not None and not conn.waiter.done() and now - conn.sent_at > TIMEOUT_S:
                    conn._fail(ConnectionError(f"no answer in {TIMEOUT_S:g} s"))
                    conn.transport.abort()

    start = time.monotonic()
    guard = asyncio.ensure_future(watchdog())
    try:
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    finally:
        guard.cancel()
    elapsed = time.monotonic() - start
    all_lat = np.concatenate([np.array(x) for x in lat]) * 1000 if any(lat) else np.zeros(1)
    n = sum(len(x) for x in lat)
    return LoadResult(concurrency, n, sum(errors), round(elapsed, 2), n / elapsed,
                      float(np.percentile(all_lat, 50)), float(np.percentile(all_lat, 99)),
                      first_error[0] if first_error else "")


def drive(host: str, port: int, path: str, bodies: list[bytes], concurrency: int, seconds: float,
          ok=lambda status, payload: status == 200) -> LoadResult:
    """POST `bodies` (in turn) to http://host:port/path from `concurrency` keep-alive connections
    for `seconds`; returns throughput and latency of the successful requests (those `ok(status,
    body)` accepts) and the error count. A connection the server closes is reopened for the next
    request. Raises RuntimeError when httptools is missing (the `perf` extra installs it)."""
    try:
        import httptools
    except ImportError as e:
        raise RuntimeError("perf/load.py needs httptools: pip install -e '.[perf]'") from e
    try:
        import uvloop
        run = uvloop.run
    except ImportError:   # the standard loop measures the same, at a little more of the generator's CPU
        run = asyncio.run
    return run(_drive(host, port, path, bodies, concurrency, seconds, ok, httptools))


def naive_bodies(requests: list[tuple[list[int], list[float]]], k: int = 10) -> list[bytes]:
    """Request bodies for the hand-written service (perf/naive_service.py): JSON item_ids, ratings and k per
    request."""
    return [json.dumps({"item_ids": i, "ratings": r, "k": k}).encode() for i, r in requests]


def _id_datatype(items: list) -> str:
    """KServe v2 datatype of a list of raw ids: BYTES (JSON strings) for string ids, else INT64."""
    return "BYTES" if items and isinstance(items[0], str) else "INT64"


def triton_bodies(requests: list[tuple[list[int], list[float]]], k: int = 10) -> list[bytes]:
    """KServe v2 JSON requests for the `recommend` ensemble (what a curl user would send); item ids
    as given: ints (INT64) or strings (BYTES)."""
    out = []
    for items, ratings in requests:
        out.append(json.dumps({"inputs": [
            {"name": "ITEM_IDS", "datatype": _id_datatype(items), "shape": [1, len(items)], "data": items},
            {"name": "RATINGS", "datatype": "FP32", "shape": [1, len(ratings)], "data": ratings},
            {"name": "TOP_K", "datatype": "INT32", "shape": [1, 1], "data": [k]}],
            "outputs": [{"name": "RECOMMENDED_IDS"}, {"name": "SCORES"}]}).encode())
    return out


def padded(requests: list[tuple[list[int], list[float]]]) -> tuple[list[list[int]], list[list[float]]]:
    """Several users' lists as the contract's [rows, longest] rows: shorter ones padded with item
    PAD (-1; "" for string ids) and rating 0 (serving.contract)."""
    width = max(len(i) for i, _ in requests)
    pad = "" if _id_datatype(requests[0][0]) == "BYTES" else -1
    return ([list(i) + [pad] * (width - len(i)) for i, _ in requests],
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
            {"name": "ITEM_IDS", "datatype": _id_datatype(items[0]), "shape": [n, width], "data": items},
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
