"""A small SDK over tritonclient for the `recommend` ensemble, gRPC or HTTP, sync or async.

    from client import RecommenderClient
    rc = RecommenderClient("127.0.0.1:8001")            # gRPC; protocol="http" for :8000
    rc.recommend(user_id=42, k=10)                       # a known user
    rc.recommend(ratings={50: 5.0, 172: 4.0}, k=10)      # anyone, folded in without retraining
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODEL = "recommend"


@dataclass
class Recommendation:
    item_ids: list[int]
    scores: list[float]
    titles: list[str]
    unknown_items: int


class RecommenderClient:
    def __init__(self, url: str = "127.0.0.1:8001", protocol: str = "grpc", timeout_s: float = 10.0,
                 model: str = MODEL):
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        self.protocol, self.url, self.timeout_s, self.model = protocol, url, timeout_s, model
        if protocol == "grpc":
            import tritonclient.grpc as mod
            self._client = mod.InferenceServerClient(url)
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

    def recommend(self, user_id: int | None = None, ratings: dict[int, float] | None = None,
                  k: int = 10) -> Recommendation:
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        return self._parse(self._client.infer(self.model, self._inputs(user_id, ratings, k), **kwargs))

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
        try:
            return self._parse(await client.infer(self.model, self._inputs(user_id, ratings, k)))
        finally:
            await client.close()

    # -- server state -----------------------------------------------------------------------
    def healthy(self) -> bool:
        try:
            return bool(self._client.is_server_live() and self._client.is_server_ready()
                        and self._client.is_model_ready(self.model))
        except Exception:  # unreachable server: not healthy, whatever the transport raised
            return False

    def metadata(self) -> dict:
        meta = self._client.get_model_metadata(self.model)
        if self.protocol == "grpc":
            from google.protobuf.json_format import MessageToDict
            return MessageToDict(meta)
        return meta
