"""Training of the top-N models (popularity, EASE, Mult-DAE, Mult-VAE, RecVAE, ELSA) on implicit feedback,
validated the way they are tested: each training user hides a share of their ratings, the
model sees the rest, and is scored on ranking the hidden liked items (recall@10, NDCG@100).

Popularity and EASE have closed forms: fitted on the visible part to report validation
figures, then on all training ratings. Mult-DAE/VAE (Liang et al. 2018), RecVAE (Shenbin et
al. 2020) and ELSA (Vančura et al. 2022) are trained by the loop below, each family's epoch a list
of phases (training_phases) with their own losses, with early stopping on validation NDCG@100,
then refit for the chosen epochs.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch

from builder import distributed, loop
from builder.config import TrainConfig
from builder.data.logs import format_of
from builder.data.splits import holdout_share_per_user
from builder.driver import select_then_refit
from builder.evaluate import liked, ranking_metrics
from builder.loop import EarlyStopping
from builder.losses import composite_prior_log_density, kl_divergence, multinomial_nll, recvae_kl
from builder.models import TOP_N, model_spec
from builder.models.ease import check_ease_memory
from builder.models.implicit import binarise
from builder.predict import dense_rows, predict_rows, sparse_rows

log = logging.getLogger(__name__)

# The early-stopping score (Liang et al. select on NDCG@100) and the headline figure.
STOP_ON = "ndcg@100"
REPORTED = ("recall@10", "ndcg@100")


def for_feedback(config: TrainConfig, implicit: bool) -> TrainConfig:
    """The config a model trains with on this kind of feedback. Explicit ratings: `config`.
    Implicit feedback (an interaction log: no ratings): every event is a positive, so the
    rating thresholds do not apply: implicit_threshold and relevant_threshold become 0 (any
    stored value counts), which is what the run records and the exported model applies. Raises
    ValueError for a rating model, which has no ratings to learn from a log."""
    if not implicit:
        return config
    if config.model not in TOP_N:
        raise ValueError(f"{config.model} predicts ratings, and this data is an interaction log without ratings "
                         "(implicit feedback). Train a top-N model on it: --preset ease, --preset ease-lowrank, "
                         "--preset elsa, --preset mult-vae, --preset mult-dae, --preset recvae or --preset popularity; "
                         "or, if the file has ratings, name their column: ?rating=COL")
    if config.implicit_threshold or config.relevant_threshold:
        log.warning("implicit feedback: every event is a positive; implicit_threshold=%g and relevant_threshold=%g "
                    "(for ratings) are not applied", config.implicit_threshold, config.relevant_threshold)
    return dataclasses.replace(config, implicit_threshold=0.0, relevant_threshold=0.0)


def positives(matrix: sp.csr_matrix, threshold: float) -> np.ndarray:
    """bool per stored entry of `matrix`: does it count as a positive (> 0 for threshold 0, else
    >= threshold), as the models' binarise decides."""
    return matrix.data > 0 if threshold <= 0 else matrix.data >= threshold


def check_trainable(config: TrainConfig, train_ui: sp.csr_matrix, test_ui: sp.csr_matrix | None = None) -> None:
    """Refuse, before any training, data a top-N model cannot learn from or be scored on: no
    positives after implicit_threshold, no user with two or more positives (validation hides a
    share of each user's and needs one left to see), no test user with a relevant item. Raises
    ValueError naming the cause and a way forward."""
    n = int(train_ui.nnz)
    pos = positives(train_ui, config.implicit_threshold)
    if n == 0 or not pos.any():
        span = f" (ratings span {train_ui.data.min():g}..{train_ui.data.max():g})" if n else ""
        raise ValueError(f"no positives to train on: none of the {n:,} training ratings is >= implicit_threshold "
                         f"{config.implicit_threshold:g}{span}. If these rows are clicks, views or purchases "
                         "rather than ratings, read the file as an interaction log: drop the rating column, or "
                         f"name it as the weight ({format_of(config.data) or 'csv'}:PATH?weight=COLUMN); to count "
                         "every rating as a positive, "
                         "--set implicit_threshold=0")
    per_user = np.bincount(np.repeat(np.arange(train_ui.shape[0]), np.diff(train_ui.indptr))[pos],
                           minlength=train_ui.shape[0])
    if not (per_user >= 2).any():
        raise ValueError(f"no validation users: every training user has at most one positive ({int(pos.sum()):,} "
                         f"positives over {int((per_user > 0).sum()):,} users); validation hides a share of each "
                         "user's interactions and ranks it from the rest, so at least some users need two or more")
    if test_ui is not None:
        relevant = liked(test_ui, config.relevant_threshold)
        if not (np.diff(relevant.indptr) > 0).any():
            what = (f"a rating >= relevant_threshold {config.relevant_threshold:g}" if config.relevant_threshold > 0
                    else "an interaction")
            raise ValueError(f"no test users: the split {config.split!r} left no user with {what} in the test "
                             f"set ({int(test_ui.nnz):,} test entries); per-user holds out only from users with at "
                             "least 5 interactions, last:N from users with more than N: use another split or more data")


