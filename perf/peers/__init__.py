"""The servers a user would pick instead of Triton, serving the same networks with the same code
(perf.peers.core) over HTTP/JSON, each with its own batching on as its docs recommend:
Ray Serve (`@serve.batch`), LitServe (max_batch_size, batch_timeout), and FastAPI + uvicorn
with a hand-written asyncio micro-batcher. `make perf` measures them beside Triton.
"""
PEERS = ("fastapi", "litserve", "ray_serve")
