"""LitServe peer: a LitAPI whose batching LitServe does (max_batch_size, batch_timeout), as
LitServe's batching docs write it; `batch`/`unbatch` keep a list, since the requests' rows
are scattered into one dense batch by serving.requests, not stacked.

LitServe fails a whole batch when decode_request or encode_response raises, so a refused
request travels through the batch as its RequestError and its response is a 400 JSONResponse.
"""
from __future__ import annotations

from pathlib import Path

import litserve as ls
from fastapi.responses import JSONResponse

from perf.peers.core import Recommender, RequestError, parse_body, to_http


class RecommendAPI(ls.LitAPI):
    """POST /recommend (perf.peers.core's JSON) on a repository's networks."""

    def __init__(self, repo: Path, threads: int = 0, **kwargs):
        super().__init__(api_path="/recommend", **kwargs)
        self.repo, self.threads = Path(repo), threads

    def setup(self, device):
        self.recommender = Recommender(self.repo, self.threads)

    def decode_request(self, request):  # LitServe passes the body by this parameter's name
        try:
            return parse_body(request)
        except RequestError as e:
            return e

    def batch(self, inputs):
        return list(inputs)

    def predict(self, x):
        items = x if isinstance(x, list) else [x]   # max_batch_size 1: one request, unbatched
        valid = [i for i, t in enumerate(items) if not isinstance(t, RequestError)]
        out = list(items)
        for i, result in zip(valid, self.recommender.recommend([items[i] for i in valid]) if valid else []):
            out[i] = result
        return out if isinstance(x, list) else out[0]

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        status, obj = to_http(output)
        return obj if status == 200 else JSONResponse(obj, status_code=status)


def serve(repo: Path, port: int, threads: int, max_batch_size: int, batch_wait_timeout_s: float,
          ready=None) -> None:
    """LitServe on 127.0.0.1:`port`, one worker on the CPU, one API server; blocks until killed.
    (`ready` is unused: LitServe starts its own processes; callers poll the port.)"""
    api = RecommendAPI(repo, threads, max_batch_size=max_batch_size, batch_timeout=batch_wait_timeout_s)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=30)
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False, num_api_servers=1)
