"""Batch recommendations on a Ray cluster: the run's served ONNX graph scores users in Ray Data
`map_batches` actors (one ONNX Runtime session each) and Ray writes the rows as Parquet.

The rows are the local engine's (builder.batch): each user's dense training row is the graph's
input, and the ranking is builder.batch.rank_users (serving.fallback's popularity for a top-N
model's user with no positive input, serving.ranking.top_k_unrated with the training items
masked); only the forward pass differs (ONNX Runtime on the exported graph instead of PyTorch).
Ray is an optional extra (`pip install 'aerec[batch]'`), imported only when a job runs.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from builder.batch import (FORMATS, BatchError, _chunk_table, _default_titles, _join_parts, check_top_k,
                           job_rows, manifest_path, output_format, parts_dir, rank_users)
from builder.batch_inputs import read_rules
from builder.models import ITEM_BASED
from builder.models.popularity import item_counts
from builder.config import TrainConfig
from builder.run_folder import load_run_dataset

GRAPH = "model_fp32.onnx"   # the graph `aerec export` writes and `aerec repository` serves
INSTALL = "pip install 'aerec[batch]'"


def require_ray():
    """The `ray` module; BatchError naming the extra to install when it is missing."""
    try:
        import ray  # here: an optional extra, and its import costs seconds
    except ImportError as e:
        raise BatchError(f"--engine ray needs Ray ({e}); install it with: {INSTALL}") from None
    return ray


def served_graph(run_dir: Path) -> Path:
    """RUN/export/model_fp32.onnx, the fp32 graph `aerec export` writes and the server loads;
    exported first (builder.export.export_run, fp32 only) when the run has no export/. Raises
    BatchError when export/ exists without it (exporting again would replace the other
    variants), ExportError as export_run does (e.g. a model that is not user-based)."""
    run_dir = Path(run_dir)
    graph = run_dir / "export" / GRAPH
    if graph.is_file():
        return graph
    if (run_dir / "export").exists():
        raise BatchError(f"{run_dir / 'export'} has no {GRAPH}; run `aerec export {run_dir} --precision fp32` "
                         "(with the other precisions it should keep)")
    from builder.export import ExportConfig, export_run  # here: torch.onnx and the export checks
    export_run(run_dir, ExportConfig(precisions=["fp32"]), bench_seconds=0.2)
    return graph


@dataclass
class ShardInputs:
    """What every actor holds, shipped once through Ray's object store: the serialized graph, the
    rows to rank (csr, users x items: the graph's input rows and the mask; the run's training
    matrix, or a histories file's rows), their ids and the item ids, the titles (object array, or
    None), the run's popularity counts, the run's config (model, implicit threshold) and the
    rules (builder.batch_inputs.Rules, or None)."""
    graph: bytes
    train: object
    user_ids: np.ndarray
    item_ids: np.ndarray
    titles: np.ndarray | None
    popularity: np.ndarray
    config: object
    rules: object = None


class RankShard:
    """A Ray Data callable class: one ONNX Runtime session per actor (`threads` intra-op
    threads: the actor's CPUs), then for each batch {"user": int64 row indices} the rows of
    builder.batch._chunk_table (user_id, rank, item_id, score[, title]). `delay` seconds of sleep
    per batch exists for the failure tests (a job long enough to lose a node in); 0 in use."""

    def __init__(self, inputs, top_k: int, threads: int = 1, delay: float = 0.0):
        import ray
        from builder.export import ort_session
        from serving.contract import NETWORK_INPUT
        self.data = ray.get(inputs) if isinstance(inputs, ray.ObjectRef) else inputs
        self.session = ort_session(self.data.graph, threads)
        self.input = NETWORK_INPUT
        self.top_k, self.delay = top_k, delay

    def scores(self, users: np.ndarray) -> np.ndarray:
        """float32 [len(users), n_items]: the graph's output for the users' dense training rows."""
        x = self.data.train[users].toarray().astype(np.float32)
        return self.session.run(None, {self.input: x})[0]

    def __call__(self, batch: dict) -> pa.Table:
        users = np.asarray(batch["user"], np.int64)
        top, scores = rank_users(None, self.data, self.data.config, users, self.top_k, scorer=self.scores,
                                 popularity=self.data.popularity, rules=self.data.rules)
        if self.delay:
            time.sleep(self.delay)
        return _chunk_table(users, top, scores, None, self.data, self.data.titles)


def _in_user_order(files: list[Path], users: np.ndarray, user_ids: np.ndarray) -> list[Path]:
    """Ray's part files sorted by the position of their first user in `users`: each part holds a
    contiguous run of users in order (order preserved), so this is the local engine's order."""
    import pandas as pd
    position = pd.Index(user_ids[users])
    files = [f for f in files if pq.read_metadata(f).num_rows]
    first = {f: position.get_loc(pq.read_table(f, columns=["user_id"]).column(0)[0].as_py()) for f in files}
    return sorted(files, key=first.get)


def _connect(ray, address: str | None, num_cpus: int | None) -> bool:
    """ray.init for the job; True when this call started it (and so shuts it down)."""
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    return True


def batch_recommend_ray(run_dir: Path, out: Path, users_file: Path | None = None, top_k: int = 10,
                        chunk_size: int = 4096, address: str | None = None, num_cpus: int | None = None,
                        actors: int | None = None, progress: bool = True, delay: float = 0.0,
                        histories: str | Path | None = None, exclude_file: Path | None = None,
                        include_file: Path | None = None) -> dict:
    """Write the top `top_k` of every user (or `users_file`'s) of `run_dir` with Ray; returns the
    manifest (also written beside `out`, as the local engine's, with engine "ray" and the nodes).

    `out`: a .parquet/.csv/.jsonl file (Ray writes Parquet parts to its parts folder, see
    builder.batch.parts_dir, which are then joined in user order into the file and removed; the
    driver must see that folder) or a folder (Ray's Parquet part files, left as written; on a
    multi-machine cluster give storage every node writes to). The same columns and rows as
    builder.batch.batch_recommend, scores from ONNX Runtime (within 1e-5 of PyTorch's).

    Users are split into blocks of `chunk_size` rows; `map_batches` runs RankShard on actors of
    one CPU each (`actors`: how many; default from one up to the cluster's CPUs). `address`:
    None starts a local Ray (`num_cpus` CPUs), "auto" or "ray://host:10001" joins a cluster; a
    Ray already initialised in this process is used as it is. A lost node's actors are restarted
    and their batches retried by Ray Data (max_restarts / max_task_retries -1), so the job still
    ends with every user once. No --resume: a job that fails is run again. `histories`,
    `exclude_file`, `include_file`: as the local engine's (builder.batch.job_rows,
    builder.batch_inputs.read_rules), the histories' rows and the rules shipped to the actors.

    Raises BatchError for ray missing, a bad suffix or users file, an existing output or parts
    folder, a blend or an item-based run; ExportError as export_run; FileNotFoundError /
    ValueError as load_run_dataset."""
    start = time.perf_counter()
    run_dir, out = Path(run_dir), Path(out)
    as_file = out.suffix.lower() in FORMATS
    fmt = output_format(out) if as_file else "parquet"
    if not as_file and out.suffix:
        output_format(out)   # raises, naming the suffixes (a folder has none)
    if top_k < 1 or chunk_size < 1:
        raise BatchError(f"--top-k and --chunk-size must be >= 1, got {top_k} and {chunk_size}")
    if (run_dir / "blend.json").is_file():
        raise BatchError(f"{run_dir}: batch lists come from one model's run; a blend has no ranking of its own")
    target = parts_dir(out) if as_file else out
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BatchError(f"{target} exists; --engine ray writes a new folder (remove it, or use the local engine's "
                         "--resume for its own parts)")
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir / 'config.json'} not found: is {run_dir} a run folder made by "
                                "`aerec train`?")
    config = TrainConfig.load(run_dir / "config.json")
    if config.model in ITEM_BASED:
        raise BatchError(f"{run_dir}: {config.model} is item-based (one forward per item, not per user); "
                         "its served graph cannot score a user's row: use the local engine")
    run_data = load_run_dataset(run_dir)
    check_top_k(top_k, run_data.n_items)
    ray = require_ray()
    dataset, users, summary = job_rows(run_data, users_file, histories, config)
    rules = read_rules(exclude_file, include_file, dataset.user_ids, dataset.item_ids)
    graph = served_graph(run_dir)
    titles = np.array(dataset.titles, dtype=object) if dataset.titles != _default_titles(dataset.item_ids) else None
    fingerprint = json.loads((run_dir / "config.json").read_text()).get("dataset", {}).get("fingerprint")
    inputs = ShardInputs(graph.read_bytes(), dataset.train.tocsr(), dataset.user_ids, dataset.item_ids, titles,
                         item_counts(run_data.train), config, rules)

    started = _connect(ray, address, num_cpus)
    ctx = ray.data.DataContext.get_current()
    was = ctx.execution_options.preserve_order, ctx.enable_progress_bars
    try:
        ctx.execution_options.preserve_order = True   # parts hold users in order: the file joins in order
        ctx.enable_progress_bars = progress
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        nodes = sum(1 for n in ray.nodes() if n["Alive"])
        shared = ray.put(inputs)   # held here for the whole job: restarted actors read it again
        pool = (ray.data.ActorPoolStrategy(size=actors) if actors
                else ray.data.ActorPoolStrategy(min_size=1, max_size=cpus))
        blocks = [pa.table({"user": users[s:s + chunk_size]}) for s in range(0, len(users), chunk_size)]
        ranked = ray.data.from_arrow(blocks).map_batches(
            RankShard, fn_constructor_kwargs={"inputs": shared, "top_k": top_k, "delay": delay},
            batch_size=chunk_size, batch_format="numpy", num_cpus=1, compute=pool)
        target.mkdir(parents=True, exist_ok=True)
        ray_start = time.perf_counter()
        ranked.write_parquet(str(target.resolve()))
        ray_seconds = time.perf_counter() - ray_start
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = was
        if started:
            ray.shutdown()

    files = sorted(target.glob("*.parquet"))
    if as_file:
        rows = _join_parts(_in_user_order(files, users, dataset.user_ids), out, fmt)
        columns = pq.read_schema(files[0]).names
        shutil.rmtree(target)
    else:
        rows = sum(pq.read_metadata(f).num_rows for f in files)
        columns = pq.read_schema(files[0]).names
    manifest = {"run": str(run_dir.resolve()), "rating_run": None, "fingerprint": fingerprint, "model": config.model,
                "output": str(out.resolve()), "format": fmt, "top_k": top_k, "chunk_size": chunk_size,
                "users": int(len(users)), "rows": rows, "columns": columns, "engine": "ray",
                "graph": str(graph.resolve()), "ray_nodes": nodes, "ray_cpus": cpus,
                "ray_seconds": round(ray_seconds, 3),   # actors' start, ranking and Ray's write
                **summary, **(rules.summary() if rules else {}),
                "seconds": round(time.perf_counter() - start, 3)}
    manifest_path(out).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
