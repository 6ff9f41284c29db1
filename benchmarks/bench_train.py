"""Training speed on ML-100K u1: `python -m benchmarks.bench_train`.

Prints, from one run on this machine:
  1. I-AutoRec (preset `autorec-i`): seconds until its best epoch, and in total.
  2. One epoch of aerec's minibatch loop vs. the seed notebook's loop (one dense user vector
     per forward/backward, the notebook's own masking: outputs[target == 0] = 0, MSELoss),
     for the same network, as a ratio. The notebook's loop exists only here, as the baseline.
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch

from builder.config import TrainConfig
from builder.data.sources import load_dataset
from builder.presets import preset
from builder.predict import orient
from builder.train import make_optimizer, make_model, run_epoch, train


def seed_notebook_epoch(model, optimizer, dense: torch.Tensor) -> None:
    """The seed notebook's training loop, verbatim in spirit: one row at a time."""
    criterion = torch.nn.MSELoss()
    for row in range(dense.shape[0]):
        inputs = dense[row].unsqueeze(0)
        target = inputs.clone()
        if torch.sum(target > 0) > 0:
            outputs = model(inputs)
            outputs = outputs.masked_fill(target == 0, 0)  # the notebook's outputs[target == 0] = 0
            loss = criterion(outputs, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def epoch_ratio(name: str, dataset, repeats: int = 3) -> dict:
    """Seconds per epoch of preset `name` in our loop (best of `repeats`) and in the seed notebook's
    row-at-a-time loop on the same data, and their ratio (speedup)."""
    config = TrainConfig().updated(**preset(name))
    matrix = orient(dataset.train, config)
    torch.manual_seed(0)
    model = make_model(config, matrix.shape[1])
    opt = make_optimizer(config, model.parameters())
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    ours = []
    for _ in range(repeats):
        t = time.perf_counter()
        run_epoch(model, opt, matrix, config, rng, gen, torch.device("cpu"))
        ours.append(time.perf_counter() - t)
    dense = torch.from_numpy(matrix.toarray())  # the notebook holds the whole dense matrix
    t = time.perf_counter()
    seed_notebook_epoch(model, opt, dense)
    seed = time.perf_counter() - t
    return {"preset": name, "rows_per_epoch": int(matrix.shape[0]), "batch_size": config.batch_size,
            "aerec_epoch_s": round(min(ours), 4), "seed_loop_epoch_s": round(seed, 3),
            "speedup": round(seed / min(ours), 1)}


def main() -> None:
    """`make bench`: the autorec-i preset's accuracy and training time, and epoch times against the
    seed notebook's loop; printed as JSON."""
    torch.set_num_threads(2)
    ds = load_dataset("ml-100k", "u1")
    report = {"threads": torch.get_num_threads()}
    cfg = TrainConfig().updated(**preset("autorec-i"))
    res = train(cfg, ds, progress=False)
    report["autorec_i"] = {k: res.metrics[k] for k in ("test_rmse", "best_epoch", "seconds_to_best",
                                                         "train_seconds", "epochs_run")}
    report["epoch_vs_seed_loop"] = [epoch_ratio("autorec-i", ds), epoch_ratio("sae-seed", ds)]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
