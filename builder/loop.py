"""The one epoch loop every gradient-trained model runs (builder.train.fit and fit_full_batch,
builder.topn.fit_multinomial), with its one early-stopping rule.

An epoch is whatever the family's `train_epoch` does (minibatch passes, RecVAE's encoder and
decoder phases, ELSA's loss, GLocal-K's L-BFGS iterations); the loop around it is the same for
all: time the epoch, score it on validation, keep the best weights (EarlyStopping), record the
row, run the callbacks (checkpointing: builder.checkpoint.EpochCheckpoint), stop on divergence,
patience or the last epoch, and hand back the best epoch's weights.
"""
from __future__ import annotations

import copy
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


class EarlyStopping:
    """Early stopping on one validation figure: the best epoch, its weights, and patience.

    `metric`: the history row's key scored (e.g. "val_rmse"); `name`: its key in `best` (e.g.
    "val_rmse", or "ndcg@100" for the top-N models); `mode`: "min" (RMSE) or "max" (NDCG);
    `patience`: epochs without a strict gain before stopping; `warmup`: epochs that never
    count against patience (GLocal-K's pre-training: patience counts from the epoch after
    them); `keep_row`: keep the best epoch's whole row in best["row"].

    `best` is the dict the checkpoints store: {"epoch": 0 before any gain, name: the best
    value, "seconds": when it was reached, "state": a copy of the model's state_dict (None
    before any gain)}. Raises ValueError for a mode other than min / max."""

    def __init__(self, metric: str, mode: str = "min", patience: int = 0, warmup: int = 0,
                 name: str | None = None, keep_row: bool = False):
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping mode must be 'min' or 'max', got {mode!r}")
        self.metric, self.mode, self.patience, self.warmup = metric, mode, patience, warmup
        self.name = name or metric
        self.keep_row = keep_row
        self.best: dict = {"epoch": 0, self.name: float("inf") if mode == "min" else -np.inf, "state": None}

    def improves(self, value: float) -> bool:
        """Is `value` strictly better than the best so far (NaN never is)?"""
        return value < self.best[self.name] if self.mode == "min" else value > self.best[self.name]

    def update(self, row: dict, model: torch.nn.Module) -> bool:
        """Take a scored epoch's `row` (it holds "epoch", "seconds" and `metric`); on a gain keep
        a deep copy of `model`'s weights as the best. Returns whether it improved."""
        value = row[self.metric]
        if not self.improves(value):
            return False
        self.best = {"epoch": row["epoch"], self.name: value, "seconds": row["seconds"],
                     **({"row": row} if self.keep_row else {}), "state": copy.deepcopy(model.state_dict())}
        return True

    def should_stop(self, epoch: int) -> bool:
        """After `epoch`: have `patience` epochs past the warm-up gone by without a gain?"""
        return epoch > self.warmup and epoch - max(self.best["epoch"], self.warmup) >= self.patience

    def postfix(self, row: dict) -> dict:
        """The progress bar's figures for a scored row."""
        return {self.name: f"{row[self.metric]:.4f}", "best": self.best["epoch"]}


@dataclass
class Start:
    """Where a loop begins: a fresh start (the defaults) or a resumed one: the history of the
    epochs already run (the next epoch is the last one's + 1), the best so far (an
    EarlyStopping.best dict) and the seconds already spent."""
    history: list = field(default_factory=list)
    best: dict | None = None
    spent: float = 0.0

    @property
    def first(self) -> int:
        return self.history[-1]["epoch"] + 1 if self.history else 1


# Where stderr is no terminal (a redirected log), a progress line at most this often.
LOG_EVERY_S = 30.0

# An epoch callback: (row, history, best) after each epoch's row is recorded.
Callback = Callable[[dict, list, dict], None]


def run(train_epoch: Callable[[int, Callable[[], float]], dict], max_epochs: int, stopping: EarlyStopping,
        model: torch.nn.Module, score: Callable[[], dict] | None = None, loss: str = "train_rmse",
        start: Start | None = None, callbacks: tuple[Callback, ...] = (), progress: bool = True,
        desc: str = "") -> tuple[list[dict], dict]:
    """Train `model` for epochs start.first..max_epochs; returns (history, best).

    `train_epoch(epoch, seconds)` trains one epoch and returns its history row (with "epoch",
    the `loss` key, and "seconds" from `seconds()`, the time since the loop began, resumed time
    included). `score()` (None: no validation) returns the validation figures added to the row;
    `stopping` keeps the best epoch and decides patience. After each epoch every callback gets
    (row, history, best). The loop stops after max_epochs, on a non-finite `loss`, or (with
    `score`) when `stopping` says so; with `score` and a best epoch the model ends with the best
    epoch's weights. A resumed `start` whose last epoch had already ended the loop runs nothing."""
    start = start or Start()
    history = list(start.history)
    if start.best is not None:
        stopping.best = start.best
    if history and _ended(history[-1], max_epochs, stopping, score is not None, loss):
        first = max_epochs + 1  # the checkpoint is of the epoch that ended this loop
    else:
        first = start.first
    began = time.perf_counter() - start.spent
    # disable=None: no bar where stderr is not a terminal, so a redirected log holds no redraws;
    # there a plain line every LOG_EVERY_S seconds says the run is alive.
    bar = tqdm(range(first, max_epochs + 1), disable=None if progress else True, desc=desc, leave=False)
    lines = progress and bar.disable
    last_line = time.perf_counter()
    for epoch in bar:
        row = train_epoch(epoch, lambda: time.perf_counter() - began)
        postfix = {}
        if score is not None:
            row.update(score())
            stopping.update(row, model)
            postfix = stopping.postfix(row)
            bar.set_postfix(postfix)
        if lines and time.perf_counter() - last_line >= LOG_EVERY_S:
            last_line = time.perf_counter()
            shown = "".join(f", {k} {v}" for k, v in postfix.items())
            print(f"{desc or 'training'}: epoch {epoch}/{max_epochs}{shown}, {time.perf_counter() - began:.0f} s",
                  file=sys.stderr, flush=True)
        history.append(row)
        for callback in callbacks:
            callback(row, history, stopping.best)
        if not np.isfinite(row[loss]):
            log.warning("training diverged at epoch %d (loss %s); stopping", epoch, row[loss])
        if _ended(row, max_epochs, stopping, score is not None, loss):
            break
    if score is not None and stopping.best["state"] is not None:
        model.load_state_dict(stopping.best["state"])
    return history, stopping.best


def _ended(row: dict, max_epochs: int, stopping: EarlyStopping, scored: bool, loss: str) -> bool:
    """Did this epoch end the loop (the last epoch, divergence, or patience when validated)?"""
    if row["epoch"] >= max_epochs or not np.isfinite(row[loss]):
        return True
    return scored and stopping.should_stop(row["epoch"])
