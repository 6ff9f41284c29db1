"""A batch job's optional inputs: histories of users to fold in (`--histories`) and the rules
files (`--exclude-file`, `--include-file`).

Histories are ranked as the served `recommend` ranks a request with ITEM_IDS and RATINGS
(serving/requests.py): the user's row is the ratings sent (over the user's training row when
the run knows the id, as a request with USER_ID and ITEM_IDS), an item without a rating counts
as rated at the scale's top, ids the catalogue does not know are skipped and counted. Rules are
the served EXCLUDE_IDS / INCLUDE_IDS: serving.rules.rule_mask builds the mask, and
serving.rules.top_k_allowed ranks with it (builder.batch.rank_users).
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from serving.rules import rule_mask


class InputError(ValueError):
    """A histories or rules file is unusable (the message names the file and the line or user)."""


def file_sha256(path: Path | None) -> str | None:
    """The hex SHA-256 of a file's bytes (what a resumed job must find unchanged), None for None."""
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def histories_sha256(spec: str | Path | None) -> str | None:
    """The hex SHA-256 of a histories data word (what a resumed job must find unchanged): a plain
    path to one file, its bytes' (file_sha256); a URI (csv:PATH?user=...) or a folder or glob of
    several files, of each file's hash and the URI's options (they change what is read). None
    for None. Raises DataFormatError as builder.data.sources.source_files does."""
    from builder.data.logs import FORMATS, split_uri
    from builder.data.sources import source_files
    if spec is None:
        return None
    spec = str(spec)
    files = source_files(spec)
    uri = spec.partition(":")[0] in FORMATS
    if len(files) == 1 and not uri:
        return file_sha256(files[0])
    h = hashlib.sha256()
    for f in files:
        h.update(file_sha256(f).encode())
    if uri:
        fmt, _, query = split_uri(spec)
        h.update(f"{fmt}?{query}".encode())
    return h.hexdigest()


def _positions(ids: np.ndarray, catalogue: np.ndarray) -> np.ndarray:
    """int64 index of each id (any kind: int, str) in the sorted `catalogue` (int64 or unicode),
    -1 where it is not there (a text id that is no integer, for an integer catalogue, included)."""
    if catalogue.dtype.kind == "U":
        same = np.asarray([str(i) for i in np.asarray(ids).tolist()], dtype=str)
        return pd.Index(catalogue).get_indexer(same).astype(np.int64) if len(same) else np.zeros(0, np.int64)
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return pd.Index(catalogue).get_indexer(ids.astype(np.int64)).astype(np.int64)
    as_int = pd.to_numeric(pd.Series(ids, dtype=object), errors="coerce")
    out = np.full(len(ids), -1, np.int64)
    ok = as_int.notna().to_numpy() & (as_int.fillna(0.5) % 1 == 0).to_numpy()
    if ok.any():
        out[ok] = pd.Index(catalogue).get_indexer(as_int[ok].astype(np.int64).to_numpy())
    return out


@dataclasses.dataclass
class Histories:
    """The users of a histories file as rows to rank: `dataset` is the run's Dataset with train
    replaced by these users' rows (csr float32 [users, n_items]) and user_ids by theirs (sorted,
    the file's kind: int64 or unicode), test empty. `known_users`: how many ids the run knows
    (their training rows are under the ratings sent); `unknown_items`: rows of the file naming
    items the catalogue does not have (skipped); `no_known_items`: users dropped because none of
    their items is in the catalogue (served, such a request is refused: nothing to rank from)."""
    dataset: object
    events: int
    known_users: int
    unknown_items: int
    no_known_items: int

    def summary(self) -> dict:
        """What the manifest records of the file."""
        return {"history_users": int(self.dataset.n_users), "history_rows": self.events,
                "history_known_users": self.known_users, "history_unknown_items": self.unknown_items,
                "history_users_without_known_items": self.no_known_items}


def read_histories(path: str | Path, dataset) -> Histories:
    """The histories in `path`, a data word as `aerec train --data` takes it (u.data, ratings.dat,
    a CSV / TSV / Parquet log with user and item columns and an optional rating or weight, or
    csv:PATH?user=COL&item=COL...; see builder/data/sources.py) over the run's `dataset` catalogue.

    A rating is checked against the run's scale (explicit runs; a log's weights must be > 0); a
    file without ratings (an implicit log) rates each item at the top of the run's scale, as the
    server does for ITEM_IDS without RATINGS; on an implicit run a weight is taken as it is.
    Raises InputError for a rating outside the scale, a file with no user whose items the
    catalogue knows; DataFormatError as the loaders do (the file and line)."""
    from builder.data.sources import load_source
    ratings = load_source(str(path))
    frame = ratings.frame
    users = ratings.raw_ids("user", frame["user"].to_numpy())
    items = ratings.raw_ids("item", frame["item"].to_numpy())
    values = frame["rating"].to_numpy(np.float32)
    low, high = dataset.scale
    if ratings.implicit and not dataset.implicit:
        values = np.full(len(values), high, np.float32)
    elif not dataset.implicit:
        bad = (values < low) | (values > high)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"{path}: user {users[i]!r} rates item {items[i]!r} {values[i]:g}, outside the run's "
                             f"scale {low:g}..{high:g}")
    cols = _positions(items, dataset.item_ids)
    known_item = cols >= 0
    order_ids, codes = np.unique(users, return_inverse=True)
    has_known = np.bincount(codes[known_item], minlength=len(order_ids)) > 0
    keep_user = np.flatnonzero(has_known)
    if not len(keep_user):
        raise InputError(f"{path}: none of its {len(order_ids)} users has an item of this run's catalogue "
                         f"({dataset.n_items} items): nothing to rank from")
    new_code = np.full(len(order_ids), -1, np.int64)
    new_code[keep_user] = np.arange(len(keep_user))
    hist_ids = order_ids[keep_user]
    r, c, v = new_code[codes[known_item]], cols[known_item], values[known_item]
    sent = sp.csr_matrix((v, (r, c)), shape=(len(hist_ids), dataset.n_items), dtype=np.float32)
    sent.sum_duplicates()   # one pair per (user, item) after the loaders; kept for safety
    rows = _positions(hist_ids, dataset.user_ids)
    known = rows >= 0
    if known.any():
        # A request with USER_ID and ITEM_IDS: the training row, the ratings sent over it.
        base = (sp.diags(known.astype(np.float32)) @ dataset.train[np.where(known, rows, 0)]).tocsr()
        sent_mask = sent.copy()
        sent_mask.data[:] = 1.0
        train = (base - base.multiply(sent_mask) + sent).tocsr().astype(np.float32)
        train.eliminate_zeros()
    else:
        train = sent
    view = dataclasses.replace(dataset, train=train, test=sp.csr_matrix(train.shape, dtype=np.float32),
                               user_ids=hist_ids)
    return Histories(view, int(len(frame)), int(known.sum()), int((~known_item).sum()),
                     int(len(order_ids) - len(keep_user)))


