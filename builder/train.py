"""Training: minibatches straight from CSR rows, masked loss, early stopping on a validation
slice of the training ratings, then one evaluation on the test set.

The loop reads top to bottom: corrupt -> forward -> masked loss + regularisers -> step,
then (optionally) DeepRec's dense re-feeding step.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from builder import distributed
from builder import loop
from builder.checkpoint import Checkpoint, EpochCheckpoint, rank_rng_state  # noqa: F401 (rank_rng_state: re-exported)
from builder.config import TrainConfig
from builder.data.dataset import Dataset
from builder.driver import Selection, select_then_refit
from builder.data.splits import holdout_entries, holdout_users
from builder.loop import EarlyStopping, Start
from builder.losses import contractive_penalty, corrupt, l2_penalty, masked_mse, sparsity_penalty
from builder.models import ITEM_BASED, TOP_N, model_spec, validate
from builder import evaluate as ev
from builder import topn
from builder.metrics import clip, rmse
from builder.predict import dense_rows, orient, predict_entries

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """A trained model with its config, test metrics (see builder.evaluate.evaluate_model, plus best_epoch,
    val_rmse, train_seconds ...) and per-epoch history."""
    model: torch.nn.Module
    config: TrainConfig
    metrics: dict
    history: list[dict] = field(default_factory=list)


def pick_device(name: str) -> torch.device:
    """`auto` -> cuda when a GPU is visible, else cpu; any other name as torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_model(config: TrainConfig, n_inputs: int, n_rows: int | None = None) -> torch.nn.Module:
    """An untrained model of `config.model` for input vectors of width `n_inputs` (items for user-based models,
    users for item-based); `n_rows` only for full-matrix models (GLocal-K). Built by the family's
    builder.models.registry entry; raises ValueError for an unknown model."""
    return model_spec(config.model).build(config, n_inputs, n_rows)


