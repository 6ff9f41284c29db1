"""Batch recommendations: every user's top-K from a run folder, written as a table (the nightly
job), and the scoring of such a table against a run's test split.

The lists are ranked exactly as `aerec evaluate` ranks (builder.evaluate: the run's PyTorch
model, the popularity fallback for a top-N model, serving.ranking.top_k_unrated with the
user's training items masked), one chunk of users at a time, so memory is bounded by the chunk.
Each chunk is written as a part; an interrupted job resumed with the same arguments skips the
finished parts and ends with the same bytes as an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import scipy.sparse as sp

from builder.batch_inputs import Rules, file_sha256, histories_sha256, read_histories, read_rules
from builder.config import TrainConfig
from builder.data.sources import absolute_spec
from builder.evaluate import (COVERAGE_K, NDCG_KS, RECALL_KS, liked, predict_user_matrix, top_metrics,
                              with_baseline)
from builder.models import ITEM_BASED, TOP_N
from builder.models.popularity import item_counts
from builder.run_folder import load_run, load_run_dataset
from serving.fallback import with_popularity_fallback
from serving.ranking import top_k_unrated
from serving.rules import top_k_allowed

FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl"}
# What a saved recommendations file must hold to be scored (any system's output will do).
REQUIRED = ("user_id", "item_id", "rank")


class BatchError(ValueError):
    """A batch job's input is unusable: unknown output suffix, unknown user id, a rating run over
    another catalogue, parts of another job, a recommendations file without its columns."""


def output_format(path: Path) -> str:
    """"parquet", "csv" or "jsonl" from `path`'s suffix; BatchError for any other."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise BatchError(f"{path}: unknown output suffix {Path(path).suffix or '(none)'!r}; "
                         f"use one of {', '.join(FORMATS)}")
    return fmt


def parts_dir(out: Path) -> Path:
    """The folder beside `out` that holds a job's finished chunks until they are joined."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def manifest_path(out: Path) -> Path:
    """The manifest written beside `out`: recs.parquet -> recs.parquet.manifest.json."""
    out = Path(out)
    return out.with_name(out.name + ".manifest.json")


def read_user_list(path: Path, user_ids: np.ndarray) -> np.ndarray:
    """Row indices (int64, in file order) of the user ids in `path`: one id per line, blank lines
    skipped, ids as the run has them (`user_ids`: int64, or unicode for string ids). Raises
    BatchError naming the line for an id that is not an integer where ids are, an id the run does
    not know, or an id given twice."""
    strings = user_ids.dtype.kind == "U"
    lookup = pd.Index(user_ids)
    rows, first = [], {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        raw = line.strip()
        if not raw:
            continue
        if strings:
            uid = raw
        else:
            try:
                uid = int(raw)
            except ValueError:
                raise BatchError(f"{path} line {n}: user id {raw!r} is not an integer, "
                                 "and this run's user ids are integers") from None
        if uid in first:
            raise BatchError(f"{path} line {n}: user id {raw!r} given twice (first on line {first[uid]})")
        first[uid] = n
        at = lookup.get_indexer([uid])[0]
        if at < 0:
            raise BatchError(f"{path} line {n}: user id {raw!r} is not a user of this run "
                             f"({len(user_ids)} users)")
        rows.append(at)
    if not rows:
        raise BatchError(f"{path}: no user ids (one per line)")
    return np.asarray(rows, np.int64)


def _default_titles(item_ids: np.ndarray) -> list[str]:
    """The titles build_dataset gives items without one ("item N", or a string id itself)."""
    if item_ids.dtype.kind == "U":
        return [str(i) for i in item_ids.tolist()]
    return [f"item {i}" for i in item_ids.tolist()]


def _scorer(model, dataset, config, device) -> Callable[[np.ndarray], np.ndarray]:
    """users (row indices) -> float32 [len(users), n_items], what builder.evaluate ranks by. An
    item-based model predicts every user at once (one forward per item column), so its matrix is
    computed once and sliced: memory is then users x items, not the chunk."""
    full: list[np.ndarray] = []

    def scores(users: np.ndarray) -> np.ndarray:
        if config.model in ITEM_BASED:
            if not full:
                full.append(predict_user_matrix(model, dataset, config, device))
            return full[0][users]
        return predict_user_matrix(model, dataset, config, device, users)
    return scores


def rank_users(model, dataset, config, users: np.ndarray, top_k: int, device="cpu",
               scorer: Callable | None = None, popularity: np.ndarray | None = None,
               rules: Rules | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(top, scores): the top_k item columns (int64 [users, min(top_k, n_items)], best first, PAD
    -1 where a user has fewer allowed unrated items) and the model's score there (float32, same
    shape), for the row indices `users` of dataset.train (the run's users, or a histories file's:
    builder.batch_inputs.Histories). The training items are masked and a top-N model's user with
    no positive input gets popularity, as builder.evaluate.top_n_metrics and the server rank.
    `rules` (builder.batch_inputs.read_rules): the items they keep out are masked as well, with
    serving.rules.top_k_allowed, as the served EXCLUDE_IDS / INCLUDE_IDS. `scorer` (see _scorer)
    and `popularity` (item_counts of the run's training matrix): computed here when not given; a
    job passes them once for all its chunks."""
    scores = (scorer or _scorer(model, dataset, config, device))(users)
    dense = dataset.train[users].toarray()
    if config.model in TOP_N:
        pop = item_counts(dataset.train) if popularity is None else popularity
        scores = with_popularity_fallback(scores, dense, config.implicit_threshold, pop)
    top = top_k_allowed(scores, dense != 0, None if rules is None else rules.mask(users), top_k)
    return top, np.take_along_axis(np.asarray(scores, np.float32), np.where(top < 0, 0, top), axis=1)


