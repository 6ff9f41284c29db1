"""The one epoch loop (builder.loop): early stopping keeps the best epoch and its weights, stops
after `patience` epochs without a gain (after a warm-up), on divergence, and a run interrupted
and resumed through the checkpoint callback ends where an uninterrupted run ends."""
import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from builder import loop
from builder.checkpoint import Checkpoint
from builder.config import TrainConfig
from builder.driver import Selection, select_then_refit
from builder.loop import EarlyStopping
from builder.train import fit


def _scripted(scores: list[float]):
    """A loop whose epoch n sets the model's one weight to n and scores scores[n - 1]."""
    model = torch.nn.Linear(1, 1, bias=False)
    seen = []

    def epoch(n, seconds):
        with torch.no_grad():
            model.weight.fill_(float(n))
        seen.append(n)
        return {"epoch": n, "train_rmse": 1.0, "seconds": seconds()}

    def score():
        return {"val_rmse": scores[seen[-1] - 1]}
    return model, epoch, score, seen


def test_early_stopping_keeps_the_best_epoch_and_its_weights():
    scores = [5.0, 3.0, 4.0, 2.5, 2.7, 2.6, 2.9, 3.5]
    model, epoch, score, seen = _scripted(scores)
    history, best = loop.run(epoch, len(scores), EarlyStopping("val_rmse", "min", patience=10), model, score,
                             progress=False)
    assert seen == list(range(1, len(scores) + 1))  # patience never ran out
    assert best["epoch"] == int(np.argmin(scores)) + 1
    assert best["val_rmse"] == min(scores)
    assert model.weight.item() == best["epoch"]  # the best epoch's weights are back in the model
    assert [r["val_rmse"] for r in history] == scores


def test_patience_stops_after_that_many_epochs_without_a_gain():
    scores = [4.0, 3.0, 2.0, 2.5, 2.2, 2.1, 2.0, 1.0, 0.5]  # a tie (2.0) is no gain
    for patience in (1, 3, 4):
        model, epoch, score, seen = _scripted(scores)
        _, best = loop.run(epoch, len(scores), EarlyStopping("val_rmse", "min", patience), model, score,
                           progress=False)
        assert best["epoch"] == 3
        assert seen[-1] == 3 + patience


def test_warmup_epochs_do_not_count_against_patience():
    scores = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]  # best at epoch 1, inside the warm-up
    model, epoch, score, seen = _scripted(scores)
    loop.run(epoch, len(scores), EarlyStopping("val_rmse", "min", patience=2, warmup=4), model, score,
             progress=False)
    assert seen[-1] == 4 + 2


def test_max_mode_keeps_the_highest_score_and_its_row():
    model, epoch, _, seen = _scripted([])
    ndcg = [0.1, 0.3, 0.2, 0.25]

    def score():
        return {"val_ndcg": ndcg[seen[-1] - 1]}
    _, best = loop.run(epoch, len(ndcg), EarlyStopping("val_ndcg", "max", 5, name="ndcg", keep_row=True), model,
                       score, progress=False)
    assert best["epoch"] == 2 and best["ndcg"] == max(ndcg) and best["row"]["val_ndcg"] == max(ndcg)


def test_a_non_finite_loss_ends_the_loop():
    model = torch.nn.Linear(1, 1)
    runs = []

    def epoch(n, seconds):
        runs.append(n)
        return {"epoch": n, "train_rmse": math.nan if n == 3 else 1.0, "seconds": seconds()}
    history, _ = loop.run(epoch, 10, EarlyStopping("val_rmse"), model, progress=False)
    assert runs == [1, 2, 3] and len(history) == 3


def test_bad_mode_is_named():
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping("val_rmse", "lowest")


class _Interrupted(Exception):
    pass


