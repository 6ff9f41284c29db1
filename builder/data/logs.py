"""Interaction logs (and generic rating tables) from CSV, TSV or Parquet: your own data.

A log is one row per event: a user, an item and optionally a time and a value. Its columns are
found by name (case-insensitive) unless named in the `--data` URI:

    csv:PATH | tsv:PATH | parquet:PATH [?OPTION=VALUE&...]

    user=COL     the user id column    (default: the first of USER_NAMES in the header)
    item=COL     the item id column    (ITEM_NAMES)
    time=COL     event time: epoch seconds or ISO-8601 text (TIME_NAMES; none: no time)
    weight=COL   implicit feedback: each event's weight, > 0 (WEIGHT_NAMES); naming a column
                 here reads it as weights even when it is called `rating`
    rating=COL   explicit feedback: a rating per row (RATING_NAMES)
    repeats=sum|count|last   implicit only: a (user, item) pair's value from its events: the sum
                 of their weights (default), their number, or the latest event's weight
    scale=LO:HI  explicit only: the rating scale (default: read from the ratings, logged)

With a rating column the table is explicit ratings (a re-rated pair keeps its latest rating, the
count dropped is logged); otherwise it is implicit feedback: every event is a positive of
weight 1.0 (or its weight column's value). Events of weight 0 are dropped (counted in the log).
Each stored pair's time is its first event's: a top-N model is scored on items new to a user,
and an item seen before a split's cut-off is not new after it.

Ids keep the file's strings unless every id of the column is a canonical integer (see
builder/data/ids.py). A plain path ending in .csv, .csv.gz, .tsv, .tsv.gz or .parquet reads the
same way (builder/data/sources.py sends MovieLens' own ratings.csv to its loader first).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from builder.data import tables
from builder.data.errors import DataFormatError
from builder.data.ids import encode_ids
from builder.data.ratings import EXPLICIT, IMPLICIT, Ratings, infer_scale, validate

log = logging.getLogger(__name__)

FORMATS = {"csv": ",", "tsv": "\t", "parquet": None}
# Header names each role is recognised by, in order of preference (compared lower-cased).
USER_NAMES = ("user_id", "userid", "user", "customer_id", "customerid", "customer", "visitor_id", "visitorid",
              "client_id", "member_id", "account_id", "uid")
ITEM_NAMES = ("item_id", "itemid", "item", "movieid", "movie_id", "product_id", "productid", "product", "sku",
              "article_id", "asin", "isbn", "track_id", "song_id", "book_id", "content_id", "iid")
TIME_NAMES = ("timestamp", "ts", "time", "event_time", "event_timestamp", "datetime", "date", "created_at")
WEIGHT_NAMES = ("weight", "count", "quantity", "qty", "plays", "play_count", "clicks")
RATING_NAMES = ("rating", "score", "stars")
ROLES = {"user": USER_NAMES, "item": ITEM_NAMES, "time": TIME_NAMES, "weight": WEIGHT_NAMES,
         "rating": RATING_NAMES}
REPEATS = ("sum", "count", "last")


@dataclass
class LogSpec:
    """What to read: the file, its format and the options of the `--data` URI."""
    path: Path
    format: str                                   # csv | tsv | parquet
    columns: dict = field(default_factory=dict)  # role (user, item, time, weight, rating) -> column
    repeats: str = "sum"
    scale: tuple[float, float] | None = None


def split_uri(spec: str) -> tuple[str, str, str]:
    """`FORMAT:PATH[?OPTIONS]` -> (FORMAT, PATH, OPTIONS or ""), options not parsed. Raises
    DataFormatError for a format other than csv, tsv, parquet."""
    fmt, _, body = spec.partition(":")
    if fmt not in FORMATS:
        raise DataFormatError(spec, f"unknown format {fmt!r}; use csv:, tsv: or parquet:")
    path, mark, query = body.rpartition("?")
    if not mark or "=" not in query:  # a '?' in the file name, not options
        path, query = body, ""
    return fmt, path, query


def parse_spec(spec: str) -> LogSpec:
    """`FORMAT:PATH[?OPTION=VALUE&...]` (the module docstring lists the options) -> LogSpec.
    Raises DataFormatError for an unknown option or a bad value."""
    fmt, path, query = split_uri(spec)
    out = LogSpec(Path(path), fmt)
    for option in filter(None, query.split("&")):
        key, _, value = option.partition("=")
        if key in ROLES:
            if not value:
                raise DataFormatError(path, f"option {key}= in {spec!r} names no column")
            out.columns[key] = value
        elif key == "repeats":
            if value not in REPEATS:
                raise DataFormatError(path, f"repeats={value!r} in {spec!r}: use sum, count or last")
            out.repeats = value
        elif key == "scale":
            out.scale = parse_scale(value, path, spec)
        else:
            raise DataFormatError(path, f"unknown option {key!r} in {spec!r}; options are "
                                  f"{', '.join(f'{r}=COL' for r in ROLES)}, repeats=sum|count|last, scale=LOW:HIGH")
    if "weight" in out.columns and "rating" in out.columns:
        raise DataFormatError(path, "weight= and rating= both given: a log is implicit (weights) or explicit "
                              "(ratings); name one")
    return out


def parse_scale(value: str, path, spec: str) -> tuple[float, float]:
    """`LOW:HIGH` -> (LOW, HIGH) with 0 < LOW < HIGH; DataFormatError otherwise."""
    low, sep, high = value.replace("..", ":").partition(":")
    try:
        scale = (float(low), float(high))
    except ValueError:
        scale = None
    if not sep or scale is None or not 0 < scale[0] < scale[1]:
        raise DataFormatError(path, f"scale {value!r} in {spec!r}: expected LOW:HIGH with 0 < LOW < HIGH, "
                              "e.g. scale=1:10 (0 marks 'not rated', so ratings start above it)")
    return scale


def format_of(data: str) -> str | None:
    """The table format ("csv", "tsv" or "parquet") a `--data` word reads as: a URI's own, or
    the one a plain path's name implies; None for anything else (ml-100k, u.data, Netflix)."""
    if data.partition(":")[0] in FORMATS:
        return data.partition(":")[0]
    spec = spec_for_path(data)
    return spec.format if spec is not None else None


