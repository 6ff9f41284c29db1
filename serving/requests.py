"""Request parsing and validation as pure functions: a request's tensors -> parsed rows, or a
RequestError naming the first real problem; then every valid row scattered into one dense batch.

The preprocess model and the fused `recommend` model run this; tests/serving runs it without a
server. Checks run in this order, so the message names the first problem: the request's shape
(EXCLUDE_IDS/INCLUDE_IDS beyond MAX_RULE_IDS included), the user, the sent ratings, then TOP_K,
then the rules' ids (their type and encoding).

Cold start: a USER_ID the catalogue does not know, or a known user with no training ratings,
sending no known item, is refused (400) or, where the repository was built with the popularity
cold start (assets.json "cold_start"), parsed as a row with no ratings at all, which the lists
rank by popularity (serving.lists.Lists.cold). An unknown user's sent history folds in as a new
user's does.

Ids are the catalogue's kind: int64, or strings (the catalogue's ids a numpy unicode array, a
request's a BYTES tensor of UTF-8, which Triton hands over as an object array of bytes). A
string id that is empty (as USER_ID), not UTF-8 or holds a NUL is refused; an empty ITEM_IDS
entry is padding, as -1 is for integer ids.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Mapping, NamedTuple

import numpy as np

from serving.contract import (COLD_START_POPULARITY, COLD_START_REFUSE, COLD_STARTS, EXCLUDE_IDS, INCLUDE_IDS,
                              ITEM_IDS, MAX_ITEMS_PER_REQUEST, MAX_RULE_IDS, PAD, RATINGS, TOP_K, USER_ID,
                              default_top_k)
from serving.blocklist import blocked_columns, load_blocklist
from serving.rules import rule_mask

STRING_PAD = ""   # an ITEM_IDS entry of b"" (PAD_ID) decoded: padding in a string catalogue

NO_COLS, NO_VALS = np.zeros(0, np.int64), np.zeros(0, np.float32)  # a row with no ratings sent
# Integer item ids are looked up in a table indexed by id (Catalogue.item_columns) while it holds
# at most this many entries per item (ids from min to max, gaps included); else by searchsorted.
MAX_TABLE_PER_ITEM = 16


class RequestError(ValueError):
    """The request is wrong (HTTP 400 / gRPC INVALID_ARGUMENT); the message says how to fix it."""


class Row(NamedTuple):
    """One user of a request, checked."""
    user_row: int          # the user's history row, -1 for a new user
    cols: np.ndarray       # int64 [n]: item columns of the ratings sent (known items only)
    vals: np.ndarray       # float32 [n]: those ratings
    k: int                 # TOP_K
    unknown: int           # sent item ids the catalogue does not know (skipped), rules' ids included
    exclude: np.ndarray = NO_COLS   # int64: item columns the row must never get (EXCLUDE_IDS)
    include: np.ndarray | None = None  # int64: the only columns it may get (INCLUDE_IDS); None: any


@dataclass(frozen=True)
class Catalogue:
    """What requests are checked against: the served ids, the users' training histories (CSR)
    and the rating scale. Ids are sorted: an id's index is its column (items) or row (users)."""
    item_ids: np.ndarray   # int64 or unicode [n_items]
    user_ids: np.ndarray   # int64 or unicode [n_users]
    indptr: np.ndarray     # int64 [n_users + 1]
    indices: np.ndarray    # int64 [nnz]: item columns
    data: np.ndarray       # float32 [nnz]: ratings
    low: float
    high: float
    implicit: bool = False  # an interaction log: values are event weights, any positive one is valid
    cold_start: str = COLD_START_REFUSE   # COLD_STARTS: a user with nothing to rank from is refused,
                                          # or gets the popularity list (a repository's own choice)
    # int64 item columns no list returns: the repository's blocklist (serving/blocklist.py)
    blocklist: np.ndarray = field(default_factory=lambda: NO_COLS)

    @property
    def popularity_cold_start(self) -> bool:
        return self.cold_start == COLD_START_POPULARITY

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def item_pad(self):
        """The ITEM_IDS padding entry, decoded: -1 (integer ids) or "" (string ids)."""
        return STRING_PAD if self.item_ids.dtype.kind == "U" else PAD

    @cached_property
    def item_table(self) -> tuple[int, np.ndarray] | None:
        """(lowest id, int64 [highest - lowest + 2]: each integer id's column, -1 for an id the
        catalogue lacks and in the last entry, which ids beyond either end read), or None: string
        ids, none, a negative one, or ids too sparse (MAX_TABLE_PER_ITEM). Built on first use."""
        ids = self.item_ids
        if ids.dtype.kind not in "iu" or not ids.size or ids[0] < 0:
            return None
        low, span = int(ids[0]), int(ids[-1]) - int(ids[0]) + 1
        if span > MAX_TABLE_PER_ITEM * ids.size:
            return None
        table = np.full(span + 1, -1, np.int64)
        table[ids - low] = np.arange(ids.size)
        return low, table

    def item_columns(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Item ids (of the catalogue's kind, as_ids) -> (int64 columns, bool known), both of
        `ids`' shape; an unknown id's column means nothing. Integer ids read a table (item_table;
        with the lowest id >= 0, `ids - low` can wrap around int64 only to values above the
        table, which read its last entry), others one searchsorted (sorted keys first)."""
        table = self.item_table
        if table is not None:
            low, table = table
            pos = table[np.clip(ids - low, -1, table.size - 1)]
            return pos, pos >= 0
        flat = ids.reshape(-1)
        # Sorted keys first: numpy's searchsorted is several times faster on them.
        order = np.argsort(flat)
        pos = np.empty(flat.size, np.int64)
        pos[order] = np.clip(np.searchsorted(self.item_ids, flat[order]), 0, self.n_items - 1)
        pos = pos.reshape(ids.shape)
        return pos, self.item_ids[pos] == ids

    @property
    def history(self) -> np.ndarray:
        """int64 [n_users]: training ratings per user (0: all of them fell in the test part)."""
        return np.diff(self.indptr)

    @classmethod
    def load(cls, folder: str) -> "Catalogue":
        """From a version folder's item_ids.npy, user_ids.npy, hist_{indptr,indices,data}.npy and
        assets.json (plain arrays, never pickle). Raises OSError/KeyError on a folder a build did not fill."""
        load = lambda name: np.load(os.path.join(folder, name), allow_pickle=False)  # noqa: E731
        with open(os.path.join(folder, "assets.json")) as f:
            assets = json.load(f)
        low, high = assets["scale"]
        implicit = assets.get("dataset", {}).get("feedback") == "implicit"
        # A repository built before the option refuses, as it did then.
        cold_start = assets.get("cold_start", COLD_START_REFUSE)
        if cold_start not in COLD_STARTS:
            raise KeyError(f"assets.json cold_start {cold_start!r} is none of {COLD_STARTS}")
        return cls(load("item_ids.npy"), load("user_ids.npy"), load("hist_indptr.npy"), load("hist_indices.npy"),
                   load("hist_data.npy"), float(low), float(high), implicit, cold_start)

    def with_blocklist(self, folder: str | os.PathLike) -> "Catalogue":
        """This catalogue with `folder`'s blocklist (serving/blocklist.py; a Python model passes
        its own folder) as `blocklist`: its ids this catalogue holds, as columns; none where
        `folder` has no blocklist."""
        ids = load_blocklist(folder)
        return replace(self, blocklist=blocked_columns(ids, self.item_ids)) if ids else self


def parse_request(tensors: Mapping[str, np.ndarray | None], catalogue: Catalogue) -> list[Row]:
    """A request's tensors (USER_ID, ITEM_IDS, RATINGS, TOP_K, EXCLUDE_IDS, INCLUDE_IDS; an absent
    one None or missing), shaped [rows, ...] as the contract says -> one Row per row (a request
    may carry several users). Raises RequestError with the reason."""
    user, items, ratings, top_k = (tensors.get(name) for name in (USER_ID, ITEM_IDS, RATINGS, TOP_K))
    rules = {name: tensors.get(name) for name in (EXCLUDE_IDS, INCLUDE_IDS)}
    present = [t for t in (user, items, ratings) if t is not None]
    if top_k is None:  # the common case: ten recommendations per user (a smaller catalogue: all)
        top_k = np.full((present[0].shape[0] if present else 1, 1), default_top_k(catalogue.n_items), np.int32)
    if top_k.size == 0 or top_k.ndim != 2 or top_k.shape[1] != 1:
        raise RequestError("TOP_K must be one integer per row")
    n = top_k.shape[0]
    ks = top_k.reshape(-1)
    if np.any(ks != ks[0]):
        raise RequestError("TOP_K differs across the rows of one request; send one request per TOP_K")
    for name, t in ((USER_ID, user), (ITEM_IDS, items), (RATINGS, ratings), *rules.items()):
        if t is not None and t.size and t.shape[0] != n:
            raise RequestError(f"{name} has {t.shape[0]} rows but TOP_K has {n}")
    for name, t in rules.items():
        if t is not None and t.size and t.size // n > MAX_RULE_IDS:
            raise RequestError(f"{name} has {t.size // n} ids per row; the limit is {MAX_RULE_IDS} (MAX_RULE_IDS)")
    k = int(ks[0])
    given = lambda t: t is not None and t.size > 0  # noqa: E731
    if given(user):
        user = as_ids(user, catalogue.user_ids, USER_ID)
        if catalogue.user_ids.dtype.kind == "U" and (user == "").any():
            raise RequestError("USER_ID is empty: send the user's id, or leave USER_ID out for a new user")
    if given(user) and not given(items) and not given(ratings):
        parsed = _parse_users(user.reshape(n, -1)[:, 0], k, catalogue)
    else:
        parsed = [_parse_row(user[b] if given(user) else None, items[b] if given(items) else None,
                             ratings[b] if given(ratings) else None, k, catalogue) for b in range(n)]
    if not any(given(t) for t in rules.values()):
        return parsed
    exclude, include = (rule_columns(t.reshape(n, -1), catalogue, name) if given(t) else None
                        for name, t in rules.items())
    out = []
    for b, row in enumerate(parsed):
        unknown = row.unknown
        ex, inc = NO_COLS, None
        if exclude is not None:
            ex, skipped, _ = exclude[b]
            unknown += skipped
        if include is not None:
            inc, skipped, padding_only = include[b]
            unknown += skipped
            inc = None if padding_only else inc
        out.append(row._replace(unknown=unknown, exclude=ex, include=inc))
    return out


def rule_columns(ids: np.ndarray, catalogue: Catalogue, name: str) -> list[tuple]:
    """A rule tensor's rows [rows, n] of raw ids (padded as ITEM_IDS is) -> per row (int64 item
    columns of the known ids, how many ids were unknown, whether the row held padding alone).
    One lookup for the whole tensor (Catalogue.item_columns). Raises RequestError for ids of the
    other kind, not UTF-8 or holding a NUL (as_ids)."""
    ids = as_ids(ids, catalogue.item_ids, name)
    rows = ids.shape[0]
    flat = ids.reshape(-1)
    pad = flat == catalogue.item_pad
    pos, known = catalogue.item_columns(flat)
    known &= ~pad
    unknown = (~known & ~pad).reshape(rows, -1).sum(axis=1).tolist()
    padding_only = pad.reshape(rows, -1).all(axis=1).tolist()
    cols, ends = pos[known], np.cumsum(known.reshape(rows, -1).sum(axis=1)).tolist()
    return [(cols[a:b], u, p) for a, b, u, p in zip([0] + ends[:-1], ends, unknown, padding_only)]


def as_ids(values: np.ndarray, served: np.ndarray, name: str) -> np.ndarray:
    """A request's ids in the kind of the `served` ids, same shape: int64, or str (unicode) for a
    string catalogue, decoded from UTF-8 bytes (or taken as str). Raises RequestError naming
    `name` for ids of the other kind, bytes that are not UTF-8 or an id holding a NUL (numpy's
    unicode arrays would drop a trailing one and match another id)."""
    if served.dtype.kind != "U":
        if values.dtype.kind not in "iu":
            raise RequestError(f"{name} must be integers for this model (INT64), got {values.dtype}")
        return values.astype(np.int64, copy=False)
    if values.dtype.kind not in "OSU":
        raise RequestError(f"{name} must be strings for this model (BYTES, UTF-8), got {values.dtype}")
    out = []
    for v in values.reshape(-1).tolist():
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise RequestError(f"{name} holds {v[:40]!r}, which is not UTF-8: send ids as UTF-8 text") from None
        elif not isinstance(v, str):
            raise RequestError(f"{name} must be strings for this model (BYTES, UTF-8), got {type(v).__name__}")
        if "\x00" in v:
            raise RequestError(f"{name} holds {v[:40]!r}, with a NUL character: no id has one")
        out.append(v)
    return np.array(out, dtype=str).reshape(values.shape)


def _show(uid) -> str:
    """An id as a message names it: integers bare, strings quoted (so that spaces show)."""
    return repr(str(uid)) if isinstance(uid, str) else str(uid)


def _check_k(k: int, catalogue: Catalogue) -> None:
    """After the user and the ratings are checked: their errors say more than a bad TOP_K."""
    if not 1 <= k <= catalogue.n_items:
        raise RequestError(f"TOP_K must be in 1..{catalogue.n_items}, got {k}")


def _no_history(uid) -> RequestError:
    return RequestError(f"user {_show(uid)} has no ratings in the training data: send ITEM_IDS with RATINGS")


def _parse_users(uids: np.ndarray, k: int, catalogue: Catalogue) -> list[Row]:
    """Ids only (the common batched request): every row looked up in one searchsorted, with the
    same checks and messages as _parse_row."""
    ids = catalogue.user_ids
    rows = np.clip(np.searchsorted(ids, uids), 0, len(ids) - 1)
    known = ids[rows] == uids
    cold = catalogue.popularity_cold_start
    if not known.all() and not cold:
        raise RequestError(f"unknown USER_ID {_show(uids[~known][0])}")
    # A user whose ratings all fell in the test part would get the all-zero input's list, the
    # same for everyone: refused, as a fold-in with no known item is, unless the repository
    # answers such users with the popularity list (their row: no ratings at all).
    empty = catalogue.history[rows] == 0
    if empty.any() and not cold:
        raise _no_history(uids[empty][0])
    _check_k(k, catalogue)
    rows = np.where(known, rows, -1)
    return [Row(row, NO_COLS, NO_VALS, k, 0) for row in rows.tolist()]


def _parse_row(user, items, ratings, k: int, catalogue: Catalogue) -> Row:
    items = NO_COLS if items is None else items.reshape(-1)
    if ratings is None and items.size:
        # A history without values: each item as rated at the scale's top (an interaction log's
        # only value, 1.0; on a rating scale, "liked it"). model_repository/README.md says why.
        ratings = np.full(items.size, catalogue.high, np.float32)
    ratings = NO_VALS if ratings is None else ratings.reshape(-1)
    if items.size != ratings.size:
        if items.size == 0:
            raise RequestError(f"RATINGS sent without ITEM_IDS ({ratings.size} ratings for no items)")
        raise RequestError(f"ITEM_IDS has {items.size} entries but RATINGS has {ratings.size}")
    if items.size > MAX_ITEMS_PER_REQUEST:
        raise RequestError(f"{items.size} ratings in one request; the limit is {MAX_ITEMS_PER_REQUEST}")
    if items.size:
        items = as_ids(items, catalogue.item_ids, ITEM_IDS)
    pad = catalogue.item_pad
    real = (items != pad) & (ratings != 0)   # padding: see contract.PAD
    sent = items.size
    items, ratings = items[real], ratings[real]
    has_user = user is not None and user.size > 0
    if not has_user and not items.size:
        if sent:  # everything sent was padding: most likely a rating of 0 meant as a rating
            raise RequestError(f"ITEM_IDS with RATINGS held only padding (item {pad!r} or rating 0, which means "
                               f"'not rated'): send ratings within {catalogue.low:g}..{catalogue.high:g}")
        raise RequestError("empty request: send USER_ID, or ITEM_IDS (with or without RATINGS), or both")
    row, uid = -1, None
    if has_user:
        uid = user.reshape(-1)[0]
        row = int(np.searchsorted(catalogue.user_ids, uid))
        if row >= len(catalogue.user_ids) or catalogue.user_ids[row] != uid:
            if not catalogue.popularity_cold_start:
                raise RequestError(f"unknown USER_ID {_show(uid)}")
            row = -1   # a new user: the history sent folds in; none known: the popularity list
    cols, vals, unknown = NO_COLS, NO_VALS, 0
    if items.size:
        uniq, seen = np.unique(items, return_counts=True)
        if (seen > 1).any():
            raise RequestError(f"ITEM_IDS repeats item {_show(uniq[seen > 1][0])}: send each item once")
        if not np.all(np.isfinite(ratings)):
            raise RequestError("RATINGS contains NaN or infinity")
        if catalogue.implicit:
            # An event weight (a count of plays, a basket's quantity) may exceed anything seen in
            # training; only a negative one has no meaning.
            if (ratings < 0).any():
                raise RequestError(f"RATINGS {ratings[ratings < 0][0]:g}: an interaction log's values are event "
                                   "weights; send values above 0")
        elif ((ratings < catalogue.low) | (ratings > catalogue.high)).any():
            bad = (ratings < catalogue.low) | (ratings > catalogue.high)
            raise RequestError(f"rating {ratings[bad][0]:g} outside scale {catalogue.low:g}..{catalogue.high:g}")
        pos, known = catalogue.item_columns(items)
        unknown = int((~known).sum())  # skipped and reported, never an error
        cols, vals = pos[known], ratings[known].astype(np.float32)
    if cols.size == 0 and not (has_user and catalogue.popularity_cold_start):
        if row < 0:
            raise RequestError("no known items among ITEM_IDS: nothing to recommend from")
        if catalogue.history[row] == 0:
            raise _no_history(uid)
    _check_k(k, catalogue)
    return Row(row, cols, vals, k, unknown)


class Batch(NamedTuple):
    """Every valid request of one `execute` call as one dense batch."""
    errors: dict           # {request index: message} for the refused requests
    spans: list            # [(request index, first row, end row)] for the others, in order
    dense: np.ndarray      # float32 [rows, n_items]: history, overridden by the ratings sent
    top_k: np.ndarray      # int32 [rows, 1]
    unknown: np.ndarray    # int32 [rows, 1]
    blocked: np.ndarray    # bool [rows, n_items]: items the rows' rules keep out (serving/rules.py)


def prepare(requests: list[Mapping[str, np.ndarray | None]], catalogue: Catalogue) -> Batch:
    """Check every request (a bad one gets its own error, never failing its batch-mates), then
    scatter the valid ones' rows into one dense batch with vectorised assignments."""
    parsed: list[Row] = []
    spans, errors = [], {}
    for i, tensors in enumerate(requests):
        try:
            rows = parse_request(tensors, catalogue)
        except RequestError as e:
            errors[i] = str(e)
            continue
        spans.append((i, len(parsed), len(parsed) + len(rows)))
        parsed.extend(rows)
    return Batch(errors, spans, *densify(parsed, catalogue))


