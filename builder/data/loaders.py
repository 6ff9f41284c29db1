"""Readers for the rating file formats users actually have.

Each returns a `Ratings` in file order. Parsing is vectorised (pandas' C reader); a row that
will not parse is reported with its file line, never dropped silently. Every reader takes the
text as users save it: a byte-order mark (UTF-8 or UTF-16), else UTF-8, else Latin-1 (what
MovieLens and the Netflix Prize ship); LF or CRLF line ends; empty or whitespace-only lines.
"""
from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from builder.data.errors import DataFormatError, row_error
from builder.data.logs import LogSpec, read_log
from builder.data.ratings import Ratings, validate
from builder.data.tables import header
from builder.data.text_io import bom_encoding, decode_text, is_gzip, open_bytes

log = logging.getLogger(__name__)

ML_SCALE = (1.0, 5.0)
ML_HALF_STAR_SCALE = (0.5, 5.0)  # ML-10M and later allow half stars
NETFLIX_SCALE = (1.0, 5.0)


def read_text(path) -> str:
    """The whole text of a (small) metadata file, decoded by `decode_text`."""
    return decode_text(_require(path).read_bytes())


def csv_header(path, sep: str = ",") -> list[str]:
    """The column names in the first line of a delimited file (quotes and spaces removed);
    DataFormatError naming the file where there is none to read (tables.header)."""
    return header(_require(path), sep)


