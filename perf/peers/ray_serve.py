"""Ray Serve peer: one deployment whose `@serve.batch` method runs a batch of requests, as Ray
Serve's batching guide writes it (max_batch_size, batch_wait_timeout_s; max_ongoing_requests
above max_batch_size so a batch can fill). Ray Serve's HTTP proxy takes the requests.
"""

import os
from pathlib import Path

from perf.peers.core import RequestError, parse_body, to_http


def serve(repo: Path, port: int, threads: int, max_batch_size: int, batch_wait_timeout_s: float,
          ready=None) -> None:
    """Start Ray (this machine's cores, no dashboard), Serve's proxy on 127.0.0.1:`port` and the
    deployment at /recommend; calls `ready()` once it answers, then blocks until killed."""
    import time

    import ray
    from ray import serve as rs
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @rs.deployment(max_ongoing_requests=max(2 * max_batch_size, 32))
    class Recommend:
        def __init__(self, repo: str, threads: int, max_batch_size: int, wait_s: float):
            from perf.peers.core import Recommender
            self.recommender = Recommender(Path(repo), threads)
            # The decorator's values, set from the arguments (Ray's documented setters).
            self.batched.set_max_batch_size(max_batch_size)
            self.batched.set_batch_wait_timeout_s(wait_s)

        @rs.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
        async def batched(self, requests: list[dict]) -> list:
            return self.recommender.recommend(requests)

        async def __call__(self, request: Request):
            try:
                result = await self.batched(parse_body(await request.body()))
            except RequestError as e:
                result = e
            status, obj = to_http(result)
            return JSONResponse(obj, status_code=status)

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    rs.start(http_options={"host": "127.0.0.1", "port": port})
    rs.run(Recommend.bind(str(repo), threads, max_batch_size, batch_wait_timeout_s), route_prefix="/recommend")
    if ready:
        ready()
    while True:
        time.sleep(3600)
