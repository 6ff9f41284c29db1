"""Validation grids of the top-N presets: `python scripts/grid_topn.py [--models ease,ease-variants]`.

Every configuration is trained with `builder.train.train(..., evaluate=False)`: it is scored
on the validation split of u1.base only (each training user hides 20% of their ratings), and
the test set is never read. Prints one line per configuration and the pick per model, chosen
by validation recall@10 (ties: NDCG@100); the picks are recorded in builder/presets.py.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time

import torch

# model -> (base options, {option: values}); the base is the preset's recipe without the grid.
GRIDS = {
    "popularity": ({"model": "popularity"}, {"implicit_threshold": [0.0, 4.0]}),
    "ease": ({"model": "ease"}, {"implicit_threshold": [0.0, 4.0],
                                  "ease_lambda": [50.0, 100.0, 200.0, 300.0, 500.0, 800.0, 1200.0, 2000.0]}),
    # EASE's variants (builder/models/ease.py): input weights x lambda x EDLAE dropout x popularity
    # correction, every rating as input (implicit_threshold 0).
    "ease-variants": ({"model": "ease", "implicit_threshold": 0.0},
                      {"ease_input": ["binary", "values"], "ease_lambda": [500.0, 1000.0, 2000.0, 5000.0, 10000.0],
                       "edlae_dropout": [0.0, 0.5, 0.67], "popularity_gamma": [0.0, 0.1, 0.2, 0.3]}),
    # RDLAE's bound on diag(B) around ease-values' pick (rating values, popularity correction 0.2).
    "rdlae": ({"model": "ease", "implicit_threshold": 0.0, "ease_input": "values", "popularity_gamma": 0.2},
              {"rdlae_xi": [0.0, 0.05, 0.1, 0.2], "ease_lambda": [1000.0, 5000.0], "edlae_dropout": [0.0, 0.5]}),
    "mult-dae": ({"model": "mult-dae", "hidden": [600, 200], "input_dropout": 0.5, "lr": 1e-3, "batch_size": 100,
                  "epochs": 200, "patience": 20},
                 {"implicit_threshold": [0.0, 4.0], "weight_decay": [0.0, 1e-5]}),
    "mult-vae": ({"model": "mult-vae", "hidden": [600, 200], "input_dropout": 0.5, "lr": 1e-3, "batch_size": 100,
                  "epochs": 200, "patience": 20, "anneal_cap": 0.2},
                 {"implicit_threshold": [0.0, 4.0], "total_anneal_steps": [200, 2000]}),
    # ELSA (builder/models/elsa.py): rank x Adam's learning rate, liked ratings as EASE's pick.
    "elsa": ({"model": "elsa", "implicit_threshold": 4.0, "batch_size": 128, "epochs": 100, "patience": 10},
             {"elsa_rank": [64, 128, 256], "lr": [1e-3, 1e-2, 1e-1]}),
    # Low-rank EASE (builder/models/ease_lowrank.py): rank x lambda, liked ratings as EASE's pick.
    "ease-lowrank": ({"model": "ease-lowrank", "implicit_threshold": 4.0, "svd_power_iters": 2},
                     {"svd_rank": [64, 128, 256, 512], "ease_lambda": [50.0, 100.0, 200.0, 300.0, 500.0, 1000.0]}),
    "recvae": ({"model": "recvae", "hidden": [600, 200], "input_dropout": 0.5, "lr": 5e-4, "recvae_encoder_epochs": 3,
                "implicit_threshold": 4.0, "batch_size": 500, "epochs": 200, "patience": 20},
               {"recvae_gamma": [0.005, 0.01, 0.02]}),
}


def configurations(model: str):
    base, grid = GRIDS[model]
    for values in itertools.product(*grid.values()):
        yield {**base, **dict(zip(grid, values))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(GRIDS))
    parser.add_argument("--split", default="u1")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from builder.config import TrainConfig
    from builder.data.sources import load_dataset
    from builder.train import train
    ds = load_dataset("ml-100k", args.split)
    for model in args.models.split(","):
        rows = []
        for changes in configurations(model):
            start = time.perf_counter()
            m = train(TrainConfig(device="cpu", split=args.split).updated(**changes), ds,
                      progress=False, evaluate=False).metrics
            grid_keys = {k: changes[k] for k in GRIDS[model][1]}
            rows.append((m["val_recall@10"], m["val_ndcg@100"], grid_keys, m["best_epoch"]))
            print(json.dumps({"model": model, **grid_keys, "val_recall@10": round(m["val_recall@10"], 4),
                              "val_ndcg@100": round(m["val_ndcg@100"], 4), "best_epoch": m["best_epoch"],
                              "seconds": round(time.perf_counter() - start, 1)}), flush=True)
        recall, ndcg, pick, epoch = max(rows, key=lambda r: (r[0], r[1]))
        print(json.dumps({"pick": model, **pick, "val_recall@10": round(recall, 4), "val_ndcg@100": round(ndcg, 4),
                          "best_epoch": epoch}), flush=True)


if __name__ == "__main__":
    main()