def check_top_k(top_k: int, n_items: int) -> None:
    """Raise BatchError unless 1 <= top_k <= n_items: the server refuses TOP_K outside the
    catalogue too, and a longer list could only be cut short."""
    if not 1 <= top_k <= n_items:
        raise BatchError(f"--top-k must be in 1..{n_items} (the catalogue's items), got {top_k}")


def _job_key(run_dir: Path, users: np.ndarray, top_k: int, chunk_size: int, rating_run: Path | None,
             fingerprint: str | None, inputs: dict | None = None) -> dict:
    """What must match for `--resume` to reuse finished parts; `inputs`: the histories and rules
    files' hashes (input_hashes)."""
    return {"run": str(Path(run_dir).resolve()), "rating_run": str(Path(rating_run).resolve()) if rating_run else None,
            "fingerprint": fingerprint, "top_k": top_k, "chunk_size": chunk_size, "users": len(users),
            "users_sha256": hashlib.sha256(np.ascontiguousarray(users, np.int64).tobytes()).hexdigest(),
            **(inputs or {})}


def input_hashes(histories: str | Path | None, exclude_file: Path | None, include_file: Path | None) -> dict:
    """{"histories_sha256", "exclude_sha256", "include_sha256"} of the inputs given (absent: none);
    `histories` a data word (batch_inputs.histories_sha256)."""
    found = {"exclude_sha256": exclude_file, "include_sha256": include_file}
    return {**({"histories_sha256": histories_sha256(histories)} if histories is not None else {}),
            **{k: file_sha256(p) for k, p in found.items() if p is not None}}


def job_rows(dataset, users_file: Path | None, histories: str | Path | None, config) -> tuple:
    """(rows, users, summary): the Dataset whose train rows a job ranks (the run's, or the
    histories file's: builder.batch_inputs.read_histories), the row indices to rank (every row,
    or `users_file`'s) and what the manifest records of the histories. Raises BatchError for
    both files at once, an item-based model with histories (its input is an item's column over
    the training users: a new user has no place in it), InputError as read_histories."""
    if histories is None:
        users = (read_user_list(users_file, dataset.user_ids) if users_file is not None
                 else np.arange(dataset.n_users, dtype=np.int64))
        return dataset, users, {}
    if users_file is not None:
        raise BatchError("--users and --histories: the histories file names its users; give one of the two")
    if config.model in ITEM_BASED:
        raise BatchError(f"--histories: {config.model} is item-based (each forward is an item's column over the "
                         "training users), so it cannot fold a new user in; rank histories with a user-based model")
    h = read_histories(histories, dataset)
    return h.dataset, np.arange(h.dataset.n_users, dtype=np.int64), h.summary()