def make_top_n_model(config: TrainConfig, n_items: int) -> torch.nn.Module:
    """The untrained top-N model of `config` for n_items items (its builder.models.registry
    entry); ValueError for a family that is not top-N."""
    spec = model_spec(config.model)
    if spec.task != "top-n":
        raise ValueError(f"{config.model!r} is not a top-N model ({', '.join(sorted(TOP_N))})")
    return spec.build(config, n_items, None)


def validation_split_top_n(train_ui: sp.csr_matrix, config: TrainConfig) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(visible, hidden) of the training matrix (users x items): `config.val_holdout` of each
    user's ratings hidden. The test set is never read."""
    return holdout_share_per_user(train_ui, config.val_holdout, config.seed)


# Validation scores users in blocks of at most this many scores (users x items, float32:
# 64 MB), so a million-item catalogue is ranked 16 users at a time, never users x items at once.
VALIDATION_BLOCK_SCORES = 2 ** 24


def validation_metrics(model, visible: sp.csr_matrix, hidden: sp.csr_matrix, config: TrainConfig, device) -> dict:
    """REPORTED metrics on the hidden liked ratings; the model's input is each user's visible
    ratings, and only those are excluded from the ranking (a hidden disliked item may be
    ranked, and is a miss, as a disliked test item is in the test). Users are scored in blocks
    of VALIDATION_BLOCK_SCORES scores (memory linear in the items); the per-user means of the
    blocks are combined weighted by their users."""
    relevant = liked(hidden, config.relevant_threshold)
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    w = distributed.world()
    if w.parallel:
        # Each rank ranks a block of the users; the per-user means become all-reduced sums.
        start, stop = distributed.shard_range(len(users), w)
        sums = _metric_sums(model, visible, relevant, users[start:stop], device)
        total = distributed.all_sum([*sums, stop - start])
        return {k: float(total[i] / total[-1]) for i, k in enumerate(REPORTED)}
    sums = _metric_sums(model, visible, relevant, users, device)
    return {k: sums[i] / max(1, len(users)) for i, k in enumerate(REPORTED)}


