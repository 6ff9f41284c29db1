"""The raw ratings table every loader returns, and the checks applied to it.

A `Ratings` keeps the file's row order (the canonical ML-100K splits depend on it) and
remembers which source line each row came from, so a later check can still name the line.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from builder.data.errors import DataFormatError, row_error

log = logging.getLogger(__name__)

COLUMNS = ("user", "item", "rating", "timestamp")

# The scales rating data usually comes in, narrowest first; `infer_scale` picks the first that
# holds every observed rating.
USUAL_SCALES = ((1.0, 5.0), (0.5, 5.0), (1.0, 10.0), (0.5, 10.0), (1.0, 100.0))


@dataclass
class Ratings:
    """One explicit-feedback table: columns user, item, rating, timestamp (int64 seconds)."""

    frame: pd.DataFrame
    scale: tuple[float, float]
    source: str
    titles: dict = field(default_factory=dict)  # raw item id -> title
    duplicates_dropped: int = 0

    def __len__(self) -> int:
        return len(self.frame)

    def fingerprint(self) -> str:
        """A short hash of the table's content, saved beside every artifact made from it."""
        h = hashlib.sha256()
        for col in COLUMNS:
            h.update(np.ascontiguousarray(self.frame[col].to_numpy()).tobytes())
        return h.hexdigest()[:16]


def infer_scale(ratings) -> tuple[float, float]:
    """The rating scale a column of ratings was most likely given on.

    The first of `USUAL_SCALES` that holds every rating (1..4 observed reads as 1..5, 2..9 as
    1..10); when none does, the observed min..max.
    """
    r = np.asarray(ratings, dtype=np.float64)
    lo, hi = float(np.min(r)), float(np.max(r))
    for scale in USUAL_SCALES:
        if scale[0] <= lo and hi <= scale[1]:
            return scale
    return (lo, hi)


def validate(
    frame: pd.DataFrame,
    path,
    scale: tuple[float, float],
    line_of_row: np.ndarray,
    duplicates: str = "keep-last",
    file_of_row: np.ndarray | None = None,
    source: str | None = None,
) -> tuple[pd.DataFrame, int]:
    """Check a parsed table; return it cleaned plus the number of duplicates dropped.

    `line_of_row[i]` is the 1-based file line of row i, used in every error message; when the
    rows came from several files, `path` lists them and `file_of_row[i]` indexes row i's file;
    `source` then names them all in messages about no single row.
    `duplicates` is "keep-last" (documented policy: a re-rating replaces the older one,
    the count is logged and returned) or "error".
    """
    where = source or (path if file_of_row is None else f"{len(path)} files")

    def error(i, message):
        return row_error(path, line_of_row, i, message, file_of_row)

    if len(frame) == 0:
        raise DataFormatError(where, "no ratings found (empty file)")
    for col in ("user", "item", "rating"):
        bad = frame[col].isna().to_numpy()
        if bad.any():
            raise error(int(np.argmax(bad)), f"missing or non-numeric {col!r} field")
    r = frame["rating"].to_numpy()
    out = (r < scale[0]) | (r > scale[1]) | ~np.isfinite(r)
    if out.any():
        i = int(np.argmax(out))
        raise error(i, f"rating {r[i]:g} outside scale {scale[0]:g}..{scale[1]:g}")
    # Only reachable with a caller's scale starting at or below 0.
    zero = r <= 0
    if zero.any():
        i = int(np.argmax(zero))
        raise error(i, f"rating {r[i]:g}: ratings must be above 0, since 0 marks 'not rated' in the "
                       "rating matrix; shift the ratings (e.g. add 1 to each) and the scale with them")
    dup = frame.duplicated(subset=["user", "item"], keep="last").to_numpy()
    n_dup = int(dup.sum())
    if n_dup:
        first = int(np.argmax(dup))
        if duplicates == "error":
            u, it = (int(v) for v in frame.iloc[first][["user", "item"]])
            raise error(first, f"duplicate rating of user {u} for item {it}")
        # Keep-last is the documented policy: the later rating is the user's current opinion.
        log.warning("%s: %d duplicate (user, item) ratings; kept the latest of each", where, n_dup)
        frame = frame.loc[~dup]
    return frame.reset_index(drop=True), n_dup


def require_two_each(ratings: Ratings) -> None:
    """Refuse a table with a single user or a single item: there is nothing to learn from."""
    f = ratings.frame
    for col, kind in (("item", "item"), ("user", "user")):
        ids = pd.unique(f[col])
        if len(ids) == 1:
            raise one_of_a_kind(ratings.source, kind, ids[0])


def one_of_a_kind(source, kind: str, raw_id) -> DataFormatError:
    """The error for data holding one user or one item (often one part of a larger set)."""
    return DataFormatError(
        source, f"the data holds only one {kind} ({kind} {raw_id}); a recommender needs at least two. "
        "If this file is one part of a data set, pass all of it: its folder, or a glob such as "
        "'training_set/mv_*.txt'")
