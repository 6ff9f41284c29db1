"""Learning curves: one PNG per run folder, drawn from the history the training loop kept."""
from __future__ import annotations

from pathlib import Path


def plot_curve(history: list[dict], path: Path, title: str) -> None:
    """Write the per-epoch curve of `history` (rows of builder.train's loop) to `path` (PNG).

    Rating models: train (masked) RMSE and, when validated, validation RMSE against the epoch.
    Top-N models (rows without "train_rmse"): the training loss on the left axis and validation
    NDCG@100 / recall@10 on the right."""
    import matplotlib  # here: slow to import, and the Agg backend must be chosen before pyplot loads
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ep = [h["epoch"] for h in history]
    if history and "train_rmse" not in history[0]:  # a top-N run: loss and validation ranking
        _plot_top_n_curve(ax, ep, history)
    else:
        ax.plot(ep, [h["train_rmse"] for h in history], label="train (masked) RMSE")
        if history and "val_rmse" in history[0]:
            ax.plot(ep, [h["val_rmse"] for h in history], label="validation RMSE")
        ax.set_xlabel("epoch")
        ax.set_ylabel("RMSE")
        ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_top_n_curve(ax, ep: list, history: list[dict]) -> None:
    """Training loss (left axis) and validation NDCG@100 / recall@10 (right axis) per epoch."""
    ax.plot(ep, [h["train_loss"] for h in history], label="train loss", color="tab:blue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("multinomial NLL (+ beta KL)")
    right = ax.twinx()
    for key, color in (("val_ndcg@100", "tab:orange"), ("val_recall@10", "tab:green")):
        if key in history[0]:
            right.plot(ep, [h[key] for h in history], label=key, color=color)
    right.set_ylabel("validation")
    ax.legend(loc="upper left")
    right.legend(loc="lower right")