def spec_for_path(path) -> LogSpec | None:
    """The LogSpec a plain path's name implies (.csv, .csv.gz, .tsv, .tsv.gz, .parquet, .pq),
    or None for another name."""
    name = Path(path).name.lower().removesuffix(".gz")
    for suffix, fmt in ((".csv", "csv"), (".tsv", "tsv"), (".parquet", "parquet"), (".pq", "parquet")):
        if name.endswith(suffix):
            return LogSpec(Path(path), fmt)
    return None


def find_columns(found: list[str], given: dict, path, fmt: str = "csv") -> dict:
    """role -> column of the file: the ones `given`, the rest recognised by name (`fmt`: the
    file's format, for the URI the message shows). Raises
    DataFormatError naming the columns found when a given column is absent or no user or item
    column is found, or when both a rating and a weight column are found and neither is given."""
    lower = {c.lower(): c for c in reversed(found)}  # the first of equal names wins
    other = next((sep for sep in (";", "|", "\t", ",") if len(found) == 1 and sep in found[0]), None)
    if other is not None:   # one column: the file is separated by another character
        shown = {"\t": "a tab", ";": "';'", "|": "'|'", ",": "','"}[other]
        hint = (f"read it as tsv:{path}" if other == "\t" else f"read it as csv:{path}" if other == ","
                else "save it with commas (csv) or tabs (tsv): aerec reads no other separator")
        expected = {"csv": "commas", "tsv": "tabs"}.get(fmt, fmt)
        raise DataFormatError(path, f"the header {found[0]!r} is one column: the file is separated by {shown}, "
                                    f"not by {expected}; {hint}", 1)
    for role, col in given.items():
        if col not in found and col.lower() not in lower:
            raise DataFormatError(path, f"no column {col!r} (given as {role}=); the header has {found}", 1)
    cols = {role: col if col in found else lower[col.lower()] for role, col in given.items()}
    taken = set(cols.values())
    value_given = {"weight", "rating"} & set(given)
    for role, names in ROLES.items():
        if role in cols or (role in ("weight", "rating") and value_given):
            continue
        match = next((lower[n] for n in names if n in lower and lower[n] not in taken), None)
        if match is not None:
            cols[role] = match
            taken.add(match)
    for role in ("user", "item"):
        if role not in cols:
            names = ", ".join(ROLES[role][:6])
            raise DataFormatError(path, f"no {role} column: the header has {found}; name it with {role}=COL, "
                                  f"as in {fmt}:{path}?{role}=COL (recognised names: {names}, ...)", 1)
    if "weight" in cols and "rating" in cols:
        raise DataFormatError(path, f"both a rating column ({cols['rating']!r}) and a weight column "
                              f"({cols['weight']!r}) found; name the one to use: rating={cols['rating']} "
                              f"(explicit ratings) or weight={cols['weight']} (implicit feedback)", 1)
    return cols