def _metric_sums(model, visible: sp.csr_matrix, relevant: sp.csr_matrix, users: np.ndarray, device) -> list[float]:
    """Sums over `users` (each with a relevant item) of the REPORTED metrics, scored in blocks."""
    block = max(1, min(1024, VALIDATION_BLOCK_SCORES // max(1, visible.shape[1])))
    sums = [0.0] * len(REPORTED)
    for s in range(0, len(users), block):
        mine = users[s:s + block]
        m = ranking_metrics(predict_rows(model, visible, mine, device, batch=block), visible[mine].toarray() != 0,
                            relevant[mine])
        sums = [total + m[k] * len(mine) for total, k in zip(sums, REPORTED)]
    return sums


def ease_options(config: TrainConfig) -> dict:
    """EASE.fit's variant options from `config`: EDLAE dropout, RDLAE's bound, the popularity correction."""
    return {"dropout": config.edlae_dropout, "popularity_gamma": config.popularity_gamma, "xi": config.rdlae_xi}


# The families fitted in closed form (fit_closed_form), not by gradient steps.
CLOSED_FORM = ("popularity", "ease", "ease-lowrank")


def fit_closed_form(config: TrainConfig, matrix: sp.csr_matrix) -> torch.nn.Module:
    """Popularity's counts, EASE's B or low-rank EASE's factors from `matrix` (users x items, raw ratings)."""
    if config.model == "ease":
        check_ease_memory(matrix.shape[1], config.ease_max_gb)
        w = distributed.world()
        if w.parallel:  # each rank's block of users adds its X^T X; all solve the summed Gram
            start, stop = distributed.shard_range(matrix.shape[0], w)
            return make_top_n_model(config, matrix.shape[1]).fit(matrix[start:stop], config.ease_lambda,
                                                                 reduce=distributed.all_sum,
                                                                 **ease_options(config)).eval()
        return make_top_n_model(config, matrix.shape[1]).fit(matrix, config.ease_lambda, **ease_options(config)).eval()
    if config.model == "popularity":
        return make_top_n_model(config, matrix.shape[1]).fit(matrix).eval()
    if config.model == "ease-lowrank":
        return make_top_n_model(config, matrix.shape[1]).fit(matrix, config.ease_lambda, config.svd_power_iters,
                                                             config.seed).eval()
    raise ValueError(f"{config.model!r} has no closed form; it is trained by fit_multinomial")


def beta_at(step: int, config: TrainConfig) -> float:
    """Mult-VAE's KL weight after `step` updates: linear from 0, capped at anneal_cap."""
    return min(config.anneal_cap, step / max(1, config.total_anneal_steps))


def fit_multinomial(config: TrainConfig, matrix: sp.csr_matrix, val: tuple | None, max_epochs: int, device,
                    progress: bool = True):
    """Train Mult-DAE, Mult-VAE, RecVAE or ELSA (training_phases) on `matrix` rows (users x items,
    raw ratings) for up to max_epochs; with val = (visible, hidden) keep the epoch of the best
    validation NDCG@100 and stop after `config.patience` epochs without a gain (builder.loop.run,
    top_n_stopping). Returns (model, history, best).

    An epoch is the family's phases (training_phases): one pass updating every weight, or
    RecVAE's passes of encoder updates followed by one of decoder updates.

    Data-parallel (builder.distributed), each rank trains its slice of every global batch of the
    seed's one permutation inside DistributedDataParallel, its mean loss scaled to its share of
    the global batch (DDP averages the gradients: the step is one process's)."""
    w = distributed.world()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = make_top_n_model(config, matrix.shape[1]).to(device)
    phases = training_phases(config, model, device)
    if w.parallel:  # dropout and the VAE's noise draw per rank
        torch.manual_seed(config.seed + 7919 * w.rank)
    positives = binarise(torch.from_numpy(matrix.data), config.implicit_threshold).numpy()
    counts = np.bincount(np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr)), weights=positives,
                         minlength=matrix.shape[0])
    rows = np.flatnonzero((np.diff(matrix.indptr) > 0) & (counts > 0))  # a user with no positive teaches nothing
    step = 0

    def epoch(n: int, seconds) -> dict:
        nonlocal step
        model.train()
        losses = []
        for phase in phases:
            if phase.begin is not None:
                phase.begin()
            for _ in range(phase.passes):
                rng.shuffle(rows)
                for s in range(0, len(rows), config.batch_size):
                    batch = rows[s:s + config.batch_size]
                    part = distributed.batch_part(batch, w)
                    model.zero_grad(set_to_none=True)
                    loss, out = phase.loss(matrix, part, step)
                    if w.parallel:
                        # This rank's share of the global batch's mean (an empty share still joins the
                        # gradient all-reduce, with zeros).
                        share = len(part) / len(batch)
                        loss = loss * (w.size * share) if len(part) else out.sum() * 0.0
                        losses.append(loss.item() / w.size)
                    loss.backward()
                    phase.optimizer.step()
                    step += 1
                    if not w.parallel:
                        losses.append(loss.item())
        if w.parallel:  # the global batches' losses: the ranks' shares summed
            losses = list(distributed.all_sum(losses))
        row = {"epoch": n, "train_loss": float(np.mean(losses)), "seconds": seconds()}
        if config.model == "mult-vae":
            row["beta"] = beta_at(step, config)
        return row

    def score() -> dict:
        model.eval()
        return {f"val_{k}": v for k, v in validation_metrics(model, *val, config, device).items()}
    history, best = loop.run(epoch, max_epochs, top_n_stopping(config), model, score if val is not None else None,
                             loss="train_loss", progress=progress, desc=config.model)
    return model.eval(), history, best


