"""Turn the CLI's `--data` and `--split` words into a `Dataset`.

`--data` is one of:
- `ml-100k` (bundled);
- a ratings file whose name says its format: `u.data` (titles from `u.item` beside it),
  `ratings.dat` (`movies.dat`), `ratings.csv` (`movies.csv`), Netflix `combined_data_*.txt` or
  `mv_*.txt` (`movie_titles.txt` or `movie_titles.csv` beside the files or one folder above);
- a folder holding such files: the Netflix download's `training_set/` (or the folder above it),
  the Kaggle folder of `combined_data_*.txt`, or a MovieLens folder with one of the files above;
- a quoted glob, e.g. `'download/training_set/mv_*.txt'`: several Netflix files, one data set;
- your own data, an interaction log or a rating table with a header, as a URI:
  `csv:PATH`, `tsv:PATH` or `parquet:PATH`, with options after a `?`, joined by `&`:
  `user=COL`, `item=COL`, `time=COL`, `weight=COL` (implicit feedback), `rating=COL` (explicit),
  `repeats=sum|count|last` (how a pair's repeated events combine; default sum: the count of
  events when there is no weight column), `scale=LOW:HIGH` (explicit ratings). Columns not named
  are recognised by their header names (user_id, userId, user, customer_id ...; item_id, itemId,
  movieId, product_id, sku, item ...; timestamp, ts, time, event_time ...; weight, count ...;
  rating ...), case-insensitive. With a rating column the data is explicit ratings (without
  `scale` it is read from the data: the usual 1..5, 0.5..5, 1..10, 0.5..10 or 1..100 scale
  holding every rating, else their min..max, logged); without one it is implicit feedback: every
  event a positive. Ids stay the strings in the file unless all of a column's ids are canonical
  integers. Details: builder/data/logs.py;
- a plain path ending in .csv, .csv.gz, .tsv, .tsv.gz or .parquet: the same as the URI of that
  format with no options, except that a CSV with MovieLens' header (userId,movieId,rating) reads
  as MovieLens `ratings.csv` (titles from `movies.csv` beside it).
Compression is told by the file's magic bytes (gzip), not its name. Text may be UTF-8 (with or
without a byte-order mark), UTF-16 with a mark, or Latin-1, with LF or CRLF line ends. Data with
a single user or a single item is refused.

`--split`: `u1`..`u5`, `ua`, `ub`, `random[:FRACTION]`, `temporal:DATE` (ISO date or time, or
epoch seconds), `per-user[:FRACTION]`, `last:N` (each user's N latest items by time).
"""
from __future__ import annotations

import glob
import re
from pathlib import Path

from builder.data.dataset import Dataset, build_dataset
from builder.data.errors import DataFormatError
from builder.data.loaders import (
    natural_key, csv_header, load_netflix, load_ratings_csv, load_ratings_dat, load_udata, netflix_parts,
)
from builder.data.logs import FORMATS, parse_spec, read_log, spec_for_path, split_uri
from builder.data.movielens100k import load_movielens_100k
from builder.data.ratings import Ratings, require_two_each
from builder.data.splits import (
    CANONICAL_ML100K, SplitError, split_canonical, split_last, split_per_user, split_random, split_temporal,
)
from builder.data.text_io import is_gzip

MOVIELENS_FILES = ("u.data", "ratings.dat", "ratings.csv", "ratings.csv.gz")
MOVIELENS_CSV_HEADER = ("userId", "movieId", "rating")
NETFLIX_TITLES = ("movie_titles.txt", "movie_titles.csv")


def _is_netflix(path: Path) -> bool:
    return path.name.startswith(("combined_data", "mv_"))


def parse_csv_spec(spec: str) -> tuple[Path, tuple[float, float] | None]:
    """`csv:PATH[?scale=LOW:HIGH]` -> (PATH, scale or None to read it from the data); the other
    options of builder.data.logs.parse_spec are accepted and ignored here."""
    log_spec = parse_spec(spec)
    return log_spec.path, log_spec.scale


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
    scheme = re.match(r"([A-Za-z][A-Za-z0-9]+):", spec)   # two letters at least: not a drive letter
    if scheme and not path.exists() and scheme.group(1).lower() in ("http", "https", "s3", "gs", "hdfs"):
        raise DataFormatError(spec, "aerec reads local files: download it first, then give its path")
    if scheme and not path.exists():
        raise DataFormatError(spec, f"unknown format {scheme.group(1)!r}; name the file as csv:PATH, tsv:PATH or "
                                    "parquet:PATH, or give a path ending in .csv, .tsv or .parquet")
    if spec in ("ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m") and not path.exists():
        raise DataFormatError(spec, f"only ml-100k is bundled; download {spec} from "
                                    "https://grouplens.org/datasets/movielens/ and give its ratings file "
                                    "(ratings.dat or ratings.csv) or its folder")
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


