"""Synthetic explicit ratings at any scale, up to Netflix size, without a dense matrix.

Items get power-law (Zipf) popularity; each user a log-normal activity level and a low-rank
taste vector. Ratings are tastes . item factors + item quality + noise, mapped to 1..5 stars.
Users are generated in chunks straight into CSR arrays, so memory grows with the number of
ratings, never with users x items.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import scipy.sparse as sp

from builder.data.dataset import Dataset
from builder.data.splits import holdout_entries


def synthetic_ratings(n_users: int, n_items: int, n_ratings: int, rank: int = 8, zipf: float = 1.0,
                      seed: int = 0, chunk: int = 8192) -> sp.csr_matrix:
    """A users x items CSR matrix of 1..5 star ratings with about `n_ratings` entries."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items + 1) ** zipf
    pop = pop[rng.permutation(n_items)]
    pop /= pop.sum()
    cdf = np.cumsum(pop)
    item_f = rng.normal(0, 1 / np.sqrt(rank), (n_items, rank)).astype(np.float32)
    item_q = rng.normal(0, 0.5, n_items).astype(np.float32)
    activity = rng.lognormal(0, 1, n_users)
    per_user = np.maximum(1, np.round(activity / activity.sum() * n_ratings)).astype(np.int64)
    per_user = np.minimum(per_user, n_items // 2)
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    cols, vals = [], []
    for start in range(0, n_users, chunk):
        stop = min(start + chunk, n_users)
        counts = per_user[start:stop]
        # Popularity-weighted draws; a user drawing the same item twice is merged, and the
        # shortfall redrawn a few times (popular items collide often).
        key = np.zeros(0, dtype=np.int64)
        want = counts.copy()
        for _ in range(6):
            owner = np.repeat(np.arange(stop - start, dtype=np.int64), want)
            items = np.searchsorted(cdf, rng.random(len(owner)) * cdf[-1]).clip(0, n_items - 1)
            key = np.unique(np.concatenate([key, owner * n_items + items]))
            want = counts - np.bincount(key // n_items, minlength=stop - start)
            if want.max() <= 0:
                break
            want = np.maximum(want, 0)
        owner, items = key // n_items, (key % n_items).astype(np.int32)
        taste = rng.normal(0, 1, (stop - start, rank)).astype(np.float32)
        score = (taste[owner] * item_f[items]).sum(1) * 1.5 + item_q[items] + rng.normal(0, 0.5, len(items))
        stars = np.clip(np.round(3.5 + score), 1, 5).astype(np.float32)
        indptr[start + 1: stop + 1] = indptr[start] + np.cumsum(np.bincount(owner, minlength=stop - start))
        cols.append(items)
        vals.append(stars)
    return sp.csr_matrix((np.concatenate(vals), np.concatenate(cols), indptr), shape=(n_users, n_items))


def synthetic_dataset(n_users: int, n_items: int, n_ratings: int, test_fraction: float = 0.1,
                      seed: int = 0, **kw) -> Dataset:
    """A `Dataset` over synthetic ratings with a random entry-level test holdout."""
    m = synthetic_ratings(n_users, n_items, n_ratings, seed=seed, **kw)
    train, test = holdout_entries(m, test_fraction, seed)
    return Dataset(train, test, np.arange(n_users), np.arange(n_items),
                   [f"item {i}" for i in range(n_items)], (1.0, 5.0), f"synthetic-{seed}",
                   f"synthetic-{n_users}x{n_items}-{n_ratings}")


def synthetic_csr_rows(n_users: int, n_items: int, n_ratings: int, start: int = 0, stop: int | None = None,
                       rank: int = 8, zipf: float = 1.0, seed: int = 0, chunk: int = 8192) -> sp.csr_matrix:
    """Rows start..stop-1 (default: all) of a users x items CSR matrix of 1..5 star ratings with
    about `n_ratings` entries in all, built straight into CSR arrays (float32 data, int32
    indices): memory grows with the shard's ratings, never with users x items, and no rating
    table is ever built.

    The same model as synthetic_ratings (Zipf item popularity, log-normal user activity, rank-
    `rank` tastes), but each block of `chunk` users draws from its own generator seeded by
    (seed, block): a shard is identical to the same rows of the whole matrix, whatever the
    shards (so each rank of a data-parallel job builds only its own). `start` and `stop` must be
    multiples of `chunk` (or stop == n_users); raises ValueError otherwise."""
    stop = n_users if stop is None else stop
    if not 0 <= start <= stop <= n_users or start % chunk or (stop % chunk and stop != n_users):
        raise ValueError(f"rows {start}..{stop} of {n_users}: bounds must be multiples of chunk={chunk} "
                         "(or the last row) within 0..n_users")
    shared = np.random.default_rng([seed, 0])  # item side and activity: the same for every shard
    pop = 1.0 / np.arange(1, n_items + 1) ** zipf
    pop = pop[shared.permutation(n_items)]
    cdf = np.cumsum(pop / pop.sum())
    item_f = shared.normal(0, 1 / np.sqrt(rank), (n_items, rank)).astype(np.float32)
    item_q = shared.normal(0, 0.5, n_items).astype(np.float32)
    activity = shared.lognormal(0, 1, n_users)
    per_user = np.minimum(np.maximum(1, np.round(activity / activity.sum() * n_ratings)), n_items // 2)
    indptr = np.zeros(stop - start + 1, dtype=np.int64)
    planned = int(per_user[start:stop].sum())  # an upper bound: a user may fall short of its draw
    indices = np.empty(planned, dtype=np.int32)
    data = np.empty(planned, dtype=np.float32)
    cursor = 0
    for lo in range(start, stop, chunk):
        hi = min(lo + chunk, stop)
        rng = np.random.default_rng([seed, 1 + lo // chunk])
        counts = per_user[lo:hi].astype(np.int64)
        # Popularity-weighted draws without repeats within a user: draw more than needed, keep
        # each user's first distinct items (popular items collide often).
        want = counts.copy()
        have = [np.zeros(0, np.int64) for _ in range(hi - lo)]
        for _ in range(8):
            owner = np.repeat(np.arange(hi - lo), want + want // 2 + 2)
            draw = np.searchsorted(cdf, rng.random(len(owner)) * cdf[-1]).clip(0, n_items - 1)
            key = np.unique(np.concatenate([np.concatenate(have) + np.repeat(np.arange(hi - lo), [len(h) for h in have])
                                            * n_items, owner * n_items + draw]))
            own = key // n_items
            # keep at most `counts` per user (np.unique sorted by user, then item)
            first = np.searchsorted(own, np.arange(hi - lo))
            pos = np.arange(len(key)) - first[own]
            key = key[pos < counts[own]]
            own = key // n_items
            have = np.split(key % n_items, np.searchsorted(own, np.arange(1, hi - lo)))
            want = counts - np.bincount(own, minlength=hi - lo)
            if want.max() <= 0:
                break
        items_of = np.concatenate(have).astype(np.int32)
        owner = np.repeat(np.arange(hi - lo), [len(h) for h in have])
        taste = rng.normal(0, 1, (hi - lo, rank)).astype(np.float32)
        score = (taste[owner] * item_f[items_of]).sum(1) * 1.5 + item_q[items_of] + rng.normal(0, 0.5, len(owner))
        indptr[lo - start + 1:hi - start + 1] = cursor + np.cumsum([len(h) for h in have])
        indices[cursor:cursor + len(owner)] = items_of
        data[cursor:cursor + len(owner)] = np.clip(np.round(3.5 + score), 1, 5)
        cursor += len(owner)
    if cursor < planned:  # a rare shortfall (a user wanting more distinct items than drawn)
        indices, data = indices[:cursor].copy(), data[:cursor].copy()
    return sp.csr_matrix((data, indices, indptr), shape=(stop - start, n_items))


def synthetic_log(n_users: int, n_items: int, n_events: int, zipf: float = 1.0, seed: int = 0,
                  start: int = 1_700_000_000, days: int = 180):
    """An interaction log with string ids, as a pyarrow Table: user_id ('u<n>'), item_id
    ('sku-<n>' zero-padded to 6 digits, so the ids are strings that integer parsing would alter),
    timestamp (int64 epoch seconds over `days` days from `start`). `n_events` rows.

    Item popularity is Zipf(`zipf`) over a random order of the items, user activity log-normal;
    a user may click the same item more than once (a log's repeats). Memory: a few int64 arrays
    of n_events plus the Arrow strings, never users x items."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items + 1) ** zipf
    cdf = np.cumsum(pop[rng.permutation(n_items)])
    activity = rng.lognormal(0, 1, n_users)
    ucdf = np.cumsum(activity)
    users = np.searchsorted(ucdf, rng.random(n_events) * ucdf[-1]).clip(0, n_users - 1)
    items = np.searchsorted(cdf, rng.random(n_events) * cdf[-1]).clip(0, n_items - 1)
    times = start + np.sort(rng.integers(0, days * 86_400, n_events))

    def named(prefix: str, codes: np.ndarray, width: int) -> pa.Array:
        text = pc.utf8_lpad(pc.cast(pa.array(codes), pa.string()), width, "0") if width else pc.cast(
            pa.array(codes), pa.string())
        return pc.binary_join_element_wise(prefix, text, "")

    return pa.table({"user_id": named("u", users, 0), "item_id": named("sku-", items, 6),
                     "timestamp": pa.array(times, pa.int64())})


def write_log(table, path) -> None:
    """Write a log table to `path`: Parquet for .parquet, else CSV (gzip when the name ends .gz)."""
    path = str(path)
    if path.endswith(".parquet"):
        pq.write_table(table, path)
        return
    with pa.output_stream(path, compression="gzip" if path.endswith(".gz") else None) as out:
        pcsv.write_csv(table, out)