def make_optimizer(config: TrainConfig, params):
    """The optimiser `config.optimizer` names (adam, sgd, rmsprop) over `params`; ValueError otherwise."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; use adam, sgd or rmsprop")


def train_step(model, optimizer, x: torch.Tensor, config: TrainConfig, gen: torch.Generator,
               n_ratings: int, soft: torch.Tensor | None = None, net: torch.nn.Module | None = None) -> float:
    """One update on a batch of rating vectors; returns the masked MSE of the batch.

    AutoRec's objective is sum-of-squares + lambda/2 ||W||^2 over the whole matrix; our loss is
    a mean over observed entries, so lambda is divided by the number of training ratings to
    keep its meaning (and the paper's grid of values) intact.

    `soft` holds a teacher's predictions for these rows: the entries the user has not rated
    are scored against them with weight `config.distill` (knowledge distillation).

    Data-parallel (`net` is `model` inside DistributedDataParallel, `x` this rank's part of the
    global batch): each mean is taken over the global batch's entries (their counts are summed
    over ranks) and scaled by the world size, which DDP's gradient averaging divides back out, so
    the step equals one process's step on the whole batch. The returned MSE is this rank's.
    """
    net = net if net is not None else model
    net.train()
    optimizer.zero_grad(set_to_none=True)
    x_in = corrupt(x, config.corruption, gen, config.corruption_per_user)
    # Score only the ratings the corruption hid when asked: the model practises exactly the task
    # it faces at test time (predict ratings it cannot see) instead of copying its input.
    mask = (x != 0) & (x_in == 0) if config.corruption and config.loss_on == "dropped" else x != 0
    share = _global_shares(x, mask, soft is not None and config.distill)
    pred = net(x_in)
    loss = masked_mse(pred, x, mask)
    reported = loss.item()
    if share is not None:
        loss = loss * share[0]
    if soft is not None and config.distill:
        # The teacher fills in what the ratings leave blank: a dense target for every item the
        # user has not rated, so each of the few user rows teaches the whole output layer.
        distilled = masked_mse(pred, soft, x == 0)
        loss = loss + config.distill * (distilled if share is None else distilled * share[1])
    if config.l2:  # the same on every rank: DDP's average leaves it as it is
        loss = loss + config.l2 * l2_penalty(model) / n_ratings
    if len(x):  # a rank whose part of the last batch is empty has no code to penalise
        if config.sparsity:
            loss = loss + config.sparsity * sparsity_penalty(model.encode(x)) * (1 if share is None else share[2])
        if config.contractive:
            loss = loss + (config.contractive * contractive_penalty(model.encode, x)
                           * (1 if share is None else share[2]))
    loss.backward()
    optimizer.step()
    if config.refeed:
        # Dense re-feeding: the model's own (detached) output is a fully observed rating vector;
        # f(f(x)) should equal f(x). Every entry counts, so the mask is all ones.
        optimizer.zero_grad(set_to_none=True)
        y = pred.detach()
        refed = masked_mse(net(y), y, torch.ones_like(y, dtype=torch.bool))
        (refed if share is None else refed * share[2]).backward()
        optimizer.step()
    return reported


def _global_shares(x: torch.Tensor, mask: torch.Tensor, distill: bool) -> torch.Tensor | None:
    """None in one process; data-parallel, the factors world * local count / global count that
    turn this rank's means into its share of the global batch's means: [scored ratings, unrated
    entries (distillation), rows (per-row means and re-feeding)]. One all-reduce per step."""
    w = distributed.world()
    if not w.parallel:
        return None
    local = torch.stack([mask.sum(), (x == 0).sum() if distill else x.new_zeros((), dtype=torch.long),
                         torch.tensor(len(x), device=x.device)]).to(torch.float64)
    total = distributed.all_sum_tensor(local.clone())
    return (w.size * local / total.clamp_min(1.0)).to(x.dtype)


def run_epoch(model, optimizer, matrix: sp.csr_matrix, config: TrainConfig, rng, gen, device,
              soft: torch.Tensor | None = None, net: torch.nn.Module | None = None) -> float:
    """One pass over the non-empty rows of `matrix` (CSR, rows are the model's input vectors) in a shuffled
    order, minibatches of config.batch_size; returns the epoch's masked MSE, weighted by each batch's observed
    ratings.

    Data-parallel, every rank draws the same permutation from the seed and trains its slice of
    each global batch (distributed.batch_part: about batch_size / world rows); the MSE is summed
    over ranks."""
    w = distributed.world()
    rows = np.flatnonzero(np.diff(matrix.indptr) > 0)
    rng.shuffle(rows)
    losses, weights = [], []
    for start in range(0, len(rows), config.batch_size):
        batch = distributed.batch_part(rows[start:start + config.batch_size], w)
        x = dense_rows(matrix, batch, device)
        losses.append(train_step(model, optimizer, x, config, gen, matrix.nnz,
                                 None if soft is None else soft[batch].to(device), net))
        weights.append(int((x != 0).sum()))
    if w.parallel:
        total, count = distributed.all_sum([np.dot(losses, weights), sum(weights)])
        return float(total / max(count, 1))
    return float(np.average(losses, weights=weights))


def validation_rmse(model, matrix: sp.csr_matrix, val: sp.csr_matrix, scale, device) -> float:
    """RMSE (predictions clipped to `scale`) at `val`'s entries, the model reading `matrix`'s rows.
    Data-parallel, each rank scores its block of rows and the squared errors and counts are
    summed over ranks: the value one process computes, up to float64 rounding."""
    w = distributed.world()
    if not w.parallel or getattr(model, "full_matrix", False):
        p, t = predict_entries(model, matrix, val, device)
        return rmse(p, t, scale)
    start, stop = distributed.shard_range(matrix.shape[0], w)
    part = val[start:stop]
    sq, n = 0.0, 0
    if part.nnz:
        p, t = predict_entries(model, matrix[start:stop], part, device)
        sq, n = float(np.sum((np.asarray(clip(p, scale), np.float64) - t) ** 2)), len(t)
    total, count = distributed.all_sum([sq, n])
    return float(np.sqrt(total / count))


def rating_stopping(config: TrainConfig) -> EarlyStopping:
    """The rating families' early stopping: lowest validation RMSE, `config.patience`; for
    GLocal-K's L-BFGS schedule patience counts only once fine-tuning has begun."""
    return EarlyStopping("val_rmse", "min", config.patience,
                         warmup=config.pretrain_epochs if config.optimizer == "lbfgs" else 0)


def _validation(model, matrix, val, scale, device):
    """The loop's `score` for a rating model: validation RMSE at `val`'s entries (None without `val`)."""
    if val is None:
        return None
    return lambda: {"val_rmse": validation_rmse(model, matrix, val, scale, device)}


def _callbacks(on_epoch, ckpt: Checkpoint | None, phase: str, model, carry, **state) -> tuple[list, Start]:
    """The loop's callbacks (on_epoch, then the checkpoint) and its start (resumed from `ckpt`'s
    `phase` when there is one)."""
    callbacks = [lambda row, history, best: on_epoch(row)] if on_epoch else []
    if ckpt is None:
        return callbacks, Start()
    saver = EpochCheckpoint(ckpt, phase, model, carry=carry, **state)
    return callbacks + [saver], saver.start()


def fit(config: TrainConfig, matrix: sp.csr_matrix, val: sp.csr_matrix | None, scale, max_epochs: int,
        progress: bool = True, on_epoch=None, ckpt: Checkpoint | None = None, phase: str = "fit",
        carry: dict | None = None, soft: torch.Tensor | None = None):
    """Train on `matrix` rows; early-stop on `val` when given. Returns (model, history, best).
    `soft`: a teacher's dense predictions for every row of `matrix` (see train_step).

    The epochs run in builder.loop.run (early stopping: rating_stopping). With `ckpt`, the
    loop's state is saved after every epoch (builder.checkpoint.EpochCheckpoint) and a
    checkpoint of the same `phase` is resumed from (`carry` is stored alongside for the
    caller's own bookkeeping)."""
    w = distributed.world()
    if config.optimizer == "lbfgs":
        if w.parallel:
            raise ValueError("glocal-k's full-batch L-BFGS trains in one process; run it without --nproc")
        return fit_full_batch(config, matrix, val, scale, max_epochs, progress, on_epoch, ckpt, phase, carry)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)  # the same on every rank: one global shuffle
    device = pick_device(config.device)
    # Corruption and dropout draw per rank (rank 0 as one process does): the ranks' rows differ.
    gen = torch.Generator(device=device).manual_seed(config.seed + w.rank)
    model = make_model(config, matrix.shape[1]).to(device)
    net = distributed.wrap(model, device)  # DDP: rank 0's initial weights on every rank
    if w.parallel:
        torch.manual_seed(config.seed + 7919 * w.rank)
    optimizer = make_optimizer(config, model.parameters())
    sched = (torch.optim.lr_scheduler.StepLR(optimizer, config.lr_decay_epochs, config.lr_decay)
             if config.lr_decay_epochs else None)
    callbacks, start = _callbacks(on_epoch, ckpt, phase, model, carry, optimizer=optimizer, sched=sched,
                                  rng=rng, gen=gen)

    def epoch(n: int, seconds) -> dict:
        train_mse = run_epoch(model, optimizer, matrix, config, rng, gen, device, soft, net)
        if sched:
            sched.step()
        return {"epoch": n, "train_rmse": float(np.sqrt(train_mse)), "seconds": seconds()}
    history, best = loop.run(epoch, max_epochs, rating_stopping(config), model,
                             _validation(model, matrix, val, scale, device), start=start,
                             callbacks=tuple(callbacks), progress=progress and w.main, desc=config.model)
    return model, history, best


