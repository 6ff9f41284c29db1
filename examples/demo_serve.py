"""The demo's serving half: start the embedded Triton on a repository, recommend, stop.

    python examples/demo_serve.py REPOSITORY

Each list is ranked by the repository's top-N model ("score") and shows the rating model's
predicted rating beside each title (a column left out when the repository has no rating model).
"""
import sys

from rich.console import Console
from rich.table import Table

from client import RecommenderClient
from server.launcher import TritonServer


def show(title, rec):
    ratings = rec.predicted_ratings
    t = Table("#", "item", "title", "score", *(["predicted rating"] if ratings is not None else []), title=title)
    for i, (item, name, score) in enumerate(zip(rec.item_ids, rec.titles, rec.scores)):
        t.add_row(str(i + 1), str(item), name, f"{score:.3f}", *([f"{ratings[i]:.2f}"] if ratings is not None else []))
    Console().print(t)


if __name__ == "__main__":
    with TritonServer(sys.argv[1]) as server:
        print(f"Triton ready: gRPC {server.grpc_url}, HTTP {server.http_url}")
        grpc, http = RecommenderClient(server.grpc_url, "grpc"), RecommenderClient(server.http_url, "http")
        new_user = {50: 5.0, 127: 5.0, 98: 4.0}  # Star Wars, The Godfather, The Silence of the Lambs
        for protocol, client in (("gRPC", grpc), ("HTTP", http)):
            show(f"known user 42 ({protocol})", client.recommend(user_id=42, k=5))
            show(f"a new user who loved Star Wars (50) and The Godfather (127) ({protocol})",
                 client.recommend(ratings=new_user, k=5))
    print("server stopped")