class _Where:
    """Names the place of row i: a delimited file's line (found on demand) or a Parquet row."""

    def __init__(self, spec: LogSpec):
        self.spec = spec

    def __getitem__(self, i: int) -> int | None:  # validate() reads line_of_row[i]
        return tables.line_of_row(self.spec.path, FORMATS[self.spec.format], int(i))

    def error(self, i: int, message: str) -> DataFormatError:
        if self.spec.format == "parquet":
            return DataFormatError(self.spec.path, f"{tables.parquet_where(self.spec.path, int(i))}: {message}")
        return DataFormatError(self.spec.path, message, self[i])


def _read(spec: LogSpec, cols: dict) -> pa.Table:
    """The table of the roles' columns, renamed to the roles. Delimited text: ids as strings,
    time as int64 and values as float64 first (the fast path), all as text where that fails, so
    the field that failed is found and named."""
    if spec.format == "parquet":
        t = tables.read_parquet(spec.path, list(dict.fromkeys(cols.values())), (cols["user"], cols["item"]))
        return pa.table({role: t.column(col) for role, col in cols.items()})
    sep = FORMATS[spec.format]
    fast = {"user": pa.string(), "item": pa.string(), "time": pa.int64(), "weight": pa.float64(),
            "rating": pa.float64()}
    types = {col: fast[role] for role, col in cols.items()}
    try:
        t = tables.read_delimited(spec.path, sep, types)
    except pa.ArrowInvalid:
        t = tables.read_delimited(spec.path, sep, {col: pa.string() for col in cols.values()})
    return pa.table({role: t.column(col) for role, col in cols.items()})  # chunks kept: no copy


def _ids(column: pa.Array, role: str, where: _Where) -> tuple[np.ndarray, np.ndarray | None]:
    """One id column checked (no empty or missing id) and encoded (builder/data/ids.py)."""
    if column.null_count:
        raise where.error(int(np.argmax(column.is_null().to_numpy(zero_copy_only=False))), f"missing {role} id")
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
            or pa.types.is_integer(column.type) or pa.types.is_dictionary(column.type)):
        column = column.cast(pa.string())
    values, vocab = encode_ids(column)
    if vocab is not None and vocab[0] == "":  # "" sorts first
        raise where.error(int(np.argmax(values == 0)), f"empty {role} id")
    return values, vocab


