"""Resumable training: after every epoch the loop's whole state (weights, optimiser, schedule,
every random generator, history, best-so-far) goes to one file, written atomically, so a run
killed at any moment resumes from its last finished epoch and ends exactly where an
uninterrupted run with the same seed ends.

The file is read back with `torch.load(weights_only=True)`: plain tensors, numbers and strings,
never arbitrary pickled objects, so a swapped checkpoint cannot run code.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import logging

import torch

from builder import distributed
from builder.distributed import world
from builder.loop import Start

log = logging.getLogger(__name__)

FILENAME = "checkpoint.pt"
# A distilled model's teacher predictions, one file per phase beside the checkpoint.
TEACHER_PREFIX = "checkpoint.teacher-"


def remove_checkpoint(run_dir: Path) -> None:
    """Delete a run folder's checkpoint and the teacher predictions kept beside it."""
    run_dir = Path(run_dir)
    (run_dir / FILENAME).unlink(missing_ok=True)
    for path in run_dir.glob(f"{TEACHER_PREFIX}*.pt"):
        path.unlink(missing_ok=True)


class CheckpointMismatch(ValueError):
    """The checkpoint was written by a different training configuration."""


class Checkpoint:
    """One run's checkpoint file. `phase` separates the validation-selected fit from the refit.

    `every_s`: write at most once per that many seconds (0: after every epoch). Writing the
    optimiser's state each epoch of a small fast model would double its training time; a kill
    loses at most `every_s` of work, and the resumed run still ends exactly where it would have."""

    def __init__(self, run_dir: Path, config_json: str, every_s: float = 30.0):
        self.path = Path(run_dir) / FILENAME
        self.config_json = config_json
        self.every_s = every_s
        self._stored: dict | None = None
        self._last = time.monotonic()

    # -- writing ------------------------------------------------------------------------------
    def save(self, phase: str, epoch: int, model, optimizer=None, sched=None, rng=None, gen=None,
             history=(), best=None, elapsed: float = 0.0, carry: dict | None = None,
             ranks: list[dict] | None = None) -> None:
        """Write the loop's whole state after `epoch` of `phase`, atomically (copy, then rename);
        skipped when the last write was less than `every_s` seconds ago.

        `ranks`: in a data-parallel job (written by rank 0 only), every rank's random states in
        rank order, dicts of "torch_rng" and "gen" tensors (rank_rng_state)."""
        if time.monotonic() - self._last < self.every_s:
            return
        best = best or {}
        state = {
            "config": self.config_json, "phase": phase, "epoch": epoch, "elapsed": float(elapsed),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else {},
            "sched": sched.state_dict() if sched is not None else {},
            "torch_rng": torch.get_rng_state(),
            "gen": gen.get_state() if gen is not None else torch.empty(0, dtype=torch.uint8),
            # numpy's generator state holds 128-bit integers: JSON keeps them exact.
            "np_rng": json.dumps(rng.bit_generator.state) if rng is not None else "",
            "history": json.dumps(list(history)),
            "best": json.dumps({k: v for k, v in best.items() if k != "state"}),
            "best_state": best.get("state") or {},
            "carry": json.dumps(carry or {}),
        }
        if ranks:
            state["rank_torch_rng"] = [r["torch_rng"] for r in ranks]
            state["rank_gen"] = [r["gen"] for r in ranks]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{FILENAME}.{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, self.path)  # a kill mid-write leaves the previous checkpoint whole
        self._last = time.monotonic()

    def remove(self) -> None:
        """Delete the checkpoint file and the teachers' predictions kept beside it (the run finished)."""
        remove_checkpoint(self.path.parent)

    def _teacher_path(self, phase: str) -> Path:
        return self.path.with_name(f"{TEACHER_PREFIX}{phase}.pt")

    def save_teacher(self, phase: str, predictions: torch.Tensor, metrics: dict) -> None:
        """Keep `phase`'s teacher predictions ([users, items] float32, rating units) and its
        metrics beside the checkpoint, atomically. A resumed run reads them instead of training
        the teacher again: the teacher is seeded, so they are the tensor it would compute."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        path = self._teacher_path(phase)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        torch.save({"config": self.config_json, "predictions": predictions,
                    "metrics": json.dumps(metrics, default=float)}, tmp)
        os.replace(tmp, path)

    def load_teacher(self, phase: str) -> tuple[torch.Tensor, dict] | None:
        """`phase`'s kept teacher predictions and metrics (save_teacher), or None when there are
        none or another config wrote them (they are then trained again and overwritten)."""
        path = self._teacher_path(phase)
        if not path.is_file():
            return None
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged file costs one teacher training, never the run
            return None
        if raw.get("config") != self.config_json:
            return None
        return raw["predictions"], json.loads(raw["metrics"])

    # -- reading ------------------------------------------------------------------------------
    def load(self) -> dict | None:
        """The stored state, or None when there is no checkpoint. Refuses another config's file."""
        if self._stored is None and self.path.is_file():
            try:
                raw = torch.load(self.path, map_location="cpu", weights_only=True)
            except Exception as e:  # torch raises several types for a damaged or unsafe file
                raise ValueError(f"{self.path}: cannot read checkpoint ({e})") from None
            if raw["config"] != self.config_json:
                ours, theirs = json.loads(self.config_json), json.loads(raw["config"])
                diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
                raise CheckpointMismatch(f"{self.path} was written with different options ({', '.join(diff)}); "
                                         f"resume with the same options or start a new --out folder")
            self._stored = raw
        return self._stored

    def resume_state(self, phase: str) -> dict | None:
        """The stored state when it belongs to `phase`, else None (a fresh start for that phase)."""
        raw = self.load()
        return raw if raw is not None and raw["phase"] == phase else None


