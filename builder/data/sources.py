"""Turn the CLI's `--data` and `--split` words into a `Dataset`.

`--data`: `ml-100k` (bundled) or a path whose name says its format (`u.data`, `ratings.dat`,
`ratings.csv`, Netflix `combined_data_*.txt` / `mv_*.txt`), or `csv:PATH` for a generic CSV
with columns user,item,rating[,timestamp]. `--split`: `u1`..`u5`, `ua`, `ub`,
`random[:FRACTION]`, `temporal:YYYY-MM-DD`, `per-user[:FRACTION]`.
"""
from __future__ import annotations

from pathlib import Path

from builder.data.dataset import Dataset, build_dataset
from builder.data.errors import DataFormatError
from builder.data.loaders import load_csv, load_netflix, load_ratings_csv, load_ratings_dat, load_udata
from builder.data.movielens100k import load_movielens_100k
from builder.data.ratings import Ratings
from builder.data.splits import (
    CANONICAL_ML100K, SplitError, split_canonical, split_per_user, split_random, split_temporal,
)


def load_source(spec: str) -> Ratings:
    if spec in ("ml-100k", "ml100k"):
        return load_movielens_100k()
    if spec.startswith("csv:"):
        p = Path(spec[4:])
        with p.open() as f:
            ts = "timestamp" if "timestamp" in f.readline() else None
        return load_csv(p, "user", "item", "rating", timestamp=ts)
    p = Path(spec)
    name = p.name
    sibling = lambda n: p.with_name(n) if p.with_name(n).is_file() else None  # noqa: E731
    if name.endswith(".data"):
        return load_udata(p, sibling("u.item"))
    if name.endswith(".dat"):
        return load_ratings_dat(p, sibling("movies.dat"))
    if name.startswith("combined_data") or name.startswith("mv_"):
        return load_netflix(p, sibling("movie_titles.csv"))
    if name.endswith(".csv"):
        return load_ratings_csv(p, sibling("movies.csv"))
    raise DataFormatError(p, "cannot tell the format from the file name; use csv:PATH for a "
                          "generic CSV with a header user,item,rating[,timestamp]")


def make_split(ratings: Ratings, split: str, seed: int = 0):
    kind, _, arg = split.partition(":")
    if kind in CANONICAL_ML100K:
        return split_canonical(ratings, kind)
    if kind == "random":
        return split_random(ratings, float(arg or 0.1), seed)
    if kind == "temporal":
        if not arg:
            raise SplitError("temporal split needs a cut-off: temporal:YYYY-MM-DD")
        return split_temporal(ratings, arg)
    if kind == "per-user":
        return split_per_user(ratings, float(arg or 0.2), seed)
    raise SplitError(f"unknown split {split!r}; use u1..u5, ua, ub, random[:F], temporal:DATE, per-user[:F]")


def load_dataset(data: str, split: str, seed: int = 0) -> Dataset:
    ratings = load_source(data)
    train, test = make_split(ratings, split, seed)
    return build_dataset(ratings, train, test, f"{data}/{split}")
