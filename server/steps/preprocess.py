"""Triton Python model `preprocess`: a request's user id and/or sparse ratings -> dense vector.

numpy only (runs unchanged in NVIDIA's container). All requests handed to `execute` are
checked one by one (a bad one gets its own error, never failing its batch-mates), then the
valid ones are scattered into one dense batch with a single vectorised assignment.
"""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

MAX_ITEMS_PER_REQUEST = 10_000
DEFAULT_TOP_K = 10  # when TOP_K is left out; at most the catalogue's size
# Several new users in one request send ITEM_IDS/RATINGS as [rows, longest list]: shorter rows
# are padded with ITEM_IDS -1 (any RATINGS) or RATINGS 0 (0 is the dense vector's "not rated";
# no scale includes it). Padding entries are dropped before any check.
PAD_ITEM = -1
NO_COLS, NO_VALS = np.zeros(0, np.int64), np.zeros(0, np.float32)  # a row with no ratings sent


def request_error(message: str):
    """A client's mistake: HTTP 400 / gRPC INVALID_ARGUMENT through the ensemble (a plain
    TritonError would be 500 / INTERNAL, telling the client the server failed)."""
    return pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)


class TritonPythonModel:
    """Request errors raise ValueError inside; `execute` answers them with INVALID_ARG (HTTP 400,
    gRPC INVALID_ARGUMENT). Anything else is a server fault (500 / INTERNAL)."""

    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        load = lambda name: np.load(os.path.join(here, name), allow_pickle=False)  # noqa: E731
        self.item_ids = load("item_ids.npy")      # sorted raw ids, index = column
        self.user_ids = load("user_ids.npy")      # sorted raw ids, index = history row
        # Users' training histories as CSR arrays (plain .npy, never pickle).
        self.indptr, self.indices = load("hist_indptr.npy"), load("hist_indices.npy")
        self.data = load("hist_data.npy")
        self.history = np.diff(self.indptr)       # training ratings per user (0: all in the test part)
        meta = json.loads(open(os.path.join(here, "assets.json")).read())
        self.low, self.high = meta["scale"]
        self.n_items = len(self.item_ids)

    def _parse(self, request):
        """[(user_row or -1, cols, ratings, top_k, unknown)] for each row of the request (a client
        may batch several users in one request), or raise ValueError with the reason."""
        def get(name):
            t = pb_utils.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy()
        user, items, ratings, top_k = get("USER_ID"), get("ITEM_IDS"), get("RATINGS"), get("TOP_K")
        present = [t for t in (user, items, ratings) if t is not None]
        if top_k is None:  # optional: the common case, ten recommendations per user (fewer items: all)
            top_k = np.full((present[0].shape[0] if present else 1, 1), min(DEFAULT_TOP_K, self.n_items), np.int32)
        if top_k.size == 0 or top_k.ndim != 2 or top_k.shape[1] != 1:
            raise ValueError("TOP_K must be one integer per row")
        n = top_k.shape[0]
        ks = top_k.reshape(-1)
        if np.any(ks != ks[0]):
            raise ValueError("TOP_K differs across the rows of one request; send one request per TOP_K")
        for name, t in (("USER_ID", user), ("ITEM_IDS", items), ("RATINGS", ratings)):
            if t is not None and t.size and t.shape[0] != n:
                raise ValueError(f"{name} has {t.shape[0]} rows but TOP_K has {n}")
        ids_only = (user is not None and user.size and (items is None or not items.size)
                    and (ratings is None or not ratings.size))
        if ids_only:
            return self._parse_users(user.reshape(n, -1)[:, 0], int(ks[0]))
        return [self._parse_row(None if user is None or not user.size else user[b],
                                None if items is None or not items.size else items[b],
                                None if ratings is None or not ratings.size else ratings[b], int(ks[0]))
                for b in range(n)]

    def _check_k(self, k):
        """After the user and the ratings are checked: their errors say more than a bad TOP_K."""
        if not 1 <= k <= self.n_items:
            raise ValueError(f"TOP_K must be in 1..{self.n_items}, got {k}")

    @staticmethod
    def _no_history(uid) -> ValueError:
        return ValueError(f"user {uid} has no ratings in the training data: send ITEM_IDS with RATINGS")

    def _parse_users(self, uids, k):
        """Ids only (the common batched request): every row looked up in one searchsorted,
        with the same checks and messages as _parse_row."""
        rows = np.clip(np.searchsorted(self.user_ids, uids), 0, len(self.user_ids) - 1)
        known = self.user_ids[rows] == uids
        if not known.all():
            raise ValueError(f"unknown USER_ID {uids[~known][0]}")
        # A user whose ratings all fell in the test part would get the all-zero input's list,
        # the same for everyone: refused, as a fold-in with no known item is.
        empty = self.history[rows] == 0
        if empty.any():
            raise self._no_history(uids[empty][0])
        self._check_k(k)
        return [(row, NO_COLS, NO_VALS, k, 0) for row in rows.tolist()]

    def _parse_row(self, user, items, ratings, k):
        items = NO_COLS if items is None else items.reshape(-1)
        ratings = NO_VALS if ratings is None else ratings.reshape(-1)
        if items.size != ratings.size:
            if items.size == 0:
                raise ValueError(f"RATINGS sent without ITEM_IDS ({ratings.size} ratings for no items)")
            raise ValueError(f"ITEM_IDS has {items.size} entries but RATINGS has {ratings.size}")
        if items.size > MAX_ITEMS_PER_REQUEST:
            raise ValueError(f"{items.size} ratings in one request; the limit is {MAX_ITEMS_PER_REQUEST}")
        real = (items != PAD_ITEM) & (ratings != 0)   # padding: see PAD_ITEM
        items, ratings = items[real], ratings[real]
        has_user = user is not None and user.size > 0
        if not has_user and not items.size:
            raise ValueError("empty request: send USER_ID, or ITEM_IDS with RATINGS, or both")
        row, uid = -1, None
        if has_user:
            uid = user.reshape(-1)[0]
            row = int(np.searchsorted(self.user_ids, uid))
            if row >= len(self.user_ids) or self.user_ids[row] != uid:
                raise ValueError(f"unknown USER_ID {uid}")
        cols, vals, unknown = NO_COLS, NO_VALS, 0
        if items.size:
            uniq, seen = np.unique(items, return_counts=True)
            if (seen > 1).any():
                raise ValueError(f"ITEM_IDS repeats item {uniq[seen > 1][0]}: send each item once")
            if not np.all(np.isfinite(ratings)):
                raise ValueError("RATINGS contains NaN or infinity")
            bad = (ratings < self.low) | (ratings > self.high)
            if bad.any():
                raise ValueError(f"rating {ratings[bad][0]:g} outside scale {self.low:g}..{self.high:g}")
            pos = np.clip(np.searchsorted(self.item_ids, items), 0, self.n_items - 1)
            known = self.item_ids[pos] == items
            unknown = int((~known).sum())  # skipped and reported, never an error
            cols, vals = pos[known], ratings[known].astype(np.float32)
        if cols.size == 0:
            if row < 0:
                raise ValueError("no known items among ITEM_IDS: nothing to recommend from")
            if self.history[row] == 0:
                raise self._no_history(uid)
        self._check_k(k)
        return row, cols, vals, k, unknown

    def prepare(self, requests):
        """Check every request, then scatter the valid ones into one dense batch.
        Returns (errors: {request index: message}, spans: [(request index, first row, end row)],
        dense [rows, n_items], top_k [rows, 1], unknown [rows, 1])."""
        parsed, spans, errors = [], [], {}
        for i, request in enumerate(requests):
            try:
                rows = self._parse(request)
            except ValueError as e:
                errors[i] = str(e)
                continue
            spans.append((i, len(parsed), len(parsed) + len(rows)))
            parsed.extend(rows)
        dense = np.zeros((len(parsed), self.n_items), np.float32)
        b = np.arange(len(parsed))
        rows = np.array([p[0] for p in parsed], np.int64)
        # Known users' training histories, scattered in one step.
        has = rows >= 0
        starts, ends = self.indptr[rows[has]], self.indptr[rows[has] + 1]
        counts = ends - starts
        if counts.sum():
            # Every history entry's position in the CSR arrays: row start + offset within the row.
            take = np.arange(counts.sum()) + np.repeat(starts - (np.cumsum(counts) - counts), counts)
            dense[np.repeat(b[has], counts), self.indices[take]] = self.data[take]
        # Ratings sent with the request override the history.
        counts = np.array([p[1].size for p in parsed], np.int64)
        if counts.sum():
            dense[np.repeat(b, counts), np.concatenate([p[1] for p in parsed])] = \
                np.concatenate([p[2] for p in parsed])
        ks = np.array([[p[3]] for p in parsed], np.int32).reshape(-1, 1)
        unknown = np.array([[p[4]] for p in parsed], np.int32).reshape(-1, 1)
        return errors, spans, dense, ks, unknown

    def execute(self, requests):
        errors, spans, dense, ks, unknown = self.prepare(requests)
        responses = [pb_utils.InferenceResponse(error=request_error(errors[i])) if i in errors else None
                     for i in range(len(requests))]
        for i, lo, hi in spans:
            responses[i] = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("DENSE", dense[lo:hi]),
                pb_utils.Tensor("TOP_K_OUT", ks[lo:hi]),
                pb_utils.Tensor("UNKNOWN_ITEMS", unknown[lo:hi]),
            ])
        return responses