def _numbers(column: pa.Array, role: str, where: _Where) -> np.ndarray:
    """float64 values of a weight or rating column; a missing or non-numeric field names its row."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        text = column.to_pandas()
        values = pd.to_numeric(text.str.strip(), errors="coerce").to_numpy(np.float64)
        bad = np.isnan(values) & text.str.strip().ne("").to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise where.error(i, f"non-numeric {role} {text.iloc[i]!r}")
    else:
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
    if np.isnan(values).any():
        raise where.error(int(np.argmax(np.isnan(values))), f"missing {role}")
    return values


def parse_times(column: pa.Array, where: _Where) -> np.ndarray:
    """int64 epoch seconds from a time column: integer or fractional epoch seconds, ISO-8601
    text (a time without a zone is read as UTC), or an Arrow timestamp or date. An empty or
    unparseable field is refused naming its row."""
    t = column.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        if column.null_count:
            raise where.error(int(np.argmax(column.is_null().to_numpy(zero_copy_only=False))), "missing time")
        seconds = pc.cast(column, pa.timestamp("s", tz=t.tz if pa.types.is_timestamp(t) else None), safe=False)
        return seconds.cast(pa.int64()).to_numpy(zero_copy_only=False)
    if pa.types.is_integer(t) and not column.null_count:
        return column.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
        if np.isnan(values).any():
            raise where.error(int(np.argmax(np.isnan(values))), "missing time")
        return np.floor(values).astype(np.int64)
    text = column.to_pandas().str.strip()
    numeric = pd.to_numeric(text, errors="coerce")
    seconds = np.floor(numeric.to_numpy(np.float64))
    rest = np.isnan(seconds)
    if rest.any():
        parsed = pd.to_datetime(text[rest], format="ISO8601", errors="coerce", utc=True)
        bad = parsed.isna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(rest)[np.argmax(bad)])
            what = "missing time" if not text.iloc[i] else f"unparseable time {text.iloc[i]!r}"
            raise where.error(i, f"{what} (expected epoch seconds or ISO-8601, e.g. 2024-05-01T12:00:00Z)")
        seconds[rest] = (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return seconds.astype(np.int64)


def read_log(spec: LogSpec | str) -> Ratings:
    """The events (or ratings) of a log file as a `Ratings` (see the module docstring).

    Implicit logs: `rating` holds each (user, item) pair's value by `spec.repeats`, `timestamp`
    the pair's first event, rows in the order pairs first appear. Explicit: as the other rating
    loaders (scale checked, a re-rated pair keeps its latest rating). Raises DataFormatError
    naming the file and line (Parquet: row group and row) for an empty or missing id, an
    unparseable time or value, a negative weight, and naming the columns found when no user or
    item column can be told; FileNotFoundError-like DataFormatError for a missing file."""
    if isinstance(spec, str):
        word = spec
        spec = parse_spec(word) if word.partition(":")[0] in FORMATS else spec_for_path(word)
        if spec is None:
            raise DataFormatError(word, "cannot tell the format from the name; use csv:PATH, tsv:PATH or parquet:PATH")
    path = tables.require_file(spec.path)
    found = tables.parquet_columns(path) if spec.format == "parquet" else tables.header(path, FORMATS[spec.format])
    cols = find_columns(found, spec.columns, path, spec.format)
    where = _Where(spec)
    t = _read(spec, cols)
    if t.num_rows == 0:
        raise DataFormatError(path, f"no events found (a header {found} and no rows)")
    # Each column is taken out of the table as it is converted, so its text is freed early.
    columns = {role: t.column(role) for role in cols}
    del t
    users, user_vocab = _ids(columns.pop("user"), "user", where)
    items, item_vocab = _ids(columns.pop("item"), "item", where)
    has_time = "time" in cols
    times = parse_times(columns.pop("time").combine_chunks(), where) if has_time else np.zeros(len(users), np.int64)
    explicit = "rating" in cols
    role = "rating" if explicit else "weight"
    values = _numbers(columns.pop(role).combine_chunks(), role, where) if role in columns else None
    if explicit:
        if spec.scale is None:
            spec.scale = infer_scale(values)
            if values.min() == values.max():   # one value: no scale to read, and likely no ratings at all
                log.warning("%s: every rating is %g, so rating scale %g..%g is assumed. If the rows are clicks, "
                            "views or purchases rather than ratings, read the file as an interaction log: leave "
                            "the rating column out, or name it as the weight (%s:PATH?weight=COLUMN)",
                            path, values.min(), *spec.scale, spec.format)
            else:
                log.warning("%s: rating scale %g..%g read from the data (ratings span %g..%g); state it to override "
                            "(%s:PATH?scale=LOW:HIGH)", path, *spec.scale, values.min(), values.max(), spec.format)
        frame = pd.DataFrame({"user": users, "item": items, "rating": values.astype(np.float32),
                              "timestamp": times}, copy=False)
        frame, n_dup = validate(frame, path, tuple(map(float, spec.scale)), where, error=where.error)
        return Ratings(frame, tuple(map(float, spec.scale)), str(path), {}, n_dup, EXPLICIT, has_time,
                       user_vocab, item_vocab)
    frame, dropped = aggregate_events(users, items, values, times, spec.repeats, where,
                                      len(user_vocab) if user_vocab is not None else None,
                                      len(item_vocab) if item_vocab is not None else None)
    if dropped:
        log.warning("%s: %d repeated events merged into their (user, item) pairs; each pair's value is the %s of "
                    "its events (repeats=%s)", path, dropped, {"sum": "summed weight", "count": "count",
                                                               "last": "latest weight"}[spec.repeats], spec.repeats)
    v = frame["rating"].to_numpy()
    scale = (float(min(1.0, v.min())), float(max(1.0, v.max())))
    return Ratings(frame, scale, str(path), {}, dropped, IMPLICIT, has_time, user_vocab, item_vocab)


def _dense_codes(ids: np.ndarray, n: int | None) -> tuple[np.ndarray, int]:
    """(codes 0..n-1, n) of an id column: string-id codes already are; integer ids are factorised."""
    if n is not None:
        return ids, n
    codes, uniques = pd.factorize(ids)
    return codes.astype(np.int64, copy=False), len(uniques)


def aggregate_events(users: np.ndarray, items: np.ndarray, weights: np.ndarray | None, times: np.ndarray,
                     repeats: str, where: _Where, n_user_codes: int | None = None,
                     n_item_codes: int | None = None) -> tuple[pd.DataFrame, int]:
    """One row per (user, item) pair, in the order pairs first appear: rating = the pair's value
    by `repeats` (sum of weights, count of events, or the latest event's weight: latest by time,
    then by file order), timestamp = its first event's time. `users` / `items`: int64 ids, or
    codes below `n_user_codes` / `n_item_codes` (string ids). Events of weight 0 are dropped
    first (logged); a negative or infinite weight is refused naming its row.
    Returns (frame with columns user, item, rating float32, timestamp int64; events merged away)."""
    if weights is not None:
        bad = ~np.isfinite(weights) | (weights < 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise where.error(i, f"weight {weights[i]:g}: weights must be finite and >= 0 (an event counts for "
                                 "its weight; 0 drops it)")
        zero = weights == 0
        if zero.any():
            log.warning("%s: %d events of weight 0 dropped (no signal)", where.spec.path, int(zero.sum()))
            keep = ~zero
            users, items, weights, times = users[keep], items[keep], weights[keep], times[keep]
            if not len(users):
                raise DataFormatError(where.spec.path, "every event has weight 0: no positives")
    n = len(users)
    user_code, _ = _dense_codes(users, n_user_codes)
    item_code, n_items = _dense_codes(items, n_item_codes)
    pair, _ = pd.factorize(user_code * n_items + item_code)  # pair numbers in first-appearance order
    del user_code, item_code
    n_pairs = int(pair.max()) + 1
    if n_pairs == n:  # no repeats: the events are the pairs
        value = np.ones(n, np.float32) if repeats == "count" or weights is None else weights.astype(np.float32)
        return pd.DataFrame({"user": users, "item": items, "rating": value, "timestamp": times}, copy=False), 0
    # A pair's first event is where its number first appears: where the running maximum rises.
    top = np.maximum.accumulate(pair)
    first = np.flatnonzero(np.r_[True, top[1:] > top[:-1]])
    del top
    if repeats == "sum" and weights is not None:
        value = np.bincount(pair, weights=weights, minlength=n_pairs)
    elif repeats in ("sum", "count"):
        value = np.bincount(pair, minlength=n_pairs).astype(np.float64)
    elif weights is None:  # last of events without weights: each weighs 1
        value = np.ones(n_pairs)
    else:  # the latest event: stable order by time, so ties keep file order; the last of each pair wins
        order = np.argsort(times, kind="stable")
        value = weights[pd.Series(order).groupby(pair[order]).last().to_numpy()]
    if np.all(times[1:] >= times[:-1]):  # a log in time order (the usual): the first event is the earliest
        start = times[first]
    else:
        start = np.full(n_pairs, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(start, pair, times)
    # copy=False: no block consolidation (a copy of every column, seconds at 20M rows)
    out = pd.DataFrame({"user": users[first], "item": items[first], "rating": value.astype(np.float32),
                        "timestamp": start}, copy=False)
    return out, n - n_pairs