def fit_full_batch(config: TrainConfig, matrix: sp.csr_matrix, val: sp.csr_matrix | None, scale,
                   max_epochs: int, progress: bool = True, on_epoch=None, ckpt: Checkpoint | None = None,
                   phase: str = "fit", carry: dict | None = None):
    """GLocal-K's schedule: the whole matrix is one batch; each epoch is `lbfgs_iters` L-BFGS
    iterations from a fresh optimiser (as the reference's SciPy L-BFGS-B calls are); the first
    `pretrain_epochs` train the local-kernel network, the rest fine-tune with the global kernel.
    The objective is the reference's: 1/2 * squared error over observed ratings + penalties.
    Its epochs run in builder.loop.run, as fit's do."""
    if config.model != "glocal-k":
        raise ValueError(f"optimizer 'lbfgs' trains full-matrix models (glocal-k), not {config.model!r}")
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    model = make_model(config, matrix.shape[1], n_rows=matrix.shape[0]).to(device)
    x = torch.from_numpy(matrix.toarray()).to(device)
    observed = x != 0
    callbacks, start = _callbacks(on_epoch, ckpt, phase, model, carry)  # L-BFGS restarts each epoch: no optimiser state

    def epoch(n: int, seconds) -> dict:
        if n == config.pretrain_epochs + 1:
            model.fine_tuned.fill_(True)
        model.train()
        opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=config.lbfgs_iters,
                                max_eval=config.lbfgs_iters * 20, history_size=10, line_search_fn="strong_wolfe")
        sq_err = []

        def closure():
            opt.zero_grad(set_to_none=True)
            err = (model(x) - x)[observed]
            loss = 0.5 * (err ** 2).sum() + model.penalty(config.l2, config.kernel_l2)
            loss.backward()
            sq_err.append(float((err.detach() ** 2).mean()))
            return loss
        opt.step(closure)
        return {"epoch": n, "stage": "fine-tune" if bool(model.fine_tuned) else "pre-train",
                "train_rmse": float(np.sqrt(sq_err[-1])), "seconds": seconds()}
    history, best = loop.run(epoch, max_epochs, rating_stopping(config), model,
                             _validation(model, matrix, val, scale, device), start=start,
                             callbacks=tuple(callbacks), progress=progress, desc=config.model)
    return model, history, best