def source_files(spec: str) -> list[Path]:
    """The files a `--data` word reads (not checked to exist): a URI's PATH, else resolve_files';
    none for the bundled ml-100k. Raises DataFormatError as parse_spec and resolve_files do."""
    if spec in ("ml-100k", "ml100k"):
        return []
    if spec.partition(":")[0] in FORMATS:
        return [parse_spec(spec).path]
    return resolve_files(spec)


def absolute_spec(spec: str) -> str:
    """`spec` with its path made absolute, options kept (what a manifest records, so that it
    reads the same from any folder); ml-100k as it is."""
    if spec in ("ml-100k", "ml100k"):
        return spec
    if spec.partition(":")[0] in FORMATS:
        fmt, path, query = split_uri(spec)
        return f"{fmt}:{Path(path).resolve()}" + (f"?{query}" if query else "")
    return str(Path(spec).resolve())


def load_source(spec: str) -> Ratings:
    """The ratings a `--data` word names (see the module docstring for the forms)."""
    if spec in ("ml-100k", "ml100k"):
        return load_movielens_100k()
    if spec.partition(":")[0] in FORMATS:
        return read_log(parse_spec(spec))
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
    log_spec = spec_for_path(p)
    if log_spec is not None:
        if log_spec.format == "csv" and p.is_file() and _is_movielens_csv(p):
            return load_ratings_csv(p, sibling("movies.csv"))
        return read_log(log_spec)
    if not p.is_file():
        raise DataFormatError(p, "file not found")
    gz = "a gzip-compressed file whose name" if is_gzip(p) else "the file name"
    raise DataFormatError(p, f"cannot tell the format from {gz} (known: u.data, ratings.dat, .csv, .tsv, "
                          ".parquet, each also .gz); name it: csv:PATH, tsv:PATH or parquet:PATH")


def _is_movielens_csv(path: Path) -> bool:
    """A CSV whose header has MovieLens' ratings.csv columns (userId, movieId, rating)."""
    if path.stat().st_size == 0:
        return False
    try:
        header = csv_header(path)
    except (OSError, EOFError):  # a damaged gzip stream: the log reader names it
        return False
    return all(c in header for c in MOVIELENS_CSV_HEADER)


def make_split(ratings: Ratings, split: str, seed: int = 0):
    """(train, test) masks of `ratings` by the split word: u1..u5/ua/ub (ML-100K's canonical files), random[:F]
    (seeded, F of ratings to test, default 0.1), temporal:DATE (ratings from that time on to test; an ISO
    date or time, or epoch seconds), per-user[:F] (F of each user's ratings, default 0.2), last:N (each
    user's N latest items by time; needs a time column). Raises SplitError for an unknown or incomplete word."""
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
    if kind == "last":
        try:
            n = int(arg or 1)
        except ValueError:
            raise SplitError(f"last:N needs a whole number of items per user, got {arg!r}") from None
        return split_last(ratings, n)
    raise SplitError(f"unknown split {split!r}; use u1..u5, ua, ub, random[:F], temporal:DATE, per-user[:F], "
                     "last:N")


def load_dataset(data: str, split: str, seed: int = 0) -> Dataset:
    """Load `data`, split it, and index it as a `Dataset` named DATA/SPLIT.

    `data`: ml-100k, a ratings file (u.data, ratings.dat, ratings.csv, Netflix
    combined_data_*.txt), a folder or quoted glob of Netflix mv_*.txt files, a log or rating
    table (csv:PATH, tsv:PATH, parquet:PATH with options, or a path ending in .csv, .tsv,
    .parquet, optionally .gz; see the module docstring); `split`: see make_split; `seed`: for the
    random splits. The Dataset's train and test are users x items CSR float32 matrices of raw
    ratings, or for implicit feedback each pair's aggregated weight (0: no interaction), over the
    same id maps (sorted int64 or unicode ids). Raises DataFormatError (a ValueError naming the
    file and line) for unreadable data or data with one user or one item, SplitError for a bad
    split word, FileNotFoundError for a missing path."""
    ratings = load_source(data)
    require_two_each(ratings)  # before splitting, which would fail less clearly
    train, test = make_split(ratings, split, seed)
    return build_dataset(ratings, train, test, f"{data}/{split}")
