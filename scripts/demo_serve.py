"""The demo's serving half: start the embedded Triton on a repository, recommend, stop.

    python scripts/demo_serve.py REPOSITORY
"""
import sys

from rich.console import Console
from rich.table import Table

from client import RecommenderClient
from server.launcher import TritonServer


def show(title, rec):
    t = Table("#", "item", "title", "predicted rating", title=title)
    for i, (item, name, score) in enumerate(zip(rec.item_ids, rec.titles, rec.scores), 1):
        t.add_row(str(i), str(item), name, f"{score:.2f}")
    Console().print(t)


if __name__ == "__main__":
    with TritonServer(sys.argv[1]) as server:
        print(f"Triton ready: gRPC {server.grpc_url}, HTTP {server.http_url}")
        grpc = RecommenderClient(server.grpc_url, "grpc")
        show("user 42 (gRPC)", grpc.recommend(user_id=42, k=5))
        show("user 196 (HTTP)", RecommenderClient(server.http_url, "http").recommend(user_id=196, k=5))
        show("a new user who loved Star Wars (50) and The Godfather (127)",
             grpc.recommend(ratings={50: 5.0, 127: 5.0, 98: 4.0}, k=5))
    print("server stopped")