def validation_split(train_ui: sp.csr_matrix, config: TrainConfig):
    """(fit, validation) parts of the training matrix, by the config's scheme, oriented for the model."""
    if config.val_scheme == "entries":
        return holdout_entries(orient(train_ui, config), config.val_fraction, config.seed)
    if config.val_scheme == "users":
        return tuple(orient(m, config) for m in holdout_users(train_ui.tocsr(), config.val_fraction, config.seed))
    raise ValueError(f"unknown val_scheme {config.val_scheme!r}; use 'entries' or 'users'")


# A teacher's predictions are held dense (users x items, float32): bound that memory.
MAX_TEACHER_ENTRIES = 250_000_000


def _test_metrics(model, dataset: Dataset, config: TrainConfig, device) -> dict:
    """builder.evaluate.evaluate_model, computed once (rank 0) and handed to every rank."""
    w = distributed.world()
    return distributed.broadcast(ev.evaluate_model(model, dataset, config, device) if w.main else None)


def teacher_config(config: TrainConfig) -> TrainConfig:
    """The teacher preset's config, on the student's data, split and seed."""
    from builder.presets import preset
    if config.model in ITEM_BASED:
        raise ValueError(f"distillation targets users' rows; {config.model} is item-based")
    if config.distill <= 0:
        raise ValueError(f"teacher {config.teacher!r} given but distill is {config.distill}; set its weight > 0")
    try:
        options = preset(config.teacher)
    except KeyError as e:
        raise ValueError(f"teacher: {e.args[0]}") from None
    if "blend" in options:
        raise ValueError(f"teacher {config.teacher!r} is a blend; a teacher must be a single-model preset")
    return TrainConfig().updated(**{**options, "data": config.data, "split": config.split, "seed": config.seed,
                                    "device": config.device})


