"""Hyperparameter sweep on the validation slice: run many TrainConfigs in parallel processes.

    python scripts/sweep.py GRID.json OUT.jsonl [--workers N]

GRID.json is a list of {"base": {...}, "grid": {key: [values]}} blocks; every combination is
trained with `builder.train.train` and one JSON line per run is appended to OUT.jsonl.
Presets are picked by `val_rmse` only; the test figures are carried along for the record.
"""
import itertools
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed


def expand(blocks):
    for block in blocks:
        keys = list(block.get("grid", {}))
        for values in itertools.product(*(block["grid"][k] for k in keys)):
            yield {**block.get("base", {}), **dict(zip(keys, values))}


def run_one(changes):
    import torch
    torch.set_num_threads(1)
    from builder.config import TrainConfig
    from builder.data.sources import load_dataset
    from builder.train import train
    config = TrainConfig().updated(**changes)
    ds = load_dataset(config.data, config.split, config.seed)
    result = train(config, ds, progress=False)
    return {"config": changes, **result.metrics}


if __name__ == "__main__":
    grid, out = sys.argv[1], sys.argv[2]
    workers = int(sys.argv[sys.argv.index("--workers") + 1]) if "--workers" in sys.argv else os.cpu_count()
    configs = list(expand(json.load(open(grid))))
    print(f"{len(configs)} configurations, {workers} workers", flush=True)
    with ProcessPoolExecutor(workers) as pool, open(out, "a") as f:
        futures = {pool.submit(run_one, c): c for c in configs}
        for fut in as_completed(futures):
            try:
                row = fut.result()
            except Exception as e:  # a diverging or invalid config must not end the sweep
                row = {"config": futures[fut], "error": str(e)}
            f.write(json.dumps(row) + "\n")
            f.flush()
            keys = ("config", "val_rmse", "test_rmse", "best_epoch", "error")
            print(json.dumps({k: row.get(k) for k in keys}), flush=True)
