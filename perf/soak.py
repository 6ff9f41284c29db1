"""Load for reliability: many concurrent gRPC requests (tritonclient's asyncio client), valid and
deliberately invalid ones mixed, each outcome recorded with its time, while something else
happens (nothing: a soak; a killed stub; a model swap). The server's memory is sampled too.

Every request knows what it should get: a valid one must succeed; an invalid one must fail
with its own error text. Anything else is "unexpected" and is what the tests count.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from perf.inputs import held_out_users
from serving.contract import MODEL


@dataclass
class Request:
    """One soak request: its input tensors and, for an invalid one, a piece of the error it must get."""
    inputs: dict                 # name -> numpy array ([1, ...])
    expect_error: str | None     # None: must succeed; else a piece of the error it must get


@dataclass
class Outcome:
    """One soak request's result: when it was sent, its latency (seconds), whether it was valid and
    got what it should (success, or the expected error), and the error text."""
    start: float                 # time.monotonic() when sent
    seconds: float
    valid: bool
    ok: bool                     # got what it should (success, or the expected error)
    error: str = ""


def _dtype(arr: np.ndarray) -> str:
    return {np.int64: "INT64", np.int32: "INT32", np.float32: "FP32", np.object_: "BYTES"}[arr.dtype.type]


def _ids(values) -> np.ndarray:
    """Raw ids as their tensor: int64, or UTF-8 bytes (object, BYTES) for a catalogue of string ids."""
    values = np.asarray(values)
    if values.dtype.kind == "U":
        return np.array([v.encode("utf-8") for v in values.reshape(-1).tolist()], np.object_).reshape(values.shape)
    return values.astype(np.int64)


def mixed_requests(dataset, n_valid: int = 200, seed: int = 0) -> tuple[list[Request], list[Request]]:
    """Valid requests from real held-out users (half by USER_ID, half by their ratings) and a
    catalogue of invalid ones, each with the error text the server must answer with."""
    users = held_out_users(dataset.test, dataset.train, n_valid)
    train = dataset.train.tocsr()
    k = np.array([[10]], np.int32)
    valid = []
    for j, u in enumerate(users):
        if j % 2:
            valid.append(Request({"USER_ID": _ids(dataset.user_ids[[u]])[None], "TOP_K": k}, None))
        else:
            row = train[u]
            valid.append(Request({"ITEM_IDS": _ids(dataset.item_ids[row.indices][None]),
                                  "RATINGS": row.data[None].astype(np.float32), "TOP_K": k}, None))
    ids = _ids(dataset.item_ids[:3])[None]
    # An id no user has: past the largest integer id, or a string no id equals.
    unknown = "\N{REPLACEMENT CHARACTER}" if np.asarray(dataset.user_ids).dtype.kind == "U" else 10**9
    invalid = [
        Request({"USER_ID": _ids(np.array([[unknown]])), "TOP_K": k}, "unknown USER_ID"),
        Request({"ITEM_IDS": ids, "RATINGS": np.array([[4, np.nan, 3]], np.float32), "TOP_K": k}, "NaN or infinity"),
        Request({"ITEM_IDS": ids, "RATINGS": np.array([[4, 3]], np.float32), "TOP_K": k}, "entries but RATINGS"),
        Request({"USER_ID": _ids(dataset.user_ids[[0]])[None], "TOP_K": np.array([[0]], np.int32)},
                "TOP_K must be in"),
        Request({"ITEM_IDS": ids[:, [0, 1, 0]], "RATINGS": np.array([[4, 3, 2]], np.float32), "TOP_K": k},
                "repeats item"),
        Request({"ITEM_IDS": ids, "RATINGS": np.array([[4, 30, 3]], np.float32), "TOP_K": k}, "outside scale"),
    ]
    return valid, invalid


def interleave(valid: list[Request], invalid: list[Request], invalid_every: int = 5) -> list[Request]:
    """One invalid request after every `invalid_every - 1` valid ones (20% invalid by default)."""
    out, j = [], 0
    for i, r in enumerate(valid):
        out.append(r)
        if invalid and (i + 1) % (invalid_every - 1) == 0:
            out.append(invalid[j % len(invalid)])
            j += 1
    return out


async def _load(url: str, requests: list[Request], concurrency: int, until, outcomes: list[Outcome]) -> None:
    import tritonclient.grpc.aio as aio
    from tritonclient.grpc import InferInput
    client = aio.InferenceServerClient(url)

    def build(r: Request):
        out = []
        for name, arr in r.inputs.items():
            t = InferInput(name, list(arr.shape), _dtype(arr))
            t.set_data_from_numpy(arr)
            out.append(t)
        return out
    prepared = [(build(r), r) for r in requests]

    async def worker(w: int) -> None:
        i = w
        while not until():
            inputs, r = prepared[i % len(prepared)]
            i += concurrency
            t0 = time.monotonic()
            try:
                await client.infer(MODEL, inputs, client_timeout=60)
                ok, err = r.expect_error is None, ""
            except Exception as e:  # the outcome is what we record, whatever the type
                err = str(e)
                ok = r.expect_error is not None and r.expect_error in err
            outcomes.append(Outcome(t0, time.monotonic() - t0, r.expect_error is None, ok, "" if ok else err[:300]))
    try:
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    finally:
        await client.close()


def drive(url: str, requests: list[Request], concurrency: int, seconds: float | None = None,
          stop: threading.Event | None = None) -> list[Outcome]:
    """Closed-loop load until `seconds` pass or `stop` is set; every outcome, in completion order."""
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + seconds if seconds else float("inf")
    until = lambda: time.monotonic() >= deadline or (stop is not None and stop.is_set())  # noqa: E731
    asyncio.run(_load(url, requests, concurrency, until, outcomes))
    return outcomes


def process_tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its children (Triton + its Python stubs), in MB."""
    from server.launcher import child_pids
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
        todo += child_pids(p)
    return total / 1024