def teacher_predictions(config: TrainConfig, dataset: Dataset, train_ui: sp.csr_matrix,
                        progress: bool = False) -> tuple[torch.Tensor, dict]:
    """Train the config's teacher preset on `train_ui` alone (so it never saw what the student
    is validated on) and return its clipped dense predictions [users, items] and metrics.
    `progress`: the teacher's own progress bar (named for its model)."""
    if train_ui.shape[0] * train_ui.shape[1] > MAX_TEACHER_ENTRIES:
        raise ValueError(f"a teacher's dense predictions for {train_ui.shape[0]:,} x {train_ui.shape[1]:,} "
                         f"exceed {MAX_TEACHER_ENTRIES:,} entries (MAX_TEACHER_ENTRIES, "
                         f"{4 * MAX_TEACHER_ENTRIES / 1e9:g} GB float32); on data this large train the "
                         "network without distillation: --preset deeprec-plain, or --set teacher='\"\"' "
                         "--set distill=0 with your options")
    tconfig = teacher_config(config)
    part = dataclasses.replace(dataset, train=train_ui, test=sp.csr_matrix(train_ui.shape, dtype=np.float32))
    result = train(tconfig, part, progress=progress, evaluate=False)
    dense = ev.predict_user_matrix(result.model, part, tconfig, pick_device(tconfig.device))
    return torch.from_numpy(np.clip(dense, *dataset.scale).astype(np.float32)), result.metrics


def require_test_set(config: TrainConfig, dataset: Dataset) -> None:
    """Refuse, before training, a split that leaves nothing to test on (ValueError naming it)."""
    if dataset.test.nnz == 0:
        raise ValueError(f"the split {config.split!r} left no test {'events' if dataset.implicit else 'ratings'} "
                         f"({dataset.train.nnz:,} in training): per-user holds out only from users with at least 5, "
                         "last:N from users with more than N; use another split or more data")
    if config.model in TOP_N:
        # Explicit data whose test set holds no liked rating still trains (its run has no top-N
        # figures, as before); a log is only ever scored on ranking, so there it is an error.
        topn.check_trainable(config, dataset.train.tocsr(), dataset.test.tocsr() if dataset.implicit else None)


def check_metrics(metrics: dict) -> None:
    """Refuse metrics no run should be saved with: a NaN or infinite figure (ValueError naming them)."""
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not np.isfinite(v)]
    if bad:
        raise ValueError(f"training produced non-finite metrics ({', '.join(f'{k}={metrics[k]}' for k in bad)}): "
                         "the model diverged or the data left nothing to score; no run folder was written. "
                         "Lower lr, check the data, or use another split")