def top_n_stopping(config: TrainConfig) -> EarlyStopping:
    """The top-N models' early stopping: highest validation NDCG@100 (STOP_ON), `config.patience`;
    the best epoch's row is kept (its validation figures are the run's)."""
    return EarlyStopping(f"val_{STOP_ON}", "max", config.patience, name=STOP_ON, keep_row=True)


class _ElsaStep(torch.nn.Module):
    """ELSA's training forward as one module call, so DistributedDataParallel sees it: a batch
    of rows (sparse COO [batch, n_items], raw ratings) -> the normalised MSE per user [batch]."""

    def __init__(self, elsa: torch.nn.Module):
        super().__init__()
        self.elsa = elsa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.elsa.loss(x)


@dataclasses.dataclass
class Phase:
    """One part of a training epoch: `passes` shuffled passes over the users, each batch's
    loss(matrix, rows, step) -> (loss averaged over the rows, the network's output, whose sum
    times 0 is the zero loss of an empty data-parallel share) minimised by `optimizer` (which
    holds the weights this phase updates); `begin` runs first."""
    optimizer: torch.optim.Optimizer
    loss: Callable
    passes: int = 1
    begin: Callable | None = None


def training_phases(config: TrainConfig, model: torch.nn.Module, device) -> list[Phase]:
    """The phases of one epoch of `model` (already on `device`). Mult-DAE / Mult-VAE: one pass
    updating every weight (Mult-VAE's KL weight annealed by beta_at). RecVAE (Shenbin et al.
    2020): recvae_encoder_epochs passes updating the encoder (input dropout on), then the
    composite prior's old encoder takes the encoder's weights, then one pass updating the
    decoder (no input dropout); each part has its own Adam. ValueError for another family."""
    def adam(params):
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)

    def dense(loss):
        """loss(x raw ratings, target binary [batch, n_items], step) as a phase's loss."""
        def of_rows(matrix, rows, step):
            x = dense_rows(matrix, rows, device)
            return loss(x, binarise(x, config.implicit_threshold), step)
        return of_rows

    if config.model == "elsa":
        # Its normalised MSE (builder.models.elsa) from the sparse rows: nothing n_items wide is
        # formed beyond the factors' gradient.
        elsa = distributed.wrap(_ElsaStep(model), device)

        def elsa_loss(matrix, rows, step):
            per_user = elsa(sparse_rows(matrix, rows, device))
            return per_user.mean(), per_user
        return [Phase(adam(model.parameters()), elsa_loss)]
    if config.model == "mult-dae":
        net = distributed.wrap(model, device)
        return [Phase(adam(model.parameters()), dense(lambda x, t, step: _logits_loss(net(x), t)))]
    if config.model == "mult-vae":
        net = distributed.wrap(_VaeStep(model), device)

        def vae_loss(x, target, step):
            logits, mu, logvar = net(x)
            return multinomial_nll(logits, target) + beta_at(step, config) * kl_divergence(mu, logvar), logits
        return [Phase(adam(model.parameters()), dense(vae_loss))]
    if config.model == "recvae":
        module = _RecVaeStep(model)
        net = distributed.wrap(module, device)

        def recvae_loss(dropout):
            def loss(x, target, step):
                logits, z, mu, logvar, prior = net(x, dropout=dropout)
                kl = recvae_kl(z, mu, logvar, prior, config.recvae_gamma * target.sum(dim=1))
                return multinomial_nll(logits, target) + kl, logits
            return loss
        return [Phase(adam(model.encoder.parameters()), dense(recvae_loss(True)), config.recvae_encoder_epochs),
                Phase(adam(model.decoder.parameters()), dense(recvae_loss(False)), 1, begin=module.update_prior)]
    raise ValueError(f"{config.model!r} is not trained by gradient steps (mult-dae, mult-vae, recvae, elsa are)")


