"""Turn the CLI's `--data` and `--split` words into a `Dataset`.

`--data` is one of:
- `ml-100k` (bundled);
- a ratings file whose name says its format: `u.data` (titles from `u.item` beside it),
  `ratings.dat` (`movies.dat`), `ratings.csv` (`movies.csv`), Netflix `combined_data_*.txt` or
  `mv_*.txt` (`movie_titles.txt` or `movie_titles.csv` beside the files or one folder above);
- a folder holding such files: the Netflix download's `training_set/` (or the folder above it),
  the Kaggle folder of `combined_data_*.txt`, or a MovieLens folder with one of the files above;
- a quoted glob, e.g. `'download/training_set/mv_*.txt'`: several Netflix files, one data set;
- `csv:PATH[?scale=LOW:HIGH]` for a generic CSV with a header user,item,rating[,timestamp].
  Without `scale` it is read from the data (the usual 1..5, 0.5..5, 1..10, 0.5..10 or 1..100
  scale holding every rating, else their min..max) and logged.
Text may be UTF-8 (with or without a byte-order mark), UTF-16 with a mark, or Latin-1, with
LF or CRLF line ends. Data with a single user or a single item is refused.

`--split`: `u1`..`u5`, `ua`, `ub`, `random[:FRACTION]`, `temporal:YYYY-MM-DD`,
`per-user[:FRACTION]`.
"""
from __future__ import annotations

import glob
from pathlib import Path

from builder.data.dataset import Dataset, build_dataset
from builder.data.errors import DataFormatError
from builder.data.loaders import (
    natural_key, csv_header, load_csv, load_netflix, load_ratings_csv, load_ratings_dat, load_udata,
    netflix_parts,
)
from builder.data.movielens100k import load_movielens_100k
from builder.data.ratings import Ratings, require_two_each
from builder.data.splits import (
    CANONICAL_ML100K, SplitError, split_canonical, split_per_user, split_random, split_temporal,
)

MOVIELENS_FILES = ("u.data", "ratings.dat", "ratings.csv")
NETFLIX_TITLES = ("movie_titles.txt", "movie_titles.csv")


def _is_netflix(path: Path) -> bool:
    return path.name.startswith(("combined_data", "mv_"))


def parse_csv_spec(spec: str) -> tuple[Path, tuple[float, float] | None]:
    """`csv:PATH[?scale=LOW:HIGH]` -> (PATH, scale or None to read it from the data)."""
    body = spec[len("csv:"):]
    path, mark, query = body.rpartition("?")
    if not mark or "=" not in query:  # a '?' in the file name, not options
        path, query = body, ""
    scale = None
    for option in filter(None, query.split("&")):
        key, _, value = option.partition("=")
        if key != "scale":
            raise DataFormatError(path, f"unknown option {key!r} in {spec!r}; the one option is scale=LOW:HIGH")
        low, sep, high = value.replace("..", ":").partition(":")
        try:
            scale = (float(low), float(high))
        except ValueError:
            scale = None
        if not sep or scale is None or not 0 < scale[0] < scale[1]:
            raise DataFormatError(path, f"scale {value!r} in {spec!r}: expected LOW:HIGH with 0 < LOW < HIGH, "
                                  "e.g. scale=1:10 (0 marks 'not rated', so ratings start above it)")
    return Path(path), scale


def _netflix_titles(files: list[Path]) -> Path | None:
    """`movie_titles.txt` or `.csv` beside the rating files, else one folder above."""
    folder = files[0].parent
    for where in (folder, folder.parent):
        for name in NETFLIX_TITLES:
            if (where / name).is_file():
                return where / name
    return None


def resolve_files(spec: str) -> list[Path]:
    """The rating files a `--data` path, folder or glob names (not checked to exist)."""
    if glob.has_magic(spec):
        files = sorted((Path(f) for f in glob.glob(spec) if Path(f).is_file()), key=natural_key)
        if not files:
            raise DataFormatError(spec, "no file matches this pattern")
        return files
    path = Path(spec)
    if not path.is_dir():
        return [path]
    for folder in (path, path / "training_set"):
        if folder.is_dir() and (parts := netflix_parts(folder)):
            return parts
    known = [path / n for n in MOVIELENS_FILES if (path / n).is_file()]
    if len(known) == 1:
        return known
    found = f"; it holds {', '.join(p.name for p in known)}: name one" if known else ""
    raise DataFormatError(path, "folder holds no ratings file aerec knows (Netflix mv_*.txt or "
                          f"combined_data_*.txt, or one of {', '.join(MOVIELENS_FILES)}){found}")


def load_source(spec: str) -> Ratings:
    """The ratings a `--data` word names (see the module docstring for the forms)."""
    if spec in ("ml-100k", "ml100k"):
        return load_movielens_100k()
    if spec.startswith("csv:"):
        p, scale = parse_csv_spec(spec)
        ts = "timestamp" if "timestamp" in csv_header(p) else None
        return load_csv(p, "user", "item", "rating", timestamp=ts, scale=scale)
    files = resolve_files(spec)
    if all(_is_netflix(f) for f in files):
        return load_netflix(files, _netflix_titles(files))
    if len(files) > 1:
        raise DataFormatError(spec, f"matches {len(files)} files; several files load as one data set only "
                              "for the Netflix Prize (mv_*.txt or combined_data_*.txt)")
    p = files[0]
    name = p.name
    sibling = lambda n: p.with_name(n) if p.with_name(n).is_file() else None  # noqa: E731
    if name.endswith(".data"):
        return load_udata(p, sibling("u.item"))
    if name.endswith(".dat"):
        return load_ratings_dat(p, sibling("movies.dat"))
    if name.endswith(".csv"):
        return load_ratings_csv(p, sibling("movies.csv"))
    raise DataFormatError(p, "cannot tell the format from the file name; use csv:PATH for a "
                          "generic CSV with a header user,item,rating[,timestamp]")


def make_split(ratings: Ratings, split: str, seed: int = 0):
    """(train, test) Ratings of `ratings` by the split word: u1..u5/ua/ub (ML-100K's canonical files), random[:F]
    (seeded, F of ratings to test, default 0.1), temporal:YYYY-MM-DD (ratings from that day on to test),
    per-user[:F] (F of each user's ratings, default 0.2). Raises SplitError for an unknown or incomplete word."""
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
    """Load `data`, split it, and index it as a `Dataset` named DATA/SPLIT.

    `data`: ml-100k, a ratings file (u.data, ratings.dat, ratings.csv, Netflix
    combined_data_*.txt), a folder or quoted glob of Netflix mv_*.txt files, or
    csv:PATH[?scale=LO:HI] (see the module docstring); `split`: see make_split; `seed`: for the
    random splits. The Dataset's train and test are users x items CSR float32 matrices of raw
    ratings (0: unrated) over the same id maps. Raises DataFormatError (a ValueError naming the
    file and line) for unreadable data or data with one user or one item, SplitError for a bad
    split word, FileNotFoundError for a missing path."""
    ratings = load_source(data)
    require_two_each(ratings)  # before splitting, which would fail less clearly
    train, test = make_split(ratings, split, seed)
    return build_dataset(ratings, train, test, f"{data}/{split}")