def train(config: TrainConfig, dataset: Dataset, progress: bool = True,
          checkpoint_dir: Path | None = None, checkpoint_every_s: float = 30.0,
          evaluate: bool = True) -> TrainResult:
    """Select the epoch on a validation slice of training data, refit on all of it when
    config.refit (builder.driver.select_then_refit); evaluate on test once.

    With `checkpoint_dir`, the loop is checkpointed there (at most every `checkpoint_every_s`;
    0: every epoch) and an existing checkpoint of the same config is resumed: the result
    equals an uninterrupted run's. With `config.teacher`, that preset is trained first on the
    same ratings as each phase (selection: the fit part; refit: all) and distilled from.

    Top-N models (builder.models.TOP_N) are trained by builder.topn.train_top_n instead:
    validated on ranking each training user's hidden ratings, no RMSE, no checkpoints.

    Under torchrun (builder.distributed) every rank calls this with the same data: each trains
    its part of every batch inside DistributedDataParallel, validation sums are all-reduced,
    rank 0 writes the checkpoint (with every rank's random state) and computes the test metrics,
    which every rank returns.

    On implicit feedback (dataset.implicit) only top-N models train, with every event a positive
    (topn.for_feedback; the returned config says so). Raises ValueError before training for a
    rating model on implicit data, a split with no test entries, or top-N data without positives,
    validation users or test users (topn.check_trainable), and for a field of another model
    family (builder.models.registry.validate)."""
    validate(config)  # a field of another family would be silently ignored
    w = distributed.world()
    config = topn.for_feedback(config, dataset.implicit)  # a rating model on a log is refused here
    if evaluate:
        require_test_set(config, dataset)
    if config.model in TOP_N:
        device = pick_device(config.device)
        model, selected, history = topn.train_top_n(config, dataset.train.tocsr(), device, progress and w.main)
        metrics = _test_metrics(model, dataset, config, device) if evaluate else {}
        return TrainResult(model, config, {**metrics, **selected}, history)
    start = time.perf_counter()
    if config.teacher:
        teacher_config(config)  # a bad teacher fails here, before any training
    elif config.distill:
        raise ValueError("distill needs a teacher preset (teacher=NAME)")
    # A checkpoint resumes only in a job of the same size: the ranks' random streams are in it.
    identity = {**asdict(config), **({"world_size": w.size} if w.parallel else {})}
    ckpt = (Checkpoint(checkpoint_dir, json.dumps(identity, sort_keys=True), checkpoint_every_s)
            if checkpoint_dir else None)
    stored = ckpt.load() if ckpt else None
    teacher: dict = {}
    if stored is not None and stored["phase"] == "refit":
        # Selection finished before the interruption: its outcome travels in the checkpoint.
        carried = json.loads(stored["carry"])
        selected, before = Selection(None, carried["history"], carried["best"]), carried["seconds"]
        if carried.get("teacher"):
            teacher["select"] = carried["teacher"]
        fit_part = val_part = None
    else:
        selected, before = None, stored["elapsed"] if stored is not None else 0.0  # spent before an interruption
        fit_part, val_part = validation_split(dataset.train, config)

    def teach(phase: str, ratings: sp.csr_matrix) -> torch.Tensor:
        """The teacher's predictions for `phase`: kept beside the checkpoint once trained, so a
        resumed run does not train the teacher again."""
        kept = ckpt.load_teacher(phase) if ckpt else None
        if kept is None:
            kept = teacher_predictions(config, dataset, ratings, progress)
            if ckpt and w.main:
                ckpt.save_teacher(phase, *kept)
        soft, teacher[phase] = kept
        return soft

    def fit_phase(part, val, max_epochs: int, selection: Selection | None):
        """builder.driver's fit: the selection phase on `part`, or the refit on all ratings."""
        soft = None
        if selection is None:
            if config.teacher:
                soft = teach("select", part)
            return fit(config, part, val, dataset.scale, max_epochs, progress, ckpt=ckpt, phase="select", soft=soft)
        if config.teacher:
            soft = teach("refit", dataset.train.tocsr())
        carry = {"history": selection.history, "best": {k: v for k, v in selection.best.items() if k != "state"},
                 "seconds": time.perf_counter() - start + before, "teacher": teacher.get("select")}
        return fit(config, part, None, dataset.scale, max_epochs, progress, ckpt=ckpt, phase="refit",
                   carry=carry, soft=soft)
    # Same recipe, all training ratings, the epoch count chosen on validation (config.refit).
    model, selection = select_then_refit(fit_phase, fit_part, val_part, orient(dataset.train, config),
                                         config.epochs, config.refit, selected)
    history, best = selection.history, selection.best
    seconds = time.perf_counter() - start + before
    if stored is not None and stored["phase"] == "refit":
        seconds += stored["elapsed"]
    metrics = _test_metrics(model, dataset, config, pick_device(config.device)) if evaluate else {}
    if teacher:
        metrics["teacher"] = {"preset": config.teacher, **{phase: {k: m[k] for k in ("val_rmse", "best_epoch")}
                                                          for phase, m in teacher.items()}}
    metrics.update(best_epoch=best["epoch"], val_rmse=best["val_rmse"], train_seconds=round(seconds, 2),
                   seconds_to_best=round(best.get("seconds", seconds), 2), epochs_run=len(history))
    return TrainResult(model, config, metrics, history)
