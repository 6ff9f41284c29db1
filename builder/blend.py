"""A blend (linear stack) of trained models, tuned honestly:

1. one validation slice of the training ratings, shared by every member (user x item entries,
   so item- and user-based members are scored on the same ratings);
2. each member trains on the rest and early-stops on that slice;
3. non-negative blend weights are fitted to the members' validation predictions;
4. each member is retrained on all training ratings for its chosen epoch count;
5. the test set is scored once, with those weights.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.optimize import nnls

from builder import evaluate as ev
from builder.config import TrainConfig
from builder.data.dataset import Dataset
from builder.data.sources import load_dataset
from builder.data.splits import holdout_entries
from builder.driver import refit, select
from builder.metrics import mae, rmse
from builder.models import ITEM_BASED, validate
from builder.predict import orient, predict_entries
from builder.presets import preset
from builder.run_folder import load_run, load_run_dataset, save_run
from builder.train import TrainResult, fit, pick_device


@dataclass
class BlendResult:
    """The members (each retrained on all training ratings), their non-negative weights and the blend's test
    metrics."""
    members: list[TrainResult]
    weights: list[float]
    metrics: dict


def _user_item_order(pred: np.ndarray, targets_oriented: sp.csr_matrix, config: TrainConfig) -> np.ndarray:
    """Reorder predictions made in a member's orientation to the user-major order of the entries."""
    t = targets_oriented.tocoo()
    users, items = (t.col, t.row) if config.model in ITEM_BASED else (t.row, t.col)
    return pred[np.lexsort((items, users))]


def _entries(matrix: sp.csr_matrix) -> np.ndarray:
    """Values of a users x items matrix in user-major, item-minor order."""
    c = matrix.tocoo()
    return c.data[np.lexsort((c.col, c.row))]


def member_predictions(model, config: TrainConfig, inputs_ui: sp.csr_matrix, targets_ui: sp.csr_matrix,
                       device) -> np.ndarray:
    """A member's predictions at `targets_ui`'s entries, user-major order, whatever its orientation."""
    targets_o = orient(targets_ui, config)
    p, _ = predict_entries(model, orient(inputs_ui, config), targets_o, device)
    return _user_item_order(p, targets_o, config)


def _member_fit(config: TrainConfig, dataset: Dataset, progress: bool):
    """builder.driver's fit for one member: builder.train.fit on the given part, early-stopping
    on the validation part when there is one."""
    def member_fit(part, val, max_epochs: int, selection):
        return fit(config, part, val, dataset.scale, max_epochs, progress)
    return member_fit


def train_blend(members: list[TrainConfig], dataset: Dataset, val_fraction: float = 0.05, seed: int = 0,
                progress: bool = True) -> BlendResult:
    """Train `members` on one shared validation slice (`val_fraction` of the training ratings), fit non-negative
    least-squares weights to their clipped validation predictions, retrain each on all training ratings for
    its chosen epochs and score the weighted blend on test once (stacking as in the Netflix Prize blends,
    Toescher et al. 2009). Each member goes through builder.driver's select and refit, with the
    stacking between the two. Returns the members, weights and metrics (test RMSE/MAE in rating units)."""
    start = time.perf_counter()
    fit_ui, val_ui = holdout_entries(dataset.train.tocsr(), val_fraction, seed)
    val_truth = _entries(val_ui)
    val_preds, best_epochs, selections = [], [], []
    for config in members:
        device = pick_device(config.device)
        selection = select(_member_fit(config, dataset, progress), orient(fit_ui, config), orient(val_ui, config),
                           config.epochs)
        val_preds.append(member_predictions(selection.model, config, fit_ui, val_ui, device))
        best_epochs.append(selection.epochs)
        selections.append(selection)
    stack = np.clip(np.stack(val_preds, axis=1), *dataset.scale)
    weights, _ = nnls(stack, val_truth)
    val_rmse = rmse(stack @ weights, val_truth, dataset.scale)

    test_truth = _entries(dataset.test)
    test_preds, out = [], []
    for config, selection in zip(members, selections):
        # All training ratings, the epoch count this member's validation chose.
        model = refit(_member_fit(config, dataset, progress), orient(dataset.train, config), selection)
        test_preds.append(member_predictions(model, config, dataset.train, dataset.test, pick_device(config.device)))
        metrics = ev.evaluate_model(model, dataset, config, pick_device(config.device))
        metrics.update(best_epoch=selection.epochs, val_rmse=selection.best["val_rmse"])
        out.append(TrainResult(model, config, metrics, selection.history))
    blended = np.clip(np.stack(test_preds, axis=1), *dataset.scale) @ weights
    metrics = {"test_rmse": rmse(blended, test_truth, dataset.scale),
               "test_mae": mae(blended, test_truth, dataset.scale),
               "test_ratings": int(len(test_truth)), "val_rmse": val_rmse,
               "best_epoch": "+".join(str(e) for e in best_epochs),
               "members": [c.model for c in members], "weights": [float(w) for w in weights],
               "member_test_rmse": [r.metrics["test_rmse"] for r in out],
               "train_seconds": round(time.perf_counter() - start, 2)}
    return BlendResult(out, [float(w) for w in weights], metrics)