def _open_rater(rating_run: Path, dataset, device, rows=None):
    """(scorer, scale) of a rating model over the same catalogue as `dataset`; its scorer reads
    `rows` (a histories Dataset, see job_rows) when given, else the rating run's own rows."""
    rating_run = Path(rating_run)
    if (rating_run / "blend.json").is_file():
        raise BatchError(f"{rating_run}: a blend cannot be a --rating-model; give one of its member runs")
    rconfig, rmodel = load_run(rating_run, device)
    if rconfig.model in TOP_N:
        raise BatchError(f"{rating_run}: {rconfig.model} ranks, it predicts no ratings; "
                         "give a rating model's run (e.g. autorec-i, deeprec)")
    rdata = load_run_dataset(rating_run)
    if not (np.array_equal(rdata.user_ids, dataset.user_ids) and np.array_equal(rdata.item_ids, dataset.item_ids)):
        raise BatchError(f"{rating_run}: its users/items ({rdata.n_users} x {rdata.n_items}) are not the run's "
                         f"({dataset.n_users} x {dataset.n_items}); train both on the same data and split")
    if rows is not None and rconfig.model in ITEM_BASED:
        raise BatchError(f"{rating_run}: {rconfig.model} is item-based and cannot rate --histories users; give a "
                         "user-based rating model (deeprec, sae, autorec-u)")
    return _scorer(rmodel, rdata if rows is None else rows, rconfig, device), rdata.scale


def _chunk_table(users: np.ndarray, top: np.ndarray, scores: np.ndarray, ratings: np.ndarray | None,
                 dataset, titles: np.ndarray | None) -> pa.Table:
    """One chunk's rows: user_id, rank (1..K), item_id, score[, predicted_rating][, title]; PAD
    slots are dropped (a user with fewer unrated items than K gets fewer rows)."""
    real = top >= 0
    r, c = np.nonzero(real)
    items = top[r, c]
    cols = {"user_id": dataset.user_ids[users[r]], "rank": (c + 1).astype(np.int32),
            "item_id": dataset.item_ids[items], "score": scores[r, c].astype(np.float32)}
    if ratings is not None:
        cols["predicted_rating"] = ratings[r, c].astype(np.float32)
    if titles is not None:
        cols["title"] = titles[items]
    return pa.table({k: pa.array(v.tolist() if v.dtype.kind == "U" else v) for k, v in cols.items()})


def _write_part(table: pa.Table, path: Path) -> None:
    """Atomically: a killed job leaves a whole part or none."""
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _json_value(v):
    return v if not isinstance(v, float) or np.isfinite(v) else None


