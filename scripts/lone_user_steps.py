"""The fused model's per-request steps for one user, each against what it replaced, in one
process, alternated: `python scripts/lone_user_steps.py [--runs RANKER RATER]` (docs/performance.md,
"The lone user's steps").

- item ids -> columns (serving.requests.Catalogue.item_columns): the id-indexed table against
  searchsorted, for 50, 100 and 200 ids (a rule list, a history, a shelf);
- `prepare` of a request with 50 EXCLUDE_IDS and 200 INCLUDE_IDS, table against searchsorted;
- the cold rows (serving.lists.Lists.cold) in one pass against two;
- the ONNX Runtime run, one thread, with and without the sparse first layer
  (serving.sparse_input.with_sparse_first_layer): the rater alone and the fused graph, 1, 4 and
  16 users per run.

Without --runs it trains the `ease-values` ranker and a one-epoch `deeprec` rater (the preset's
architecture; the cost of a run does not depend on how well it was trained) into a temporary
folder, about a minute. Prints best-of and median us per call.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import timeit
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from builder.config import TrainConfig
from builder.data.sources import load_dataset
from builder.export import ExportConfig, export_run
from builder.presets import preset
from builder.repository import Tuning, write_repository
from builder.run_folder import save_run
from builder.train import train
from perf import inputs
from serving import contract
from serving.fallback import no_positive_input
from serving.lists import Lists
from serving.ranking_graph import K, TOP_INDICES, TOP_RATINGS, TOP_SCORES, with_top_k
from serving.requests import Catalogue, prepare
from serving.sparse_input import with_sparse_first_layer, with_sparse_first_product


def trained_runs(root: Path) -> tuple[Path, Path]:
    """The `ease-values` ranker and a one-epoch `deeprec` rater on u1, exported in fp32."""
    rater = {**preset("deeprec"), "epochs": 1, "teacher": "", "distill": 0.0, "refit": False, "device": "cpu"}
    runs = []
    for name, config in (("ranker", TrainConfig(device="cpu").updated(**preset("ease-values"))),
                         ("rater", TrainConfig().updated(**rater))):
        dataset = load_dataset(config.data, config.split, config.seed)
        run = save_run(train(config, dataset, progress=False), dataset, root / name)
        export_run(run, ExportConfig(precisions=["fp32"]), bench_seconds=0.05)
        runs.append(run)
    return runs[0], runs[1]


def each(fn, items: list) -> int:
    """fn(item) for every item; returns how many calls that was."""
    for item in items:
        fn(item)
    return len(items)


def timed(cases: dict, rounds: int = 5, number: int = 3) -> None:
    """cases: {label: callable running one pass over its inputs, returning how many calls it made}.
    Alternates the cases `rounds` times; prints best-of and median us per call."""
    seen: dict[str, list[float]] = {}
    for _ in range(rounds):
        for label, f in cases.items():
            calls = f()
            best = min(timeit.repeat(f, number=number, repeat=3))
            seen.setdefault(label, []).append(best / (number * calls) * 1e6)
    for label, ts in seen.items():
        print(f"  {label:40s} best {min(ts):8.1f}  median {np.median(ts):8.1f} us")


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs=2, type=Path, metavar=("RANKER", "RATER"), help="exported run folders")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ranker, rater = args.runs or trained_runs(Path(tmp) / "runs")
        write_repository(ranker, Path(tmp) / "repo", ["onnx"], Tuning(pipeline="fused"), rating_run=rater)
        here = str(Path(tmp) / "repo" / "recommend" / "1")
        catalogue, lists = Catalogue.load(here), Lists.load(here)
        load = lambda role: onnx.load(os.path.join(here, f"{role}.onnx"))  # noqa: E731
        graphs = {"rater": (load("rater"), load("rater"))}
        graphs["fused"] = tuple(with_top_k(load("ranker"), load("rater"), blocked=True) for _ in range(2))
        for plain, sparse in graphs.values():
            with_sparse_first_product(plain)
            with_sparse_first_product(sparse)
            assert with_sparse_first_layer(sparse)
        sessions = {name: tuple(_session(g) for g in pair) for name, pair in graphs.items()}

    config = TrainConfig()
    dataset = load_dataset(config.data, config.split, config.seed)
    users = inputs.held_out_users(dataset.test, dataset.train, 64)
    x = dataset.train[users].toarray().astype(np.float32)
    print(f"{len(users)} held-out users, {(x != 0).sum(1).mean():.0f} ratings each on average")

    searched = dataclasses.replace(catalogue)
    searched.__dict__["item_table"] = None   # Catalogue.item_columns falls back to searchsorted
    rng = np.random.default_rng(0)
    print("item ids -> columns")
    for n in (50, 100, 200):
        ids = [rng.choice(catalogue.item_ids, n, replace=False) for _ in range(64)]
        timed({f"{n} ids, {name}": (lambda c=c, ids=ids: each(c.item_columns, ids))
               for name, c in (("searchsorted", searched), ("table", catalogue))}, args.rounds)

    def request(d: dict) -> dict:
        ids = lambda name: np.array(d[name]["content"], np.int64).reshape(1, -1)  # noqa: E731
        return {"ITEM_IDS": ids("ITEM_IDS"), "RATINGS": np.array(d["RATINGS"]["content"], np.float32).reshape(1, -1),
                "TOP_K": np.array([[10]], np.int32), "EXCLUDE_IDS": ids("EXCLUDE_IDS"),
                "INCLUDE_IDS": ids("INCLUDE_IDS")}
    requests = [request(d) for d in inputs.ensemble_rules_data(dataset.train, dataset.item_ids, users)["data"]]
    print("prepare, one user with 50 EXCLUDE_IDS and 200 INCLUDE_IDS")
    timed({f"prepare, {name}": (lambda c=c: each(lambda r: prepare([r], c), requests))
           for name, c in (("searchsorted", searched), ("table", catalogue))}, args.rounds)

    def two_passes(dense: np.ndarray) -> np.ndarray:
        cold = ~dense.any(axis=1)
        if lists.ranker and lists.threshold is not None:
            cold |= no_positive_input(dense, lists.threshold)
        return cold
    rows = [x[i:i + 1] for i in range(len(x))]
    assert all((two_passes(r) == lists.cold(r)).all() for r in rows)
    print("cold rows of one user")
    timed({"two passes": lambda: each(two_passes, rows), "one pass": lambda: each(lists.cold, rows)}, args.rounds)

    outputs = [TOP_INDICES, TOP_SCORES] + ([TOP_RATINGS] if lists.ranker and lists.rater else [])
    print("ONNX Runtime, one thread, per run")
    for b in (1, 4, 16):
        batches = [x[i:i + b] for i in range(0, len(x), b)]
        feeds = {"rater": [{"RATINGS": r} for r in batches],
                 "fused": [{"RATINGS": r, K: np.array([10], np.int64), contract.BLOCKED: np.zeros_like(r, bool)}
                           for r in batches]}
        for name, (plain, sparse) in sessions.items():
            wanted = None if name == "rater" else outputs
            timed({f"{name}, {b} users, {label}": (lambda s=s: each(lambda f: s.run(wanted, f), feeds[name]))
                   for label, s in (("dense first layer", plain), ("sparse first layer", sparse))}, args.rounds)


if __name__ == "__main__":
    main()
