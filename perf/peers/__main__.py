"""`python -m perf.peers KIND REPO --port N [--threads T] [--max-batch-size B] [--batch-wait-ms W]`:
serve REPO's `recommend` pipeline with peer KIND (fastapi, litserve, ray_serve) until killed."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from perf.peers import PEERS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=PEERS)
    p.add_argument("repo", type=Path, help="a repository `aerec repository` wrote")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    p.add_argument("--max-batch-size", type=int, default=16, help="requests per batch, at most")
    p.add_argument("--batch-wait-ms", type=float, default=2.0, help="wait for a batch to fill, at most")
    a = p.parse_args()
    # SIGTERM runs the exit handlers (Ray stops the processes it started).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if a.kind == "fastapi":
        from perf.peers.fastapi_batcher import serve
    elif a.kind == "litserve":
        from perf.peers.litserve_peer import serve
    else:
        from perf.peers.ray_serve import serve
    serve(a.repo, a.port, a.threads, a.max_batch_size, a.batch_wait_ms / 1000)


if __name__ == "__main__":
    main()