def _join_parts(parts: list[Path], out: Path, fmt: str) -> int:
    """Concatenate the parts into `out` (written beside it, then renamed), one part in memory at a
    time; returns the row count."""
    tmp = out.with_name(out.name + ".tmp")
    rows = 0
    schema = pq.read_schema(parts[0])
    if fmt in ("parquet", "csv"):
        writer = pq.ParquetWriter if fmt == "parquet" else pcsv.CSVWriter
        with writer(tmp, schema) as w:
            for p in parts:
                t = pq.read_table(p)
                rows += t.num_rows
                w.write_table(t)
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            for p in parts:
                t = pq.read_table(p)
                rows += t.num_rows
                names = t.column_names
                for rec in zip(*(t.column(n).to_pylist() for n in names)):
                    f.write(json.dumps(dict(zip(names, map(_json_value, rec))), ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    return rows


def batch_recommend(run_dir: Path, out: Path, users_file: Path | None = None, rating_run: Path | None = None,
                    top_k: int = 10, chunk_size: int = 4096, resume: bool = False, progress: bool = True,
                    device: str = "cpu", on_part: Callable[[int, Path], None] | None = None,
                    histories: str | Path | None = None, exclude_file: Path | None = None,
                    include_file: Path | None = None) -> dict:
    """Write every user's (or `users_file`'s users') top `top_k` of the run folder `run_dir` to
    `out` (.parquet, .csv or .jsonl) and a manifest beside it; returns the manifest.

    Columns: user_id, rank (1..top_k), item_id (the catalogue's ids: int64 or strings), score
    (the ranker's, float32), predicted_rating (float32, clipped to the rating run's scale; only
    with `rating_run`, a rating model trained on the same users and items), title (only when the
    run's data set has titles). Users in index order (sorted ids), or the file's order.

    Users are scored `chunk_size` at a time; each chunk is written to `out`'s parts folder (see
    parts_dir) and the parts are joined at the end, then removed. `resume`: reuse the parts of
    an interrupted job with the same arguments (refused, BatchError, when they differ); without
    it, existing parts are refused. `on_part(index, path)` is called after each part is written.

    `histories`: rank the users of this data word (a file, or csv:PATH?user=COL&item=COL...) instead (see job_rows and
    builder.batch_inputs.read_histories: folded in as the served `recommend` does with ITEM_IDS
    and RATINGS; their ids in user_id, sorted; items unknown to the catalogue counted in the
    manifest, never an error). `exclude_file` / `include_file`: the served EXCLUDE_IDS /
    INCLUDE_IDS rules for every user or per user (builder.batch_inputs.read_rules).

    Raises BatchError (bad suffix, top_k outside 1..n_items, users file, rating run, parts, histories
    with --users or an item-based model), InputError (histories, rules files), FileNotFoundError / ValueError as
    load_run and load_run_dataset do."""
    start = time.perf_counter()
    run_dir, out = Path(run_dir), Path(out)
    fmt = output_format(out)
    if top_k < 1 or chunk_size < 1:
        raise BatchError(f"--top-k and --chunk-size must be >= 1, got {top_k} and {chunk_size}")
    if (run_dir / "blend.json").is_file():
        raise BatchError(f"{run_dir}: batch lists come from one model's run; a blend has no ranking of its own")
    run_data = load_run_dataset(run_dir)
    check_top_k(top_k, run_data.n_items)
    config, model = load_run(run_dir, device)
    dataset, users, summary = job_rows(run_data, users_file, histories, config)
    rules = read_rules(exclude_file, include_file, dataset.user_ids, dataset.item_ids)
    rater, scale = (_open_rater(rating_run, run_data, device, dataset if histories is not None else None)
                    if rating_run is not None else (None, None))
    titles = np.array(dataset.titles, dtype=object) if dataset.titles != _default_titles(dataset.item_ids) else None
    fingerprint = json.loads((run_dir / "config.json").read_text()).get("dataset", {}).get("fingerprint")

    folder = parts_dir(out)
    key = _job_key(run_dir, users, top_k, chunk_size, rating_run, fingerprint,
                   input_hashes(histories, exclude_file, include_file))
    job_file = folder / "job.json"
    if folder.exists():
        if not resume:
            raise BatchError(f"{folder} exists: an interrupted job. Add --resume to continue it, "
                             "or remove it to start over")
        found = json.loads(job_file.read_text()) if job_file.is_file() else None
        if found != key:
            raise BatchError(f"{folder} holds parts of another job (run, users, top-k, chunk size, rating "
                             "model, histories or rules differ); remove it or rerun with the same arguments")
    else:
        folder.mkdir(parents=True)
        job_file.write_text(json.dumps(key, indent=2))

    from tqdm.auto import tqdm
    chunks = [users[s:s + chunk_size] for s in range(0, len(users), chunk_size)]
    scorer = _scorer(model, dataset, config, device)
    popularity = item_counts(run_data.train)   # the run's training popularity, also for histories
    parts = []
    # disable=None: no bar where stderr is not a terminal (a redirected log)
    with tqdm(total=len(users), disable=None if progress else True, desc="batch", unit="user") as bar:
        for i, chunk in enumerate(chunks):
            part = folder / f"part-{i:06d}.parquet"
            parts.append(part)
            if not part.is_file():
                top, scores = rank_users(model, dataset, config, chunk, top_k, device, scorer, popularity, rules)
                ratings = None
                if rater is not None:
                    ratings = np.clip(np.take_along_axis(rater(chunk), np.where(top < 0, 0, top), axis=1), *scale)
                _write_part(_chunk_table(chunk, top, scores, ratings, dataset, titles), part)
                if on_part is not None:
                    on_part(i, part)
            bar.update(len(chunk))
    rows = _join_parts(parts, out, fmt)
    columns = pq.read_schema(parts[0]).names
    shutil.rmtree(folder)
    manifest = {"run": str(run_dir.resolve()), "rating_run": str(Path(rating_run).resolve()) if rating_run else None,
                "fingerprint": fingerprint, "model": config.model, "output": str(out.resolve()), "format": fmt,
                "top_k": top_k, "chunk_size": chunk_size, "users": int(len(users)), "rows": rows,
                "columns": columns, **summary, **(rules.summary() if rules else {}),
                **({"histories": absolute_spec(str(histories))} if histories is not None else {}),
                **{k: str(Path(p).resolve()) for k, p in (("exclude_file", exclude_file),
                                                          ("include_file", include_file)) if p is not None},
                "seconds": round(time.perf_counter() - start, 3)}
    manifest_path(out).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_recommendations(path: Path) -> pd.DataFrame:
    """A saved recommendations file (.parquet, .csv or .jsonl; any system's) with at least
    user_id, item_id and rank; ids are read as text from CSV/JSONL so that string ids keep their
    form. Raises BatchError for another suffix or missing columns, FileNotFoundError."""
    path = Path(path)
    fmt = output_format(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    ids = {"user_id": str, "item_id": str}
    if fmt == "parquet":
        frame = pd.read_parquet(path)
    elif fmt == "csv":
        frame = pd.read_csv(path, dtype=ids, keep_default_na=False)
    else:
        frame = pd.read_json(path, lines=True, dtype=ids)
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise BatchError(f"{path}: no {', '.join(missing)} column(s); a recommendations file needs "
                         f"{', '.join(REQUIRED)}")
    return frame


def _as_ids(values: pd.Series, catalogue: np.ndarray, what: str, path: Path) -> np.ndarray:
    """A file's id column in the kind of the run's ids (int64 or unicode)."""
    if catalogue.dtype.kind == "U":
        return values.astype(str).to_numpy()
    try:
        return values.astype(np.int64).to_numpy()
    except (ValueError, TypeError):
        bad = next(v for v in values.tolist() if not str(v).lstrip("-").isdigit())
        raise BatchError(f"{path}: {what} {bad!r} is not an integer, and this run's {what}s are integers") from None


def ranked_lists(frame: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray, path: Path) -> dict:
    """{"top": int64 [n_users, K] item columns by rank (PAD -1 where a user has no item at that
    rank, or the item is not in the catalogue), "listed": bool [n_users] users the file lists,
    "unknown_users", "unknown_items": counts of rows naming ids the run does not know}, K the
    largest rank. Raises BatchError for ranks below 1 or a (user, rank) given twice."""
    users = pd.Index(user_ids).get_indexer(_as_ids(frame["user_id"], user_ids, "user id", path))
    items = pd.Index(item_ids).get_indexer(_as_ids(frame["item_id"], item_ids, "item id", path))
    rank = frame["rank"].to_numpy(np.int64)
    if len(rank) and rank.min() < 1:
        raise BatchError(f"{path}: rank {rank.min()} found; ranks start at 1")
    known = users >= 0
    k = int(rank.max()) if len(rank) else 0
    top = np.full((len(user_ids), k), -1, np.int64)
    u, r, it = users[known], rank[known] - 1, items[known]
    if len(np.unique(u * k + r)) != len(u):
        raise BatchError(f"{path}: a user has two items at the same rank")
    top[u, r] = it
    listed = np.zeros(len(user_ids), bool)
    listed[u] = True
    return {"top": top, "listed": listed, "unknown_users": int((~known).sum()),
            "unknown_items": int(((items < 0) & known).sum())}


def popularity_lists(train: sp.csr_matrix, users: np.ndarray, k: int, chunk_size: int = 4096) -> np.ndarray:
    """The most-popular baseline's top k (int64 [len(users), k], PAD -1) for the row indices
    `users` of `train` (users x items): training rating counts, each user's training items
    masked, as builder.evaluate ranks it; `chunk_size` rows densified at a time."""
    pop = item_counts(train)
    parts = [top_k_unrated(np.broadcast_to(pop, (len(u), len(pop))), train[u].toarray() != 0, k)
             for u in (users[s:s + chunk_size] for s in range(0, len(users), chunk_size))]
    return np.concatenate(parts) if parts else np.zeros((0, min(k, train.shape[1])), np.int64)


def evaluate_recommendations(path: Path, run_dir: Path) -> dict:
    """recall@k, ndcg@k and coverage@k (k among builder.evaluate's and the file's largest rank K,
    k <= K) of a saved recommendations file against the run's test split, with the functions and
    the test users of `aerec evaluate` (a test user missing from the file has an empty list),
    beside the most-popular baseline's (`popularity_<key>`, `lift_<key>`, as
    builder.evaluate.with_baseline), plus test_users, test_users_missing, unknown_users and
    unknown_items (rows not counted)."""
    run_dir = Path(run_dir)
    dataset = load_run_dataset(run_dir)   # FileNotFoundError first when run_dir is no run folder
    config = TrainConfig.load(run_dir / "config.json")
    lists = ranked_lists(read_recommendations(path), dataset.user_ids, dataset.item_ids, Path(path))
    relevant = liked(dataset.test, config.relevant_threshold)
    test = np.flatnonzero(np.diff(relevant.indptr) > 0)
    top = lists["top"][test]
    k = top.shape[1]
    out = {}
    if k:
        ks = ([x for x in RECALL_KS if x <= k] + [k], [x for x in NDCG_KS if x <= k] + [k],
              [x for x in (COVERAGE_K,) if x <= k] + [k])
        out = with_baseline(top_metrics(top, relevant[test], dataset.n_items, *ks),
                            top_metrics(popularity_lists(dataset.train, test, k), relevant[test], dataset.n_items, *ks))
    out.update({"test_users": int(len(test)), "test_users_missing": int((~lists["listed"][test]).sum()),
                "unknown_users": lists["unknown_users"], "unknown_items": lists["unknown_items"]})
    return out

