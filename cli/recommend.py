"""`aerec recommend`: top-K from a running server, for a known user or a new user's history.

Ids are given as text; the client sends them as the served catalogue has them (integers or
strings, read from the model's metadata)."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Optional

import typer

from cli.common import fail


def print_list(rec, predicted_ratings: bool = True) -> None:
    """A served list (client.Recommendation) as a table: rank, item id, title, score, and the
    predicted rating where the server has a rating model and `predicted_ratings` (NaN, a
    prediction from no rating at all, shows as "-"; a list of none, not at all). The title
    column is left out where the catalogue has no titles (they are then the ids again, as for
    an interaction log)."""
    from rich.console import Console
    from rich.table import Table
    titled = any(title != str(item) for item, title in zip(rec.item_ids, rec.titles))
    predicted = rec.predicted_ratings if predicted_ratings else None
    if predicted is not None and all(math.isnan(p) for p in predicted):   # a cold start's: none
        predicted = None
    t = Table("#", "item", *(["title"] if titled else []), "score",
              *(["predicted rating"] if predicted is not None else []))
    for i, (item, title, score) in enumerate(zip(rec.item_ids, rec.titles, rec.scores), 1):
        t.add_row(str(i), str(item), *([title] if titled else []), f"{score:.3f}",
                  *(["-" if math.isnan(predicted[i - 1]) else f"{predicted[i - 1]:.2f}"]
                    if predicted is not None else []))
    Console().print(t)


def id_list(values: list[str], files: list[Path]) -> list[str] | None:
    """Item ids from comma-separated `values` ("1,2", repeatable) and `files` (one id per line,
    blank lines skipped); None when neither is given. Raises OSError for a file not read."""
    if not values and not files:
        return None
    ids = [v.strip() for text in values for v in text.split(",") if v.strip()]
    for f in files:
        ids += [line.strip() for line in Path(f).read_text(encoding="utf-8").splitlines() if line.strip()]
    return ids


def recommend(
    user: Optional[str] = typer.Option(None, help="a known user's raw id (e.g. 42, or u42 in a catalogue of "
                                                  "string ids)"),
    rate: list[str] = typer.Option([], help="ITEM=RATING (repeatable): a new user's ratings"),
    seen: list[str] = typer.Option([], help="ITEM (repeatable): an item in a new user's history, without a "
                                            "rating (counted at the scale's top)"),
    k: int = typer.Option(10, "--top-k", "-k", help="how many recommendations"),
    exclude: list[str] = typer.Option([], help="ITEM,ITEM,... (repeatable): items never to recommend"),
    exclude_file: list[Path] = typer.Option([], "--exclude-file", help="a file of item ids to exclude, one a line"),
    include: list[str] = typer.Option([], help="ITEM,ITEM,... (repeatable): the only items that may be recommended"),
    include_file: list[Path] = typer.Option([], "--include-file",
                                            help="a file of the only item ids that may be recommended, one a line"),
    url: str = typer.Option("127.0.0.1:8001", help="server address host:port; several replicas separated by "
                                                   "commas (balanced, failing over from a dead one)"),
    protocol: str = typer.Option("grpc", help="grpc | http"),
    split: Optional[str] = typer.Option(None, help="PIPELINE=SHARE,... (e.g. recommend=0.5,recommend_previous=0.5): "
                                                   "the user goes to one pipeline, always the same"),
):
    """Top-K recommendations from a running server, as a table of titles, scores and (where the
    server has a rating model) predicted ratings."""
    from client import RecommenderClient
    from client.sdk import parse_split
    try:
        # rsplit: an item id may itself hold "=" (string ids); the rating never does.
        pairs = [(a, float(b)) for a, b in (r.rsplit("=", 1) for r in rate)]
    except ValueError:
        fail(f"--rate takes ITEM=RATING, e.g. --rate 50=5; got {rate}")
    # An item given twice is refused here, as the server refuses it.
    for flag, items in (("--rate", [a for a, _ in pairs]), ("--seen", seen)):
        twice = [i for i, n in Counter(items).items() if n > 1]
        if twice:
            fail(f"{flag} gives item {twice[0]} more than once: give each item once")
    ratings = dict(pairs)
    if ratings and seen:
        fail("give --rate (items with ratings) or --seen (items without), not both")
    if user is None and not ratings and not seen:
        fail("give --user, --rate or --seen")
    try:
        excluded, included = id_list(exclude, exclude_file), id_list(include, include_file)
    except OSError as e:
        fail(f"cannot read an id file: {e}")
    if included == []:
        fail("--include/--include-file gave no item id: nothing could be recommended")
    try:
        client = RecommenderClient(url, protocol, split=None if split is None else parse_split(split))
    except ValueError as e:
        fail(str(e))
    try:
        rec = client.recommend(user_id=user, ratings=ratings or None, k=k, items=seen or None,
                               exclude=excluded, include=included)
    except Exception as e:  # the server's own message names the problem
        fail(str(e))
    # --seen alone sends no rating: the rater would predict from a history of top ratings only
    from_seen_alone = bool(seen) and user is None
    print_list(rec, predicted_ratings=not from_seen_alone)
    if split is not None:
        typer.echo(f"answered by {rec.model}" + (f" (version {rec.model_version})" if rec.model_version else ""))
    if rec.source == "popularity":
        # Name the id: an id the model never saw (a typo, another catalogue's id) lands here too
        why = f"user {user} is not one it was trained on, or has no positive rating in its history" \
            if user is not None and not (ratings or seen) else "it has nothing to rank this user by"
        typer.echo(f"the most popular items (a cold start): {why}")
    if rec.unknown_items:
        history = "seen" if seen else "rated"   # --rate and --seen never come together
        sent = history if excluded is None and included is None else "sent (history, --exclude, --include)"
        typer.echo(f"{rec.unknown_items} {sent} item id(s) unknown to the model were skipped")
    if not rec.complete:  # rated items are never recommended, nor those the rules keep out
        rules = "" if excluded is None and included is None else " that the rules allow"
        typer.echo(f"only {rec.n_recommended} of {k} recommended: no other unrated item{rules} is left")
    if seen and rec.predicted_ratings is not None:
        # The rater reads each seen item as a top rating, so it predicts near the top for everything.
        typer.echo("no predicted ratings: --seen items carry no rating to predict from; send --rate ITEM=RATING"
                   if from_seen_alone else "predicted ratings take each --seen item as rated at the scale's "
                   "top: they run high; send --rate ITEM=RATING for ratings this user would give")


def similar(
    item: list[str] = typer.Option(..., help="ITEM (repeatable): a seed item; several: items like all of them"),
    top_k: int = typer.Option(10, "--top-k", "-k", help="how many similar items"),
    exclude: list[str] = typer.Option([], help="ITEM,ITEM,... (repeatable): items never to return"),
    include: list[str] = typer.Option([], help="ITEM,ITEM,... (repeatable): the only items that may be returned"),
    url: str = typer.Option("127.0.0.1:8001", help="server address host:port; several replicas separated by "
                                                   "commas"),
    protocol: str = typer.Option("grpc", help="grpc | http"),
):
    """The items most similar to the seed items (the server's `similar` model: what its top-N
    ranker scores highest for a user whose history is the seeds), as a table of ids, titles and
    scores. The seeds, the rules' items and the repository's blocklist are never listed."""
    from client import RecommenderClient
    excluded, included = id_list(exclude, []), id_list(include, [])
    try:
        client = RecommenderClient(url, protocol)
        rec = client.similar([i.strip() for i in item], k=top_k, exclude=excluded, include=included)
    except Exception as e:  # the server's own message names the problem
        fail(str(e))
    print_list(rec)
    if rec.unknown_items:
        typer.echo(f"{rec.unknown_items} --exclude/--include item id(s) unknown to the model were skipped")
    if not rec.complete:
        typer.echo(f"only {rec.n_recommended} of {top_k} listed: no other item is allowed")