def save_blend(result: BlendResult, dataset: Dataset, out: Path, val_fraction: float, seed: int) -> Path:
    """Write each member as a run folder (member<i>-<model>/) under `out`, with blend.json (members, weights,
    validation slice) and metrics.json; returns `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for i, member in enumerate(result.members):
        name = f"member{i}-{member.config.model}"
        save_run(member, dataset, out / name)
        names.append(name)
    (out / "blend.json").write_text(json.dumps({"members": names, "weights": result.weights,
                                                "val_fraction": val_fraction, "seed": seed}, indent=2))
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2))
    return out


def member_configs(changes: dict) -> tuple[list[TrainConfig], float]:
    """(each member's TrainConfig, the shared validation fraction) of a blend preset's `changes`:
    "blend" (member preset names), optionally "val_fraction" (default 0.05) and overrides applied
    to every member. Each member is validated on its own (builder.models.registry.validate): an
    override must be an option of every member. Raises ValueError for an unknown preset or option."""
    changes = dict(changes)
    members, val_fraction = changes.pop("blend"), changes.pop("val_fraction", 0.05)
    try:
        configs = [validate(TrainConfig().updated(**{**preset(m), **changes})) for m in members]
    except KeyError as e:
        raise ValueError(str(e.args[0])) from None
    return configs, val_fraction


def train_blend_run(changes: dict, out: Path, progress: bool = True) -> BlendResult:
    """`aerec train --preset NAME` for a blend preset: `changes` holds "blend" (member preset
    names), optionally "val_fraction" (default 0.05) and overrides applied to every member. The
    members are trained, stacked and saved to `out` (see save_blend). Raises ValueError for an
    unknown preset or option, FileNotFoundError for missing data."""
    configs, val_fraction = member_configs(changes)
    dataset = load_dataset(configs[0].data, configs[0].split, configs[0].seed)
    result = train_blend(configs, dataset, val_fraction, configs[0].seed, progress=progress)
    save_blend(result, dataset, out, val_fraction, configs[0].seed)
    return result


def evaluate_blend(folder: Path) -> dict:
    """Recompute a saved blend's test RMSE/MAE from its members' saved weights."""
    spec = json.loads((Path(folder) / "blend.json").read_text())
    preds, dataset = [], None
    for name in spec["members"]:
        config, model = load_run(Path(folder) / name)
        dataset = dataset or load_run_dataset(Path(folder) / name)
        preds.append(member_predictions(model, config, dataset.train, dataset.test, "cpu"))
    truth = _entries(dataset.test)
    blended = np.clip(np.stack(preds, axis=1), *dataset.scale) @ np.array(spec["weights"])
    return {"test_rmse": rmse(blended, truth, dataset.scale), "test_mae": mae(blended, truth, dataset.scale),
            "test_ratings": int(len(truth))}
