"""Readers for the rating file formats users actually have.

Each returns a `Ratings` in file order. Parsing is vectorised (pandas' C reader); a row that
will not parse is reported with its file line, never dropped silently.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from builder.data.errors import DataFormatError
from builder.data.ratings import Ratings, validate

ML_SCALE = (1.0, 5.0)
ML_HALF_STAR_SCALE = (0.5, 5.0)  # ML-10M and later allow half stars


def _require(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataFormatError(path, "no ratings found (empty file)")
    return path


def _read_table(path: Path, sep: str, names: list[str], usecols: list[int], header_lines: int,
                encoding: str = "utf-8", width: int | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Read delimited text as strings; return the frame and each row's 1-based file line.

    `width` fixes the number of fields per row, so short rows read as missing fields (named
    by line later) and long rows are a parse error, instead of pandas guessing from line 1.
    """
    width = width or max(usecols) + 1
    try:
        raw = pd.read_csv(
            path, sep=sep, header=None, skiprows=header_lines, usecols=usecols, names=list(range(width)),
            dtype=str, skip_blank_lines=False, engine="c", encoding=encoding, quoting=csv.QUOTE_NONE,
        )
    except pd.errors.EmptyDataError:
        raise DataFormatError(path, "no ratings found (empty file)") from None
    except pd.errors.ParserError as e:
        # pandas names the line itself ("Expected 4 fields in line 17, saw 5"), counted from
        # the first line it read; keep its words, the path makes it actionable.
        raise DataFormatError(path, f"malformed row: {e}".strip()) from None
    except ValueError as e:  # usecols beyond the row width: too few columns everywhere
        raise DataFormatError(path, f"expected at least {max(usecols) + 1} fields per row ({e})") from None
    raw.columns = names
    lines = np.arange(len(raw), dtype=np.int64) + 1 + header_lines
    blank = raw.isna().all(axis=1).to_numpy()
    if blank.any():  # blank lines carry no rating; tolerated, like every CSV reader does
        raw, lines = raw.loc[~blank], lines[~blank]
    return raw.reset_index(drop=True), lines


def _numeric(raw: pd.DataFrame, path: Path, line_of_row: np.ndarray, int_cols=("user", "item")):
    """Convert string columns to numbers; a field that is not a number names its line."""
    out = pd.DataFrame(index=raw.index)
    for col in raw.columns:
        vals = pd.to_numeric(raw[col], errors="coerce")
        bad = vals.isna().to_numpy() & raw[col].notna().to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise DataFormatError(path, f"non-numeric {col!r} field {raw[col].iloc[i]!r}", int(line_of_row[i]))
        missing = vals.isna().to_numpy()
        if missing.any():
            i = int(np.argmax(missing))
            raise DataFormatError(path, f"missing {col!r} field", int(line_of_row[i]))
        if col in int_cols:
            if not np.all(np.mod(vals.to_numpy(), 1) == 0):
                i = int(np.argmax(np.mod(vals.to_numpy(), 1) != 0))
                raise DataFormatError(path, f"{col!r} id {raw[col].iloc[i]!r} is not an integer", int(line_of_row[i]))
            vals = vals.astype(np.int64)
        elif col == "timestamp":
            vals = vals.astype(np.int64)
        else:
            vals = vals.astype(np.float32)
        out[col] = vals
    if "timestamp" not in out:
        out["timestamp"] = np.zeros(len(out), dtype=np.int64)
    return out[["user", "item", "rating", "timestamp"]]


def _finish(frame, path, scale, lines, titles, duplicates) -> Ratings:
    frame, n_dup = validate(frame, path, scale, lines, duplicates)
    return Ratings(frame=frame, scale=scale, source=str(path), titles=titles, duplicates_dropped=n_dup)


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
        if len(parts) < 2 or not parts[0].isdigit():
            raise DataFormatError(path, f"expected {expected!r}", n)
        titles[int(parts[0])] = parts[1]
    return titles