def densify(parsed: list[Row], catalogue: Catalogue) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows -> (dense float32 [rows, n_items], top_k int32 [rows, 1], unknown int32 [rows, 1],
    blocked bool [rows, n_items]): known users' training histories first, then the ratings sent,
    which override them; blocked: the rows' EXCLUDE_IDS/INCLUDE_IDS rules (rules.rule_mask) and
    the catalogue's blocklist."""
    dense = np.zeros((len(parsed), catalogue.n_items), np.float32)
    b = np.arange(len(parsed))
    rows = np.array([p.user_row for p in parsed], np.int64)
    has = rows >= 0
    starts, ends = catalogue.indptr[rows[has]], catalogue.indptr[rows[has] + 1]
    counts = ends - starts
    if counts.sum():
        # Every history entry's position in the CSR arrays: row start + offset within the row.
        take = np.arange(counts.sum()) + np.repeat(starts - (np.cumsum(counts) - counts), counts)
        dense[np.repeat(b[has], counts), catalogue.indices[take]] = catalogue.data[take]
    counts = np.array([p.cols.size for p in parsed], np.int64)
    if counts.sum():
        dense[np.repeat(b, counts), np.concatenate([p.cols for p in parsed])] = np.concatenate([p.vals for p in parsed])
    ks = np.array([p.k for p in parsed], np.int32).reshape(-1, 1)
    unknown = np.array([p.unknown for p in parsed], np.int32).reshape(-1, 1)
    blocked = rule_mask(catalogue.n_items, [p.exclude for p in parsed], [p.include for p in parsed])
    blocked[:, catalogue.blocklist] = True   # the catalogue's blocklist: an exclude on every row
    return dense, ks, unknown, blocked
