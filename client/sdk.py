"""A small SDK over tritonclient for the `recommend` ensemble, gRPC or HTTP, sync or async.

    from client import RecommenderClient
    rc = RecommenderClient("127.0.0.1:8001")            # gRPC; protocol="http" for :8000
    rc.recommend(user_id=42, k=10)                       # a known user
    rc.recommend(ratings={50: 5.0, 172: 4.0}, k=10)      # anyone, folded in without retraining

Transient failures (server restarting, connection refused, a Python stub being restarted by
the server's supervisor) are retried with capped exponential backoff and jitter; a request's
own error (bad input) is raised at once. Recommending has no side effects, so a retry is safe.
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import numpy as np

from server.admin import admin_headers

MODEL = "recommend"
# Substrings of errors that say "try again later", never "your request is wrong".
TRANSIENT = ("StatusCode.UNAVAILABLE", "is not healthy", "Connection refused", "connection reset",
             "Broken pipe", "failed to connect", "Socket closed", "Server is stopping", "timed out",
             "StatusCode.DEADLINE_EXCEEDED", "unexpected EOF", "Connection aborted")
GRPC_CHANNEL = [("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1),
                # Reconnect to a restarted server within a second, not gRPC's default of up to 120 s.
                ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000)]


def is_transient(error: BaseException) -> bool:
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    text = f"{type(error).__name__}: {error}".lower()
    return any(t.lower() in text for t in TRANSIENT)


@dataclass
class Recommendation:
    item_ids: list[int]
    scores: list[float]
    titles: list[str]
    unknown_items: int


class RecommenderClient:
    def __init__(self, url: str = "127.0.0.1:8001", protocol: str = "grpc", timeout_s: float = 10.0,
                 model: str = MODEL, retries: int = 10, backoff_s: float = 0.05, backoff_max_s: float = 2.0,
                 admin_key: str | None = None):
        """`retries` extra attempts on transient errors, sleeping backoff_s, 2x, 4x ... (at most
        backoff_max_s, with jitter): the defaults ride out about 11 s of server restart.
        `admin_key` is needed only for `reload` (see `aerec serve --admin-key-file`)."""
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        self.protocol, self.url, self.timeout_s, self.model = protocol, url, timeout_s, model
        self.retries, self.backoff_s, self.backoff_max_s, self.admin_key = retries, backoff_s, backoff_max_s, admin_key
        self.retried = 0  # transient failures ridden out so far (for monitoring)
        if protocol == "grpc":
            import tritonclient.grpc as mod
            self._client = mod.InferenceServerClient(url, channel_args=GRPC_CHANNEL)
        else:
            import tritonclient.http as mod
            self._client = mod.InferenceServerClient(url, network_timeout=timeout_s, connection_timeout=timeout_s)
        self._mod = mod

    # -- requests ---------------------------------------------------------------------------
    def _inputs(self, user_id, ratings, k):
        if user_id is None and not ratings:
            raise ValueError("give user_id, ratings, or both")
        arrays = {"TOP_K": (np.array([[k]], np.int32), "INT32")}
        if user_id is not None:
            arrays["USER_ID"] = (np.array([[user_id]], np.int64), "INT64")
        if ratings:
            arrays["ITEM_IDS"] = (np.array([list(ratings)], np.int64), "INT64")
            arrays["RATINGS"] = (np.array([list(ratings.values())], np.float32), "FP32")
        inputs = []
        for name, (arr, dtype) in arrays.items():
            t = self._mod.InferInput(name, list(arr.shape), dtype)
            t.set_data_from_numpy(arr)
            inputs.append(t)
        return inputs

    @staticmethod
    def _parse(result) -> Recommendation:
        return Recommendation(
            item_ids=result.as_numpy("RECOMMENDED_IDS")[0].tolist(),
            scores=result.as_numpy("SCORES")[0].tolist(),
            titles=[t.decode("utf-8") for t in result.as_numpy("TITLES")[0]],
            unknown_items=int(result.as_numpy("UNKNOWN_ITEMS")[0, 0]),
        )

    def _delays(self):
        """Sleeps between attempts: capped exponential backoff with jitter (no thundering herd)."""
        delay = self.backoff_s
        for _ in range(self.retries):
            yield delay * random.uniform(0.5, 1.0)
            delay = min(delay * 2, self.backoff_max_s)

    def _retrying(self, call):
        for pause in self._delays():
            try:
                return call()
            except Exception as e:  # tritonclient and the transports raise many types
                if not is_transient(e):
                    raise
                self.retried += 1
                time.sleep(pause)
        return call()  # the last attempt's error, transient or not, reaches the caller

    def recommend(self, user_id: int | None = None, ratings: dict[int, float] | None = None,
                  k: int = 10) -> Recommendation:
        inputs = self._inputs(user_id, ratings, k)
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        return self._parse(self._retrying(lambda: self._client.infer(self.model, inputs, **kwargs)))

    def recommend_many(self, user_ids: list[int], k: int = 10) -> list[Recommendation]:
        """Many users with all requests in flight at once: the server batches them."""
        if self.protocol == "http":
            pending = [self._client.async_infer(self.model, self._inputs(u, None, k)) for u in user_ids]
            return [self._parse(p.get_result()) for p in pending]
        import queue
        done: queue.Queue = queue.Queue()
        for i, u in enumerate(user_ids):
            self._client.async_infer(self.model, self._inputs(u, None, k),
                                     callback=lambda result, error, i=i: done.put((i, result, error)),
                                     client_timeout=self.timeout_s)
        out = [None] * len(user_ids)
        for _ in user_ids:
            i, result, error = done.get(timeout=self.timeout_s * 2)
            if error is not None:
                raise error
            out[i] = self._parse(result)
        return out

    async def recommend_async(self, user_id: int | None = None, ratings=None, k: int = 10) -> Recommendation:
        """asyncio form, over tritonclient's own aio clients."""
        if self.protocol == "grpc":
            import tritonclient.grpc.aio as aio
        else:
            import tritonclient.http.aio as aio
        client = aio.InferenceServerClient(self.url)
        inputs = self._inputs(user_id, ratings, k)
        try:
            for pause in self._delays():
                try:
                    return self._parse(await client.infer(self.model, inputs))
                except Exception as e:
                    if not is_transient(e):
                        raise
                    self.retried += 1
                    await asyncio.sleep(pause)
            return self._parse(await client.infer(self.model, inputs))
        finally:
            await client.close()

    # -- server state -----------------------------------------------------------------------
    def healthy(self) -> bool:
        try:
            return bool(self._client.is_server_live() and self._client.is_server_ready()
                        and self._client.is_model_ready(self.model))
        except Exception:  # unreachable server: not healthy, whatever the transport raised
            return False

    def reload(self, models: list[str] | None = None) -> list[str]:
        """Load the newest versions in the server's repository (every model, or `models`),
        networks and steps before the ensemble. Triton loads each new version beside the served
        one and switches when it is ready, so requests keep succeeding. Needs the admin key."""
        if not self.admin_key:
            raise PermissionError("reload needs the server's admin key (aerec serve --admin-key-file)")
        headers = admin_headers(self.admin_key, self.protocol)
        if models is None:
            index = self._client.get_model_repository_index(headers=headers)
            names = ([m.name for m in index.models] if self.protocol == "grpc" else [m["name"] for m in index])
            models = sorted(set(names), key=lambda n: (n == self.model, n))  # the ensemble last
        for name in models:
            self._client.load_model(name, headers=headers)
        return models

    def metadata(self) -> dict:
        meta = self._client.get_model_metadata(self.model)
        if self.protocol == "grpc":
            from google.protobuf.json_format import MessageToDict
            return MessageToDict(meta)
        return meta
