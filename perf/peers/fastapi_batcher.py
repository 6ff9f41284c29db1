"""The peer a careful engineer writes by hand: FastAPI on uvicorn, with an asyncio micro-batcher.

Requests wait in an asyncio queue; one task takes up to `max_batch_size` of them, waiting at
most `batch_wait_timeout_s` after the first for more, runs the batch in a worker thread (so the
event loop keeps reading requests meanwhile) and resolves each request's future. The same
knobs, and meaning, as Ray Serve's `@serve.batch`.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from perf.peers.core import Recommender, RequestError, parse_body, to_http


class MicroBatcher:
    """Collects single calls into batches for `fn` (a list of items -> a list of results, run
    in a thread). `max_batch_size` >= 1 calls per batch; `batch_wait_timeout_s` >= 0 seconds
    after a batch's first call to wait for more."""

    def __init__(self, fn, max_batch_size: int, batch_wait_timeout_s: float):
        if max_batch_size < 1 or batch_wait_timeout_s < 0:
            raise ValueError(f"max_batch_size must be >= 1 and the wait >= 0, got {max_batch_size}, "
                             f"{batch_wait_timeout_s}")
        self.fn, self.max_batch_size, self.wait = fn, max_batch_size, batch_wait_timeout_s
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None

    async def submit(self, item):
        """Queue one item; returns its result once its batch has run."""
        if self.task is None:  # created in the server's own event loop
            self.queue = asyncio.Queue()
            self.task = asyncio.create_task(self._loop())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((item, future))
        return await future

    async def _loop(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.wait
            while len(batch) < self.max_batch_size:
                try:
                    batch.append(self.queue.get_nowait())  # already waiting: no timer needed
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            items = [b[0] for b in batch]
            try:
                results = await loop.run_in_executor(None, self.fn, items)
            except Exception as e:  # a failed batch fails its calls, never the loop
                results = [e] * len(items)
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_exception(result) if isinstance(result, Exception) else future.set_result(result)


def make_app(repo: Path, threads: int = 0, max_batch_size: int = 16, batch_wait_timeout_s: float = 0.002):
    """The FastAPI app: POST /recommend (perf.peers.core's JSON), GET /health."""
    recommender = Recommender(repo, threads)
    batcher = MicroBatcher(recommender.recommend, max_batch_size, batch_wait_timeout_s)
    app = FastAPI()

    @app.get("/health")
    async def health():
        return {"ok": True}

    @app.post("/recommend")
    async def recommend(request: Request):
        try:
            result = await batcher.submit(parse_body(await request.body()))
        except RequestError as e:
            result = e
        status, obj = to_http(result)
        return JSONResponse(obj, status_code=status)

    return app


def serve(repo: Path, port: int, threads: int, max_batch_size: int, batch_wait_timeout_s: float,
          ready=None) -> None:
    """Run the app on 127.0.0.1:`port` until killed (uvicorn, one process, no access log)."""
    import uvicorn
    app = make_app(repo, threads, max_batch_size, batch_wait_timeout_s)
    if ready:
        app.add_event_handler("startup", ready)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