def restore(raw: dict, model, optimizer=None, sched=None, rng=None, gen=None) -> tuple[list, dict]:
    """Put a checkpoint's state back into freshly built objects; returns (history, best).
    In a data-parallel job each rank takes back its own random states (same-size jobs only: the
    job's size is part of the checkpoint's config)."""
    w = world()
    if w.parallel and len(raw.get("rank_torch_rng", ())) == w.size:
        raw = {**raw, "torch_rng": raw["rank_torch_rng"][w.rank], "gen": raw["rank_gen"][w.rank]}
    model.load_state_dict(raw["model"])
    if optimizer is not None and raw["optimizer"]:
        optimizer.load_state_dict(raw["optimizer"])
    if sched is not None and raw["sched"]:
        sched.load_state_dict(raw["sched"])
    torch.set_rng_state(raw["torch_rng"])
    if gen is not None and raw["gen"].numel():
        gen.set_state(raw["gen"])
    if rng is not None and raw["np_rng"]:
        rng.bit_generator.state = json.loads(raw["np_rng"])
    best = json.loads(raw["best"])
    best["val_rmse"] = best.get("val_rmse", float("inf"))
    best["state"] = raw["best_state"] or None
    return json.loads(raw["history"]), best


def rank_rng_state(gen: torch.Generator) -> dict:
    """This rank's torch random states (global CPU generator, the loop's generator)."""
    return {"torch_rng": torch.get_rng_state(), "gen": gen.get_state()}


class EpochCheckpoint:
    """The epoch loop's checkpoint callback (builder.loop.run's `callbacks`) for one `phase` of
    a run: after every epoch it saves the loop's whole state (the `model`, and where the loop has
    them its `optimizer`, LR schedule `sched`, numpy `rng`, torch generator `gen`) with the
    history and best so far to `ckpt` (Checkpoint.save: at most every `every_s`), with `carry`,
    the caller's own bookkeeping. Data-parallel, every rank's random states go into rank 0's
    file (a collective: every rank calls it) and rank 0 writes.

    `start()` is the other half: the loop's builder.loop.Start from a checkpoint of this phase
    (the objects above restored in place), or a fresh start."""

    def __init__(self, ckpt: Checkpoint, phase: str, model, optimizer=None, sched=None, rng=None, gen=None,
                 carry: dict | None = None):
        self.ckpt, self.phase, self.carry = ckpt, phase, carry
        self.model, self.optimizer, self.sched, self.rng, self.gen = model, optimizer, sched, rng, gen

    def start(self) -> Start:
        """The loop's start: resumed from a checkpoint of this phase, else fresh."""
        raw = self.ckpt.resume_state(self.phase)
        if raw is None:
            return Start()
        history, best = restore(raw, self.model, self.optimizer, self.sched, self.rng, self.gen)
        log.info("resuming %s after epoch %d from %s", self.phase, raw["epoch"], self.ckpt.path)
        return Start(history, best, raw["elapsed"])

    def __call__(self, row: dict, history: list, best: dict) -> None:
        w = world()
        ranks = distributed.gather(rank_rng_state(self.gen)) if w.parallel and self.gen is not None else None
        if w.main:
            self.ckpt.save(self.phase, row["epoch"], self.model, self.optimizer, self.sched, self.rng, self.gen,
                           history, best, row["seconds"], self.carry, ranks=ranks)