def load_uitem_titles(path) -> dict:
    """`u.item`: id|title|release date|video date|url|19 genre flags (latin-1)."""
    path = _require(path)
    return _parse_titles(path, path.read_text(encoding="latin-1"), lambda s: s.split("|"), "id|title|...")


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
    """`movies.dat`: MovieID::Title::Genres (ML-1M is latin-1, ML-10M utf-8)."""
    path = _require(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return _parse_titles(path, text, lambda s: s.split("::"), "MovieID::Title::Genres")


def load_ratings_csv(path, movies_path=None, scale=ML_HALF_STAR_SCALE, duplicates: str = "keep-last") -> Ratings:
    """ML-20M/25M/32M `ratings.csv` (userId,movieId,rating,timestamp with a header)."""
    path = _require(path)
    header = path.open(encoding="utf-8").readline().strip().split(",")
    want = ["userId", "movieId", "rating"]
    missing = [c for c in want if c not in header]
    if missing:
        raise DataFormatError(path, f"header lacks column(s) {missing}; found {header}", 1)
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
    frame = pd.read_csv(path, dtype={"movieId": np.int64, "title": str})
    if not {"movieId", "title"} <= set(frame.columns):
        raise DataFormatError(path, "header must contain movieId,title", 1)
    return dict(zip(frame["movieId"].tolist(), frame["title"].tolist()))


def load_netflix(paths, titles_path=None, duplicates: str = "keep-last") -> Ratings:
    """Netflix Prize: `combined_data_*.txt` (many 'MovieID:' blocks) or `mv_*.txt` (one each).

    Rows are 'CustomerID,Rating,YYYY-MM-DD'; a line 'MovieID:' starts each movie's block.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames, all_lines = [], []
    first = None
    for path in paths:
        path = _require(path)
        first = first or path
        raw, lines = _read_table(path, ",", ["user", "rating", "date"], [0, 1, 2], 0)
        head = raw["rating"].isna().to_numpy() & raw["user"].str.endswith(":").fillna(False).to_numpy()
        if not head[0]:
            raise DataFormatError(path, "expected a 'MovieID:' line first", int(lines[0]))
        movie = pd.Series(np.where(head, raw["user"].str[:-1], None)).ffill()
        body = ~head
        rows = pd.DataFrame({
            "user": raw["user"].to_numpy()[body],
            "item": movie.to_numpy()[body],
            "rating": raw["rating"].to_numpy()[body],
        })
        lines = lines[body]
        date = pd.to_datetime(raw["date"].to_numpy()[body], format="%Y-%m-%d", errors="coerce")
        if pd.isna(date).any():
            i = int(np.argmax(pd.isna(date)))
            raise DataFormatError(path, f"bad date {raw['date'].to_numpy()[body][i]!r}", int(lines[i]))
        num = _numeric(rows, path, lines)
        num["timestamp"] = np.asarray((date - pd.Timestamp(0)) // pd.Timedelta(seconds=1), dtype=np.int64)
        frames.append(num)
        all_lines.append(lines)
    frame = pd.concat(frames, ignore_index=True)
    titles = load_netflix_titles(titles_path) if titles_path else {}
    return _finish(frame, first if len(paths) == 1 else ",".join(map(str, paths)), ML_SCALE,
                   np.concatenate(all_lines), titles, duplicates)


def load_netflix_titles(path) -> dict:
    """`movie_titles.csv`: MovieID,YearOfRelease,Title (titles hold commas; latin-1)."""
    path = _require(path)
    # Keep the title whole: split off only the id and the year.
    return _parse_titles(path, path.read_text(encoding="latin-1"),
                         lambda s: (lambda p: [p[0], p[2]] if len(p) == 3 else p)(s.split(",", 2)),
                         "MovieID,Year,Title")


def load_csv(path, user: str, item: str, rating: str, timestamp: str | None = None,
             sep: str = ",", scale=(1.0, 5.0), titles: dict | None = None,
             duplicates: str = "keep-last") -> Ratings:
    """Any delimited file with a header, columns named by the caller."""
    path = _require(path)
    with open(path, encoding="utf-8") as f:
        header = next(csv.reader(io.StringIO(f.readline()), delimiter=sep))
    want = {"user": user, "item": item, "rating": rating}
    if timestamp:
        want["timestamp"] = timestamp
    missing = [v for v in want.values() if v not in header]
    if missing:
        raise DataFormatError(path, f"header lacks column(s) {missing}; found {header}", 1)
    names, cols = zip(*sorted(((k, header.index(v)) for k, v in want.items()), key=lambda kv: kv[1]))
    raw, lines = _read_table(path, sep, list(names), list(cols), 1, width=len(header))
    frame = _numeric(raw, path, lines)
    return _finish(frame, path, tuple(map(float, scale)), lines, titles or {}, duplicates)