@dataclass
class SoakResult:
    """A soak's totals: requests valid and invalid, failures of each kind, throughput (requests/s),
    p99 (ms) and the server's RSS (its whole process tree) at start and end (MB)."""
    seconds: float
    concurrency: int
    requests: int
    valid: int
    valid_failed: int
    invalid: int
    unexpected: int              # valid requests that failed + invalid ones without their error
    throughput: float
    p50_ms: float
    p99_ms: float
    rss_start_mb: float          # after the warm-up
    rss_end_mb: float
    rss_growth: float            # end / start - 1
    rss_samples: list = field(default_factory=list)
    first_unexpected: str = ""

    def to_dict(self) -> dict:
        """The result as a JSON-ready dict."""
        return asdict(self)


def soak(server, dataset, seconds: float = 60.0, concurrency: int = 64, warmup: float | None = None) -> SoakResult:
    """`seconds` of mixed valid/invalid load at `concurrency` after a warm-up (20% of it, at most
    10 s, not counted); server memory sampled every second, growth measured from the warm-up's end."""
    valid, invalid = mixed_requests(dataset)
    requests = interleave(valid, invalid)
    warmup = min(10.0, 0.2 * seconds) if warmup is None else warmup
    drive(server.grpc_url, requests, concurrency, warmup)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not stop.wait(1.0):
            samples.append((round(time.monotonic() - t0, 1), round(process_tree_rss_mb(server.process.pid), 1)))
    start_rss = process_tree_rss_mb(server.process.pid)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    outcomes = drive(server.grpc_url, requests, concurrency, seconds)
    elapsed = time.monotonic() - t0
    stop.set()
    sampler.join()
    end_rss = process_tree_rss_mb(server.process.pid)
    lat = np.array([o.seconds for o in outcomes if o.valid and o.ok] or [0.0]) * 1000
    bad = [o for o in outcomes if not o.ok]
    n_valid = sum(o.valid for o in outcomes)
    return SoakResult(round(elapsed, 1), concurrency, len(outcomes), n_valid, sum(o.valid for o in bad),
                      len(outcomes) - n_valid, len(bad), round(len(outcomes) / elapsed, 1),
                      round(float(np.percentile(lat, 50)), 2), round(float(np.percentile(lat, 99)), 2),
                      round(start_rss, 1), round(end_rss, 1), round(end_rss / start_rss - 1, 4), samples,
                      bad[0].error if bad else "")
