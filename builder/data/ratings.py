"""The raw ratings table every loader returns, and the checks applied to it.

A `Ratings` keeps the file's row order (the canonical ML-100K splits depend on it) and
remembers which source line each row came from, so a later check can still name the line.

Two kinds of feedback share the table. Explicit ratings (MovieLens, Netflix, a CSV with a
rating column): `rating` is the rating on `scale`. Implicit feedback (an interaction log:
clicks, views, purchases): `rating` is the pair's aggregated weight (builder/data/logs.py: the
sum of its events' weights by default, 1.0 per event without a weight column), always > 0, and
every stored pair is a positive.

Ids: integer ids are stored as they are (int64). Where a column's ids are strings (builder/data/
ids.py decides), the frame holds int64 codes into `user_vocab` / `item_vocab`, the sorted
distinct ids as a numpy unicode array; codes sort as the ids do.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from builder.data.errors import DataFormatError, row_error

log = logging.getLogger(__name__)

COLUMNS = ("user", "item", "rating", "timestamp")

# The scales rating data usually comes in, narrowest first; `infer_scale` picks the first that
# holds every observed rating.
USUAL_SCALES = ((1.0, 5.0), (0.5, 5.0), (1.0, 10.0), (0.5, 10.0), (1.0, 100.0))


EXPLICIT, IMPLICIT = "explicit", "implicit"


@dataclass
class Ratings:
    """One feedback table: columns user, item, rating, timestamp (int64 seconds).

    `feedback`: "explicit" (ratings on `scale`) or "implicit" (each pair's aggregated weight,
    > 0; see the module docstring). `has_time`: whether the timestamps came from the data (else
    they are all 0 and time-based splits are refused). `user_vocab` / `item_vocab`: None where
    the frame holds the raw int64 ids, else the sorted string ids the frame's codes index."""

    frame: pd.DataFrame
    scale: tuple[float, float]
    source: str
    titles: dict = field(default_factory=dict)  # raw item id -> title
    duplicates_dropped: int = 0
    feedback: str = EXPLICIT
    has_time: bool = True
    user_vocab: np.ndarray | None = None
    item_vocab: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def implicit(self) -> bool:
        """True for an interaction log (no ratings: every stored pair is a positive)."""
        return self.feedback == IMPLICIT

    def raw_ids(self, kind: str, codes) -> np.ndarray:
        """The raw ids (int64 or unicode) of frame values `codes` of column `kind` ("user"/"item")."""
        vocab = self.user_vocab if kind == "user" else self.item_vocab
        codes = np.asarray(codes)
        return codes if vocab is None else vocab[codes]

    def fingerprint(self) -> str:
        """A short hash of the table's content, saved beside every artifact made from it."""
        h = hashlib.sha256()
        for col in COLUMNS:
            h.update(np.ascontiguousarray(self.frame[col].to_numpy()).tobytes())
        # String ids: the codes alone would not tell two vocabularies apart. Integer-id tables
        # hash exactly as before, so the fingerprints of existing runs still match.
        for vocab in (self.user_vocab, self.item_vocab):
            if vocab is not None:
                h.update(np.ascontiguousarray(vocab).tobytes())
        if self.implicit:
            h.update(b"implicit")
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
    error=None,
) -> tuple[pd.DataFrame, int]:
    """Check a parsed table; return it cleaned plus the number of duplicates dropped.

    `line_of_row[i]` is the 1-based file line of row i, used in every error message; when the
    rows came from several files, `path` lists them and `file_of_row[i]` indexes row i's file;
    `source` then names them all in messages about no single row. `error(i, message)`, when
    given, makes the error for row i instead (a Parquet file names a row group, not a line).
    `duplicates` is "keep-last" (documented policy: a re-rating replaces the older one,
    the count is logged and returned) or "error".
    """
    where = source or (path if file_of_row is None else f"{len(path)} files")

    def row(i, message):
        return row_error(path, line_of_row, i, message, file_of_row)

    error = error or row
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
            u, it = frame["user"].iloc[first], frame["item"].iloc[first]
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
            raise one_of_a_kind(ratings.source, kind, ratings.raw_ids(col, ids)[0])


def one_of_a_kind(source, kind: str, raw_id) -> DataFormatError:
    """The error for data holding one user or one item (often one part of a larger set: one of
    Netflix's mv_*.txt files, one day of a log). Only the Netflix Prize's files load several as
    one data set, so only there does the hint name a folder or a glob; other parts must be joined
    into one file first."""
    path = Path(str(source))
    if path.name.startswith("mv_"):
        hint = ("If this file is one part of the Netflix Prize data, pass all of it: its folder, or a glob such as "
                f"'{path.parent / 'mv_*.txt'}'")
    else:
        hint = ("If this file is one part of a larger data set, join the parts into one file first (several files "
                "load as one data set only for the Netflix Prize)")
    return DataFormatError(
        source, f"the data holds only one {kind} ({kind} {raw_id}); a recommender needs at least two. {hint}")
