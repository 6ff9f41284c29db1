"""`aerec recommend`: top-K from a running server, for a known user or a new user's history.

Ids are given as text; the client sends them as the served catalogue has them (integers or
strings, read from the model's metadata)."""
from __future__ import annotations

from typing import Optional

import typer

from cli.common import fail


def recommend(
    user: Optional[str] = typer.Option(None, help="a known user's raw id (e.g. 42, or u42 in a catalogue of "
                                                  "string ids)"),
    rate: list[str] = typer.Option([], help="ITEM=RATING (repeatable): a new user's ratings"),
    seen: list[str] = typer.Option([], help="ITEM (repeatable): an item in a new user's history, without a "
                                            "rating (counted at the scale's top)"),
    k: int = typer.Option(10, "-k", help="how many recommendations"),
    url: str = typer.Option("127.0.0.1:8001", help="server address host:port; several replicas separated by "
                                                   "commas (balanced, failing over from a dead one)"),
    protocol: str = typer.Option("grpc", help="grpc | http"),
):
    """Top-K recommendations from a running server, as a table of titles, scores and (where the
    server has a rating model) predicted ratings."""
    from rich.console import Console
    from rich.table import Table
    from client import RecommenderClient
    try:
        # rsplit: an item id may itself hold "=" (string ids); the rating never does.
        ratings = {a: float(b) for a, b in (r.rsplit("=", 1) for r in rate)}
    except ValueError:
        fail(f"--rate takes ITEM=RATING, e.g. --rate 50=5; got {rate}")
    if ratings and seen:
        fail("give --rate (items with ratings) or --seen (items without), not both")
    if user is None and not ratings and not seen:
        fail("give --user, --rate or --seen")
    try:
        client = RecommenderClient(url, protocol)
    except ValueError as e:
        fail(str(e))
    try:
        rec = client.recommend(user_id=user, ratings=ratings or None, k=k, items=seen or None)
    except Exception as e:  # the server's own message names the problem
        fail(str(e))
    predicted = rec.predicted_ratings
    t = Table("#", "item", "title", "score", *(["predicted rating"] if predicted is not None else []))
    for i, (item, title, score) in enumerate(zip(rec.item_ids, rec.titles, rec.scores), 1):
        t.add_row(str(i), str(item), title, f"{score:.3f}",
                  *([f"{predicted[i - 1]:.2f}"] if predicted is not None else []))
    Console().print(t)
    if rec.unknown_items:
        typer.echo(f"{rec.unknown_items} rated item id(s) unknown to the model were skipped")
    if not rec.complete:  # rated items are never recommended
        typer.echo(f"only {rec.n_recommended} of {k} recommended: no other unrated item is left")