def test_checkpoint_callback_resumes_to_the_same_result(u1, tmp_path):
    """A real fit (AutoRec with dropout: every random generator matters) stopped after epoch 3 and
    resumed from the checkpoint callback's file ends with the uninterrupted run's weights,
    history and best epoch."""
    rows = u1.train.tocsr()[:100]
    matrix, val = rows.copy(), rows.copy()
    matrix.data[::7] = 0
    matrix.eliminate_zeros()
    val = val - matrix
    val = sp.csr_matrix(val)
    config = TrainConfig().updated(model="autorec-u", hidden=[8], dropout=0.3, batch_size=25, epochs=5,
                                   patience=10, device="cpu")

    def run(ckpt=None, on_epoch=None):
        return fit(config, matrix, val, u1.scale, config.epochs, progress=False, on_epoch=on_epoch, ckpt=ckpt)

    whole, whole_history, whole_best = run()

    def stop_at_3(row):
        if row["epoch"] == 4:  # the callback before the checkpoint's: epoch 3 is the last saved
            raise _Interrupted
    with pytest.raises(_Interrupted):
        run(Checkpoint(tmp_path, "config", every_s=0), stop_at_3)
    resumed, history, best = run(Checkpoint(tmp_path, "config", every_s=0))

    def untimed(h):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert untimed(history) == untimed(whole_history)
    assert best["epoch"] == whole_best["epoch"] and best["val_rmse"] == whole_best["val_rmse"]
    for name, tensor in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


def test_select_then_refit_refits_for_the_chosen_epochs_only_when_asked(u1):
    """The driver with a real fit: without refit the selected model comes back; with it, the
    model equals a fit on all rows for the chosen epochs; a finished selection is not redone."""
    full = u1.train.tocsr()[:100]
    part, val = full.copy(), full.copy()
    part.data[::5] = 0
    part.eliminate_zeros()
    val = sp.csr_matrix(val - part)
    config = TrainConfig().updated(model="autorec-u", hidden=[8], batch_size=25, epochs=4, patience=10,
                                   device="cpu")

    def real_fit(rows, val_rows, max_epochs, selection):
        return fit(config, rows, val_rows, u1.scale, max_epochs, progress=False)

    def same(a, b):
        return all(torch.equal(a.state_dict()[k], t) for k, t in b.state_dict().items())
    model, selection = select_then_refit(real_fit, part, val, full, config.epochs, refit_when=False)
    assert model is selection.model and len(selection.history) == config.epochs
    assert selection.epochs == 1 + int(np.argmin([r["val_rmse"] for r in selection.history]))
    refitted, _ = select_then_refit(real_fit, part, val, full, config.epochs, refit_when=lambda s: s.epochs > 0)
    assert same(refitted, fit(config, full, None, u1.scale, selection.epochs, progress=False)[0])
    assert not same(refitted, model)
    done = Selection(None, [], {"epoch": 2})
    resumed, _ = select_then_refit(real_fit, None, None, full, config.epochs, selected=done)
    assert same(resumed, fit(config, full, None, u1.scale, 2, progress=False)[0])


def test_a_redirected_log_gets_a_line_now_and_then_and_no_bar(tmp_path):
    """Where stderr is a file (a training log redirected), the bar draws nothing (its redraws
    would fill the log); a plain line at most every LOG_EVERY_S seconds says the run is alive,
    with the validation figure and the best epoch so far."""
    script = ("import time, torch\nfrom builder import loop\n"
              "loop.LOG_EVERY_S = {every}\n"
              "m = torch.nn.Linear(1, 1)\n"
              "loop.run(lambda n, s: (time.sleep(0.01), {{'epoch': n, 'train_rmse': 1.0, 'seconds': s()}})[1], 50, "
              "loop.EarlyStopping('val_rmse', 'min', patience=100), m, lambda: {{'val_rmse': 0.9}}, desc='demo')\n")
    for every, expected in ((3600, 0), (0.0, 50)):
        log = tmp_path / f"train-{every}.log"
        with open(log, "w") as f:
            subprocess.run([sys.executable, "-c", script.format(every=every)], stderr=f, check=True, timeout=120)
        text = log.read_text()
        assert "\r" not in text and len(text.splitlines()) == expected, text[:500]
    assert text.splitlines()[9].startswith("demo: epoch 10/50, val_rmse 0.9000, best 1, ")
