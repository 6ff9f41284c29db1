"""Choose on validation, then refit: the one driver every trained family goes through.

`select` fits on the training data less a validation part and keeps what validation chose (the
epoch of early stopping, with the history and the scores there); `refit` fits the same recipe
on all the training data for the chosen epochs; `select_then_refit` is the two in a row, the
refit when the family asks for it. The rating models (builder.train.train), the top-N models
(builder.topn.train_top_n) and, member by member, the blends (builder.blend.train_blend, which
stacks between the two steps) use it. What a fit is (minibatch epochs, L-BFGS, a closed form)
is the family's `fit` function:

    fit(train_part, val_part, max_epochs, selection) -> (model, history, best)

with `val_part` None and `selection` (the Selection being refit) when refitting, and `best` a
dict holding at least "epoch" (the chosen epoch count; 0 for a closed form).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass
class Selection:
    """What validation chose: the model fitted on the training part, its per-epoch history and
    `best` (builder.loop.EarlyStopping.best, or the closed forms' {"epoch": 0, ...})."""
    model: torch.nn.Module
    history: list
    best: dict

    @property
    def epochs(self) -> int:
        """The chosen number of epochs."""
        return self.best["epoch"]


Fit = Callable[[Any, Any, int, "Selection | None"], tuple]


def select(fit: Fit, train_part, val_part, max_epochs: int) -> Selection:
    """Fit on `train_part` for up to `max_epochs`, choosing on `val_part`; returns the Selection."""
    model, history, best = fit(train_part, val_part, max_epochs, None)
    return Selection(model, history, best)


def refit(fit: Fit, full, selection: Selection) -> torch.nn.Module:
    """The same recipe on all the training data `full`, for the epochs `selection` chose, with no
    validation; returns the refitted model."""
    model, _, _ = fit(full, None, selection.epochs, selection)
    return model


def select_then_refit(fit: Fit, train_part, val_part, full, max_epochs: int,
                      refit_when: bool | Callable[[Selection], bool] = True,
                      selected: Selection | None = None) -> tuple[torch.nn.Module, Selection]:
    """`select`, then `refit` when `refit_when` (a bool, or a test of the Selection) says so.
    Returns (the model to evaluate: the refitted one, else the selected one, and the Selection).

    `selected`: a Selection already made (a run resumed after its selection had finished, its
    model None): selection is skipped and only the refit runs."""
    selection = selected if selected is not None else select(fit, train_part, val_part, max_epochs)
    wanted = refit_when(selection) if callable(refit_when) else refit_when
    return (refit(fit, full, selection) if wanted else selection.model), selection