def _require(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataFormatError(path, "no ratings found (empty file)")
    return path


def _read_table(path: Path, sep: str, names: list[str], usecols: list[int], header_lines: int,
                encoding: str | None = None, width: int | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Read delimited text as strings; return the frame and each row's 1-based file line.

    `width` fixes the number of fields per row, so short rows read as missing fields (named
    by line later) and long rows are a parse error, instead of pandas guessing from line 1.
    `encoding` defaults to the file's byte-order mark, else UTF-8, falling back to Latin-1.
    Lines holding nothing or only whitespace are dropped (their numbers are kept for the rest).
    """
    width = width or max(usecols) + 1
    if encoding is None:
        with open_bytes(path) as f:
            encoding = bom_encoding(f.read(4))
    compression = "gzip" if is_gzip(path) else None
    for enc in [encoding] if encoding else ["utf-8", "latin-1"]:
        try:
            raw = pd.read_csv(
                path, sep=sep, header=None, skiprows=header_lines, usecols=usecols, names=list(range(width)),
                dtype=str, skip_blank_lines=False, engine="c", encoding=enc, quoting=csv.QUOTE_NONE,
                compression=compression,
            )
            break
        except UnicodeDecodeError as e:
            if encoding:  # Latin-1, the fallback, decodes any bytes: only a declared one fails
                name = {"utf-8-sig": "UTF-8", "utf-16": "UTF-16"}[encoding]
                raise DataFormatError(path, f"starts with a {name} byte-order mark but is not valid {name} "
                                      f"({e.reason}); re-save it as UTF-8") from None
        except pd.errors.EmptyDataError:
            raise DataFormatError(path, "no ratings found (empty file)") from None
        except (OSError, EOFError) as e:  # a damaged gzip stream
            raise DataFormatError(path, f"gzip-compressed but cannot be decompressed ({e})") from None
        except pd.errors.ParserError as e:
            # pandas names the line itself ("Expected 4 fields in line 17, saw 5"), counted from
            # the first line it read; keep its words, the path makes it actionable.
            raise DataFormatError(path, f"malformed row: {e}".strip()) from None
        except ValueError as e:  # usecols beyond the row width: too few columns everywhere
            raise DataFormatError(path, f"expected at least {max(usecols) + 1} fields per row ({e})") from None
    raw.columns = names
    lines = np.arange(len(raw), dtype=np.int64) + 1 + header_lines
    # A blank or whitespace-only line has a missing field (no separators) or only blank ones;
    # test just the rows with a missing field, so a large clean file costs one isna pass.
    maybe = raw.isna().any(axis=1).to_numpy()
    if maybe.any():
        sub = raw.loc[maybe]
        empty = sub.apply(lambda c: c.fillna("").str.strip().eq("")).all(axis=1).to_numpy()
        blank = np.zeros(len(raw), dtype=bool)
        blank[np.flatnonzero(maybe)[empty]] = True
        # Blank lines carry no rating; tolerated, like every CSV reader does.
        raw, lines = raw.loc[~blank], lines[~blank]
    return raw.reset_index(drop=True), lines


def _numeric(raw: pd.DataFrame, path, line_of_row: np.ndarray, int_cols=("user", "item"), file_of_row=None):
    """Convert string columns to numbers; a field that is not a number names its line.

    `path` and `file_of_row` as in `errors.row_error` (one file, or several).
    """
    def error(i, message):
        return row_error(path, line_of_row, i, message, file_of_row)

    out = pd.DataFrame(index=raw.index)
    for col in raw.columns:
        vals = pd.to_numeric(raw[col], errors="coerce")
        bad = vals.isna().to_numpy() & raw[col].notna().to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise error(i, f"non-numeric {col!r} field {raw[col].iloc[i]!r}")
        missing = vals.isna().to_numpy()
        if missing.any():
            raise error(int(np.argmax(missing)), f"missing {col!r} field")
        if col in int_cols:
            if not np.all(np.mod(vals.to_numpy(), 1) == 0):
                i = int(np.argmax(np.mod(vals.to_numpy(), 1) != 0))
                raise error(i, f"{col!r} id {raw[col].iloc[i]!r} is not an integer")
            vals = vals.astype(np.int64)
        elif col == "timestamp":
            vals = vals.astype(np.int64)
        else:
            vals = vals.astype(np.float32)
        out[col] = vals
    if "timestamp" not in out:
        out["timestamp"] = np.zeros(len(out), dtype=np.int64)
    return out[["user", "item", "rating", "timestamp"]]


def _finish(frame, path, scale, lines, titles, duplicates, file_of_row=None, source=None) -> Ratings:
    frame, n_dup = validate(frame, path, scale, lines, duplicates, file_of_row, source)
    return Ratings(frame=frame, scale=scale, source=source or str(path), titles=titles, duplicates_dropped=n_dup)


def load_udata(path, item_path=None, duplicates: str = "keep-last") -> Ratings:
    """ML-100K `u.data` (user \\t item \\t rating \\t timestamp) and optional `u.item` titles."""
    path = _require(path)
    raw, lines = _read_table(path, "\t", ["user", "item", "rating", "timestamp"], [0, 1, 2, 3], 0)
    frame = _numeric(raw, path, lines)
    titles = load_uitem_titles(item_path) if item_path else {}
    return _finish(frame, path, ML_SCALE, lines, titles, duplicates)


def _parse_titles(path: Path, text: str, split, expected: str) -> dict:
    """id -> title from lines that begin 'ID<sep>TITLE'; a malformed line names itself."""
    titles = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = split(line)
        if len(parts) < 2 or not parts[0].strip().isdigit():
            raise DataFormatError(path, f"expected {expected!r}", n)
        titles[int(parts[0])] = parts[1]
    return titles


def load_uitem_titles(path) -> dict:
    """`u.item`: id|title|release date|video date|url|19 genre flags (shipped Latin-1)."""
    path = _require(path)
    return _parse_titles(path, read_text(path), lambda s: s.split("|"), "id|title|...")


def load_ratings_dat(path, movies_path=None, scale=None, duplicates: str = "keep-last") -> Ratings:
    """ML-1M / ML-10M `ratings.dat` (UserID::MovieID::Rating::Timestamp), `movies.dat` titles."""
    path = _require(path)
    # Splitting on ':' keeps pandas' fast C reader: '::' yields empty fields at 1, 3 and 5.
    raw, lines = _read_table(path, ":", ["user", "item", "rating", "timestamp"], [0, 2, 4, 6], 0)
    frame = _numeric(raw, path, lines)
    if scale is None:  # ML-1M has whole stars, ML-10M half stars
        scale = ML_HALF_STAR_SCALE if (frame["rating"] % 1 != 0).any() else ML_SCALE
    titles = load_movies_dat_titles(movies_path) if movies_path else {}
    return _finish(frame, path, scale, lines, titles, duplicates)


def load_movies_dat_titles(path) -> dict:
    """`movies.dat`: MovieID::Title::Genres (ML-1M is Latin-1, ML-10M UTF-8)."""
    path = _require(path)
    return _parse_titles(path, read_text(path), lambda s: s.split("::"), "MovieID::Title::Genres")


def _require_columns(path, header: list[str], want) -> None:
    missing = [c for c in want if c not in header]
    if missing:
        raise DataFormatError(path, f"header lacks column(s) {missing}; found {header}", 1)


def load_ratings_csv(path, movies_path=None, scale=ML_HALF_STAR_SCALE, duplicates: str = "keep-last") -> Ratings:
    """ML-20M/25M/32M `ratings.csv` (userId,movieId,rating,timestamp with a header)."""
    path = _require(path)
    header = csv_header(path)
    want = ["userId", "movieId", "rating"]
    _require_columns(path, header, want)
    cols = [header.index(c) for c in want]
    names = ["user", "item", "rating"]
    if "timestamp" in header:
        cols.append(header.index("timestamp"))
        names.append("timestamp")
    raw, lines = _read_table(path, ",", names, cols, 1, width=len(header))
    frame = _numeric(raw, path, lines)
    titles = load_movies_csv_titles(movies_path) if movies_path else {}
    return _finish(frame, path, scale, lines, titles, duplicates)


def load_movies_csv_titles(path) -> dict:
    """`movies.csv`: movieId,title,genres (titles are quoted when they contain commas)."""
    path = _require(path)
    frame = pd.read_csv(io.StringIO(read_text(path)), dtype=str, keep_default_na=False)
    frame.columns = [c.strip() for c in frame.columns]
    if not {"movieId", "title"} <= set(frame.columns):
        raise DataFormatError(path, f"header must contain movieId,title; found {list(frame.columns)}", 1)
    ids = frame["movieId"].str.strip()
    bad = ~ids.str.fullmatch(r"\d+")
    if bad.any():  # the row's line, if no quoted title spans lines
        i = int(np.argmax(bad.to_numpy()))
        raise DataFormatError(path, f"movieId {ids.iloc[i]!r} is not an integer", i + 2)
    return dict(zip(ids.astype(np.int64).tolist(), frame["title"].tolist()))


def natural_key(path) -> list:
    """Sort key putting combined_data_2 before combined_data_10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def netflix_parts(folder) -> list[Path]:
    """The Netflix Prize rating files in a folder: `mv_*.txt` or `combined_data_*.txt`, in order.

    Empty when there are none; a folder holding both kinds is refused (each holds every
    rating, so loading both would count each twice).
    """
    folder = Path(folder)
    mv = sorted(folder.glob("mv_*.txt"), key=natural_key)
    combined = sorted(folder.glob("combined_data_*.txt"), key=natural_key)
    if mv and combined:
        raise DataFormatError(folder, f"holds both {len(mv)} mv_*.txt and {len(combined)} combined_data_*.txt "
                              "files, two copies of the same ratings; pass one kind with a glob, e.g. "
                              f"'{folder}/mv_*.txt'")
    return mv or combined


def load_netflix(paths, titles_path=None, duplicates: str = "keep-last") -> Ratings:
    """Netflix Prize: `combined_data_*.txt` (many 'MovieID:' blocks) or `mv_*.txt` (one each).

    `paths` is one file, a list of files read as one data set, or a folder holding them (the
    download's `training_set/`). Rows are 'CustomerID,Rating,YYYY-MM-DD'; a line 'MovieID:'
    starts each movie's block. Errors name the file and line the bad row came from.
    """
    if isinstance(paths, (str, Path)):
        path = Path(paths)
        paths = netflix_parts(path) if path.is_dir() else [path]
        if not paths:
            raise DataFormatError(path, "folder holds no Netflix Prize rating files (mv_*.txt or combined_data_*.txt)")
    paths = [_require(p) for p in paths]
    if not paths:
        raise DataFormatError("(no files)", "no Netflix Prize rating files given")
    # Only the reading is per file; the parsing runs once over all rows (17,770 mv_ files).
    raws, all_lines, files = [], [], []
    for k, path in enumerate(paths):
        raw, lines = _read_table(path, ",", ["user", "rating", "date"], [0, 1, 2], 0)
        if len(raw) == 0:
            raise DataFormatError(path, "no ratings found (only blank lines)")
        if not (pd.isna(raw["rating"].iloc[0]) and str(raw["user"].iloc[0]).endswith(":")):
            raise DataFormatError(path, "expected a 'MovieID:' line first", int(lines[0]))
        raws.append(raw)
        all_lines.append(lines)
        files.append(np.full(len(raw), k, dtype=np.int32))
    raw = pd.concat(raws, ignore_index=True) if len(raws) > 1 else raws[0]
    lines, files = np.concatenate(all_lines), np.concatenate(files)
    user = raw["user"]
    head = raw["rating"].isna().to_numpy() & user.str.endswith(":").fillna(False).to_numpy()
    movie = pd.Series(np.where(head, user.str[:-1], None)).ffill()
    body = ~head
    rows = pd.DataFrame({
        "user": user.to_numpy()[body],
        "item": movie.to_numpy()[body],
        "rating": raw["rating"].to_numpy()[body],
    })
    lines, files = lines[body], files[body]
    dates = raw["date"].to_numpy()[body]
    date = pd.to_datetime(dates, format="%Y-%m-%d", errors="coerce")
    if pd.isna(date).any():
        i = int(np.argmax(pd.isna(date)))
        raise row_error(paths, lines, i, f"bad date {dates[i]!r} (expected YYYY-MM-DD)", files)
    frame = _numeric(rows, paths, lines, file_of_row=files)
    frame["timestamp"] = np.asarray((date - pd.Timestamp(0)) // pd.Timedelta(seconds=1), dtype=np.int64)
    titles = load_netflix_titles(titles_path) if titles_path else {}
    return _finish(frame, paths, NETFLIX_SCALE, lines, titles, duplicates, files, _describe(paths))


def _describe(paths: list[Path]) -> str:
    """A short name for a list of files (17,770 paths would make an unreadable one)."""
    if len(paths) == 1:
        return str(paths[0])
    parents = {p.parent for p in paths}
    where = f"{parents.pop()}/" if len(parents) == 1 else ""
    return f"{where}{{{paths[0].name} .. {paths[-1].name}}} ({len(paths)} files)"


_NETFLIX_TITLE = re.compile(r"\s*(\d+)\s*,\s*(\d{4}|NULL|)\s*,(.*)")


def load_netflix_titles(path) -> dict:
    """`movie_titles.txt` / `.csv`: MovieID,YearOfRelease,Title; the year may be NULL.

    Titles hold commas and are not quoted, so only the id and the year are split off. The
    download is Latin-1; a UTF-8 re-save (with or without a byte-order mark) reads the same.
    """
    path = _require(path)
    titles = {}
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        m = _NETFLIX_TITLE.fullmatch(line)
        if not m:
            if n == 1 and "title" in line.lower():  # a header some re-saves add
                continue
            raise DataFormatError(path, f"expected 'MovieID,Year,Title' (year 4 digits or NULL); found {line!r}", n)
        titles[int(m.group(1))] = m.group(3).strip()
    return titles


def load_csv(path, user: str, item: str, rating: str, timestamp: str | None = None,
             sep: str = ",", scale=None, titles: dict | None = None) -> Ratings:
    """Any comma- or tab-separated file (plain or gzip) with a header, columns named by the caller:
    explicit ratings read by builder.data.logs.read_log (ids kept as strings unless every id of a
    column is a canonical integer; a re-rated pair keeps its latest rating).

    `scale` (LOW, HIGH) bounds the ratings; None reads it from the data: the usual scale
    (1..5, 0.5..5, 1..10, 0.5..10, 1..100) that holds every rating, else their min..max.
    The scale read is logged. Raises ValueError for another separator.
    """
    if sep not in (",", "\t"):
        raise ValueError(f"separator {sep!r}: comma or tab only")
    columns = {"user": user, "item": item, "rating": rating, **({"time": timestamp} if timestamp else {})}
    ratings = read_log(LogSpec(Path(path), "csv" if sep == "," else "tsv", columns,
                               scale=tuple(map(float, scale)) if scale else None))
    ratings.titles = titles or {}
    return ratings
