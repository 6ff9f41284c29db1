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

from builder.data.errors import DataFormatError

log = logging.getLogger(__name__)

COLUMNS = ("user", "item", "rating", "timestamp")


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


def validate(
    frame: pd.DataFrame,
    path,
    scale: tuple[float, float],
    line_of_row: np.ndarray,
    duplicates: str = "keep-last",
) -> tuple[pd.DataFrame, int]:
    """Check a parsed table; return it cleaned plus the number of duplicates dropped.

    `line_of_row[i]` is the 1-based file line of row i, used in every error message.
    `duplicates` is "keep-last" (documented policy: a re-rating replaces the older one,
    the count is logged and returned) or "error".
    """
    if len(frame) == 0:
        raise DataFormatError(path, "no ratings found (empty file)")
    for col in ("user", "item", "rating"):
        bad = frame[col].isna().to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise DataFormatError(path, f"missing or non-numeric {col!r} field", int(line_of_row[i]))
    r = frame["rating"].to_numpy()
    out = (r < scale[0]) | (r > scale[1]) | ~np.isfinite(r)
    if out.any():
        i = int(np.argmax(out))
        raise DataFormatError(
            path, f"rating {r[i]:g} outside scale {scale[0]:g}..{scale[1]:g}", int(line_of_row[i])
        )
    dup = frame.duplicated(subset=["user", "item"], keep="last").to_numpy()
    n_dup = int(dup.sum())
    if n_dup:
        first = int(np.argmax(dup))
        if duplicates == "error":
            u, it = (int(v) for v in frame.iloc[first][["user", "item"]])
            raise DataFormatError(path, f"duplicate rating of user {u} for item {it}", int(line_of_row[first]))
        # Keep-last is the documented policy: the later rating is the user's current opinion.
        log.warning("%s: %d duplicate (user, item) ratings; kept the latest of each", path, n_dup)
        frame = frame.loc[~dup]
    return frame.reset_index(drop=True), n_dup