def _logits_loss(logits: torch.Tensor, target: torch.Tensor):
    return multinomial_nll(logits, target), logits


class _VaeStep(torch.nn.Module):
    """Mult-VAE's training forward as one module call, so DistributedDataParallel sees it: the
    encoder (with its input dropout: the denoising), the reparameterised draw and the decoder.
    x [batch, n_items] -> (logits [batch, n_items], mu, logvar [batch, latent])."""

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor):
        mu, logvar = self.vae.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.vae.decode(z), mu, logvar


class _RecVaeStep(torch.nn.Module):
    """RecVAE's training forward as one module call (for DistributedDataParallel), holding the
    composite prior's old encoder: a frozen copy of the encoder, refreshed by update_prior; it
    lives only here, so the trained (and exported) model is the encoder and decoder alone.
    x [batch, n_items] -> (logits [batch, n_items], z, mu, logvar, log prior density, each
    [batch, latent])."""

    def __init__(self, recvae: torch.nn.Module):
        super().__init__()
        self.recvae = recvae
        self.old_encoder = copy.deepcopy(recvae.encoder).requires_grad_(False)

    def update_prior(self) -> None:
        """The old encoder takes the current encoder's weights."""
        self.old_encoder.load_state_dict(self.recvae.encoder.state_dict())

    def forward(self, x: torch.Tensor, dropout: bool = True):
        mu, logvar = self.recvae.encode(x, dropout)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        with torch.no_grad():
            mu_old, logvar_old = self.old_encoder(x, dropout=False)
        return self.recvae.decode(z), z, mu, logvar, composite_prior_log_density(z, mu_old, logvar_old)


def train_top_n(config: TrainConfig, train_ui: sp.csr_matrix, device, progress: bool = True):
    """Select on validation, then fit on all of `train_ui` (users x items, raw ratings):
    builder.driver.select_then_refit; a closed form is always refit, a trained family when
    config.refit and validation chose an epoch.

    Returns (model, metrics, history); metrics hold val_recall@10, val_ndcg@100 (of the model
    fitted on the visible part), best_epoch, epochs_run, train_seconds, seconds_to_best.
    Raises ValueError for a model that is not top-N, or an EASE fit that would peak above ease_max_gb.
    """
    if config.model not in TOP_N:
        raise ValueError(f"{config.model!r} is not a top-N model ({', '.join(sorted(TOP_N))})")
    start = time.perf_counter()
    if config.model == "ease":  # refuse before any work
        check_ease_memory(train_ui.shape[1], config.ease_max_gb)
    check_trainable(config, train_ui)
    visible, hidden = validation_split_top_n(train_ui, config)
    closed = config.model in CLOSED_FORM

    def fit(part, val, max_epochs: int, selection):
        """builder.driver's fit: with `val` (visible, hidden) the selection, else the refit."""
        if not closed:
            return fit_multinomial(config, part, val, max_epochs, device, progress)
        # A closed form has nothing to stop early: validation scores the fit on the visible part;
        # the served model is the same formula on every training rating.
        model = fit_closed_form(config, part).to(device)
        if val is None:
            return model, [], {"epoch": 0}
        scores = {f"val_{k}": v for k, v in validation_metrics(model, *val, config, device).items()}
        # The selected fit is only scored (a closed form is always refitted): its weights are freed
        # before the refit allocates the same again (a 20k-item EASE is 1.6 GB).
        return None, [], {"epoch": 0, "seconds": time.perf_counter() - start, "row": scores}
    # Same recipe, all training ratings, for the epochs chosen on validation (always for a closed form).
    model, selection = select_then_refit(fit, visible, (visible, hidden), train_ui, config.epochs,
                                         lambda sel: closed or bool(config.refit and sel.epochs))
    history, best = selection.history, selection.best
    val = {k: best["row"][f"val_{k}"] for k in REPORTED} if "row" in best else {}
    seconds = time.perf_counter() - start
    metrics = {**{f"val_{k}": v for k, v in val.items()}, "best_epoch": best["epoch"], "epochs_run": len(history),
               "train_seconds": round(seconds, 2), "seconds_to_best": round(best.get("seconds", seconds), 2)}
    return model.eval(), metrics, history
