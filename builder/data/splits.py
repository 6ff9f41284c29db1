"""Train/test splits as pure functions of a `Ratings` table (and a seed where random).

Each returns a pair of boolean masks over the table's rows: (train, test).
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp

from builder.data.ratings import Ratings

log = logging.getLogger(__name__)

CANONICAL_ML100K = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")


class SplitError(ValueError):
    """A split word or its argument cannot be applied to these ratings."""
    pass


def split_canonical(ratings: Ratings, name: str) -> tuple[np.ndarray, np.ndarray]:
    """ML-100K's mku.sh splits, rebuilt from u.data row order.

    u{i}: test = rows 20000*(i-1) .. 20000*i - 1. ua/ub: each user's 1st-10th (ua) or
    11th-20th (ub) ratings in u.data order are the test set (allbut.pl).
    """
    if name not in CANONICAL_ML100K:
        raise SplitError(f"unknown canonical split {name!r}; choose one of {CANONICAL_ML100K}")
    n = len(ratings)
    if n != 100_000:
        raise SplitError(f"canonical split {name} needs ML-100K's 100,000 rows in u.data order, got {n:,}; "
                         "for other data use --split random[:FRACTION], per-user[:FRACTION] or temporal:DATE")
    test = np.zeros(n, dtype=bool)
    if name.startswith("u") and name[1:].isdigit():
        i = int(name[1:])
        test[20_000 * (i - 1): 20_000 * i] = True
    else:
        rank = ratings.frame.groupby("user").cumcount().to_numpy()  # 0-based, file order
        lo = 0 if name == "ua" else 10
        test = (rank >= lo) & (rank < lo + 10)
    return ~test, test


def split_random(ratings: Ratings, test_fraction: float = 0.1, seed: int = 0):
    """Seeded uniform holdout of ratings (AutoRec's 90/10 protocol)."""
    if not 0 < test_fraction < 1:
        raise SplitError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test = rng.random(len(ratings)) < test_fraction
    return ~test, test


def require_time(ratings: Ratings, split: str) -> None:
    """Refuse a time-based split of data without a time column."""
    if not ratings.has_time:
        raise SplitError(f"split {split} orders events by time, but {ratings.source} has no time column; "
                         "add one (or name it: ?time=COL), or use per-user[:F] or random[:F]")


def split_temporal(ratings: Ratings, cutoff, end=None):
    """DeepRec-style time split: train strictly before `cutoff`, test from it (until `end`).

    Test rows of users or items absent from training cannot be scored and are excluded (they
    are neither train nor test); both counts are logged: items first seen in the test period
    (cold items) and users first seen in it. Raises SplitError for data without time, or a
    cut-off leaving an empty side.
    """
    require_time(ratings, f"temporal:{cutoff}")
    ts = ratings.frame["timestamp"].to_numpy()
    cut = _to_seconds(cutoff)
    train = ts < cut
    test = ts >= cut
    if end is not None:
        test &= ts < _to_seconds(end)
    f = ratings.frame
    warm_user = f["user"].isin(f["user"][train]).to_numpy()
    warm_item = f["item"].isin(f["item"][train]).to_numpy()
    cold_items, cold_users = int((test & ~warm_item).sum()), int((test & warm_item & ~warm_user).sum())
    if cold_items or cold_users:
        log.warning("temporal split: of %d test rows from %s on, %d of items first seen then (cold items) and %d "
                    "of users first seen then were excluded: a model cannot rank what it never saw",
                    int(test.sum()), cutoff, cold_items, cold_users)
    test &= warm_user & warm_item
    if not train.any() or not test.any():
        raise SplitError(f"temporal cut-off {cutoff} leaves an empty train or test set")
    return train, test


def split_per_user(ratings: Ratings, holdout_fraction: float = 0.2, seed: int = 0, min_ratings: int = 5):
    """For top-N: hold out a random fraction (at least one) of each user's ratings.

    Users with fewer than `min_ratings` ratings stay wholly in training.
    """
    rng = np.random.default_rng(seed)
    f = ratings.frame
    key = rng.random(len(f))
    order = pd.Series(key).groupby(f["user"].to_numpy()).rank(method="first").to_numpy() - 1
    count = f.groupby("user")["user"].transform("size").to_numpy()
    k = np.maximum(1, np.floor(count * holdout_fraction)).astype(int)
    test = (order < k) & (count >= min_ratings)
    return ~test, test


def split_last(ratings: Ratings, n: int = 1):
    """Leave-last-N-out: each user's N latest rows by time are the test set (ties: the later row
    of the file is the later); users with N rows or fewer stay wholly in training. For a log a
    row is a (user, item) pair dated by its first event, so the test items are each user's N
    newest. Raises SplitError for data without time or n < 1."""
    if n < 1:
        raise SplitError(f"last:N needs N >= 1, got {n}")
    require_time(ratings, f"last:{n}")
    f = ratings.frame
    users, ts = f["user"].to_numpy(), f["timestamp"].to_numpy()
    order = np.lexsort((np.arange(len(f)), ts, users))  # by user, then time, then file order
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(sorted_users[1:] != sorted_users[:-1]) + 1]
    sizes = np.diff(np.r_[starts, len(f)])
    from_end = np.repeat(starts + sizes, sizes) - np.arange(len(f))  # 1 for each user's latest row
    test = np.zeros(len(f), dtype=bool)
    test[order] = (from_end <= n) & (np.repeat(sizes, sizes) > n)
    return ~test, test