@dataclasses.dataclass
class Rules:
    """The rules files of a job over its users (row indices of `user_ids`): per column set a
    global part (every user) and per-user parts. `unknown_items` / `unknown_users`: ids the
    catalogue or the job's users do not have (skipped and counted, as the server drops rule ids
    it does not know)."""
    n_items: int
    exclude_all: np.ndarray
    exclude_user: dict
    include_all: np.ndarray | None
    include_user: dict
    unknown_items: int = 0
    unknown_users: int = 0

    def mask(self, users: np.ndarray) -> np.ndarray:
        """bool [len(users), n_items] (serving.rules.rule_mask): True where a user's rules keep
        the item out: its excludes and the global ones. Includes: with global lines, every user
        may get only those and its own; without, a user listed gets only its own (an empty set,
        its ids all unknown: nothing, as an empty INCLUDE_IDS) and a user not listed any item."""
        exclude = [np.union1d(self.exclude_all, self.exclude_user.get(u, self.exclude_all)) for u in users.tolist()]
        if self.include_all is not None:
            include = [np.union1d(self.include_all, self.include_user.get(u, self.include_all))
                       for u in users.tolist()]
        else:
            include = [self.include_user.get(u) for u in users.tolist()]
        return rule_mask(self.n_items, exclude, include)

    def summary(self) -> dict:
        """What the manifest records of the rules."""
        return {"rules_unknown_items": self.unknown_items, "rules_unknown_users": self.unknown_users}


def _read_rule_file(path: Path, user_ids: np.ndarray, item_ids: np.ndarray) -> tuple:
    """(global columns int64, {user row: columns}, unknown items, unknown users) of one rules file."""
    glob, pairs_u, pairs_i = [], [], []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        raw = line.strip()
        if not raw or raw.startswith("#"):
            continue
        fields = [f.strip() for f in raw.replace("\t", ",").split(",")]
        if len(fields) == 1:
            glob.append(fields[0])
        elif len(fields) == 2 and all(fields):
            pairs_u.append(fields[0])
            pairs_i.append(fields[1])
        else:
            raise InputError(f"{path} line {n}: {raw!r}: give one item id, or a user id and an item id "
                             "separated by a comma")
    g = _positions(np.asarray(glob, dtype=str), item_ids)
    u = _positions(np.asarray(pairs_u, dtype=str), user_ids)
    i = _positions(np.asarray(pairs_i, dtype=str), item_ids)
    per_user = {}
    listed = u >= 0
    if listed.any():   # a listed user whose items are all unknown keeps an empty rule (INCLUDE_IDS: nothing)
        frame = pd.DataFrame({"u": u[listed], "i": i[listed]})
        per_user = {int(k): np.unique(v[v >= 0].to_numpy()) for k, v in frame.groupby("u")["i"]}
    return (np.unique(g[g >= 0]), per_user, int((g < 0).sum() + ((i < 0) & (u >= 0)).sum()), int((u < 0).sum()),
            bool(glob))


def read_rules(exclude_file: Path | None, include_file: Path | None, user_ids: np.ndarray,
               item_ids: np.ndarray) -> Rules | None:
    """The rules of `exclude_file` and `include_file` (each line one item id, for every user, or
    `user_id,item_id`, for that user; blank lines and lines starting with # skipped) over the job's
    users `user_ids` and the catalogue `item_ids`; None without either file. Ids unknown to the
    catalogue or the job are skipped and counted. Raises InputError naming the line of a line with
    more fields, FileNotFoundError for a missing file."""
    if exclude_file is None and include_file is None:
        return None
    for p in (exclude_file, include_file):
        if p is not None and not Path(p).is_file():
            raise FileNotFoundError(f"{p}: rules file not found")
    ex_all, ex_user, ex_unk_i, ex_unk_u, _ = (_read_rule_file(exclude_file, user_ids, item_ids) if exclude_file
                                              else (np.zeros(0, np.int64), {}, 0, 0, False))
    inc_all, inc_user, in_unk_i, in_unk_u, inc_global = (_read_rule_file(include_file, user_ids, item_ids)
                                                         if include_file else (None, {}, 0, 0, False))
    return Rules(len(item_ids), ex_all, ex_user, inc_all if inc_global else None, inc_user,
                 ex_unk_i + in_unk_i, ex_unk_u + in_unk_u)
