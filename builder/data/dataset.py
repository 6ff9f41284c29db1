"""`Dataset`: sparse train/test matrices plus the id maps and titles that give them meaning."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from builder.data.ids import id_kind
from builder.data.ratings import EXPLICIT, IMPLICIT, Ratings, one_of_a_kind


@dataclass
class Dataset:
    """Users are rows, items columns; 0 means "not rated".

    Explicit feedback: entries are ratings on `scale` (> 0). Implicit feedback (`feedback` ==
    "implicit", an interaction log): entries are each (user, item) pair's aggregated weight
    (builder/data/logs.py: the sum of its events' weights by default, so 1.0 per event without a
    weight column), every stored entry a positive; `scale` then spans 1.0 and every weight.
    `user_ids` / `item_ids`: the raw ids of the rows / columns, sorted, numpy int64 or (string
    ids) numpy unicode `<U…`."""

    train: sp.csr_matrix
    test: sp.csr_matrix
    user_ids: np.ndarray  # index -> raw id
    item_ids: np.ndarray
    titles: list[str]
    scale: tuple[float, float]
    fingerprint: str
    name: str = ""
    feedback: str = EXPLICIT

    @property
    def implicit(self) -> bool:
        """True for an interaction log: no ratings, every stored entry is a positive."""
        return self.feedback == IMPLICIT

    @property
    def n_users(self) -> int:
        """Rows of the train/test matrices."""
        return self.train.shape[0]

    @property
    def n_items(self) -> int:
        """Columns of the train/test matrices."""
        return self.train.shape[1]

    def user_index(self, raw_ids) -> np.ndarray:
        """Raw user ids -> row indices (-1 where unknown)."""
        return _lookup(self.user_ids, raw_ids)

    def item_index(self, raw_ids) -> np.ndarray:
        """Raw item ids -> column indices (-1 where unknown)."""
        return _lookup(self.item_ids, raw_ids)

    def summary(self) -> dict:
        """Name, shape, rating counts, scale, fingerprint, feedback ("explicit" or "implicit") and the id
        kinds ({"user": "int64"|"string", "item": ...}): what a run's config.json records of its data."""
        return {"name": self.name, "users": self.n_users, "items": self.n_items,
                "train_ratings": int(self.train.nnz), "test_ratings": int(self.test.nnz),
                "scale": list(self.scale), "fingerprint": self.fingerprint, "feedback": self.feedback,
                "id_kinds": {"user": id_kind(self.user_ids), "item": id_kind(self.item_ids)}}


def _lookup(sorted_ids: np.ndarray, raw) -> np.ndarray:
    raw = np.asarray(raw)
    pos = np.searchsorted(sorted_ids, raw)
    pos = np.clip(pos, 0, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == raw, pos, -1)


def build_dataset(ratings: Ratings, train_mask: np.ndarray, test_mask: np.ndarray, name: str = "") -> Dataset:
    """Index users and items that appear in either part (sorted raw ids) and build CSR matrices.

    Refuses (`DataFormatError`) data with a single user or a single item, such as one Netflix
    `mv_` file on its own. Titles come from `ratings.titles`, else "item ID" for integer ids and
    the id itself for string ids.
    """
    f = ratings.frame
    used = train_mask | test_mask
    # The frame holds raw int64 ids or codes into sorted string vocabularies: the codes sort as
    # the ids do, so the same unique/searchsorted serves both.
    user_codes = np.unique(f["user"].to_numpy()[used])
    item_codes = np.unique(f["item"].to_numpy()[used])
    user_ids, item_ids = ratings.raw_ids("user", user_codes), ratings.raw_ids("item", item_codes)
    for kind, ids in (("item", item_ids), ("user", user_ids)):
        if len(ids) == 1:
            raise one_of_a_kind(ratings.source, kind, ids[0])
    rows = np.searchsorted(user_codes, f["user"].to_numpy())
    cols = np.searchsorted(item_codes, f["item"].to_numpy())
    r = f["rating"].to_numpy(np.float32)
    shape = (len(user_ids), len(item_ids))

    def csr(mask):
        return sp.csr_matrix((r[mask], (rows[mask], cols[mask])), shape=shape, dtype=np.float32)

    strings = item_ids.dtype.kind == "U"
    titles = [str(ratings.titles.get(i, i if strings else f"item {i}")) for i in item_ids.tolist()]
    return Dataset(csr(train_mask), csr(test_mask), user_ids, item_ids, titles,
                   ratings.scale, ratings.fingerprint(), name, ratings.feedback)