def holdout_entries(matrix: sp.csr_matrix, fraction: float, seed: int):
    """Split a CSR matrix's stored entries at random into two matrices of the same shape.

    Used to carve the validation slice out of training data, never out of the test set.
    """
    coo = matrix.tocoo()
    rng = np.random.default_rng(seed)
    pick = rng.random(coo.nnz) < fraction
    def part(m):
        return sp.csr_matrix((coo.data[m], (coo.row[m], coo.col[m])), shape=matrix.shape, dtype=np.float32)
    return part(~pick), part(pick)


def holdout_users(matrix: sp.csr_matrix, user_fraction: float, seed: int, max_share: float = 0.8):
    """Split a CSR matrix's entries as a per-user holdout: a random `user_fraction` of the rows
    each hide a share of their entries drawn uniformly from [0, `max_share`).

    The validation slice then looks like the users a user-based model is asked about: people
    whose history it sees only in part (u1's test users keep 57% of their ratings on average,
    anywhere from 19% to 99%), not a thin random sample of everyone's ratings.
    """
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    chosen = rng.random(matrix.shape[0]) < user_fraction
    share = rng.random(matrix.shape[0]) * max_share
    pick = chosen[rows] & (rng.random(matrix.nnz) < share[rows])
    coo = matrix.tocoo()  # CSR -> COO keeps the row-major order `rows` was built in
    def part(m):
        return sp.csr_matrix((coo.data[m], (coo.row[m], coo.col[m])), shape=matrix.shape, dtype=np.float32)
    return part(~pick), part(pick)


def holdout_share_per_user(matrix: sp.csr_matrix, share: float, seed: int):
    """(visible, hidden): each row hides a random `share` of its entries (rounded down, at least
    one for rows with two or more), shapes unchanged.

    The top-N validation split (Liang et al.'s weak generalisation): the model sees the visible
    part of every user and is scored on ranking the hidden part, as u1's test asks of it.
    """
    if not 0 < share < 1:
        raise SplitError(f"holdout share must be in (0, 1), got {share}")
    matrix = matrix.tocsr()
    counts = np.diff(matrix.indptr)
    rows = np.repeat(np.arange(matrix.shape[0]), counts)
    rng = np.random.default_rng(seed)
    # A random rank of each entry within its row: hide the entries ranked below the row's quota.
    order = np.lexsort((rng.random(matrix.nnz), rows))
    rank = np.empty(matrix.nnz, np.int64)
    rank[order] = np.arange(matrix.nnz) - np.repeat(matrix.indptr[:-1], counts)
    quota = np.where(counts >= 2, np.maximum(1, np.floor(counts * share)), 0).astype(np.int64)
    pick = rank < quota[rows]
    coo = matrix.tocoo()
    def part(m):
        return sp.csr_matrix((coo.data[m], (coo.row[m], coo.col[m])), shape=matrix.shape, dtype=np.float32)
    return part(~pick), part(pick)


def split_strong_generalisation(matrix: sp.csr_matrix, user_fraction: float, seed: int, fold_in: float = 0.8):
    """Liang et al. 2018's strong generalisation: (train, fold_in, truth, users).

    A random `user_fraction` of the rows (`users`, sorted) is removed from `train`; of each such
    user's entries a random `fold_in` share is the request sent to the model (`fold_in`), the
    rest is what it is scored on (`truth`). All three keep the input's shape.
    """
    if not 0 < user_fraction < 1:
        raise SplitError(f"user_fraction must be in (0, 1), got {user_fraction}")
    matrix = matrix.tocsr()
    rng = np.random.default_rng(seed)
    active = np.flatnonzero(np.diff(matrix.indptr) > 0)
    users = np.sort(rng.choice(active, max(1, int(round(len(active) * user_fraction))), replace=False))
    held = np.zeros(matrix.shape[0], np.float32)
    held[users] = 1
    train, heldout = (sp.diags(1 - held) @ matrix).tocsr(), (sp.diags(held) @ matrix).tocsr()
    train.eliminate_zeros()  # the diagonal's zeros may be stored: drop them, or they read as ratings
    heldout.eliminate_zeros()
    visible, hidden = holdout_share_per_user(heldout, 1 - fold_in, seed + 1)
    return train, visible, hidden, users


def _to_seconds(t) -> int:
    """Epoch seconds of a cut-off: an int, digits (epoch seconds), or an ISO date or time (UTC
    where no zone is given). Raises SplitError for anything else."""
    if isinstance(t, (int, np.integer)):
        return int(t)
    if isinstance(t, str) and t.strip().lstrip("-").isdigit():
        return int(t)
    try:
        stamp = pd.Timestamp(t)
    except ValueError:
        raise SplitError(f"cut-off {t!r}: expected an ISO date or time (2024-05-01, 2024-05-01T12:00) "
                         "or epoch seconds") from None
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return int(stamp.timestamp())
