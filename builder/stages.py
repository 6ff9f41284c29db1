"""The stages that make and score run folders: `aerec train` (train_run) and `aerec evaluate`
(evaluate_run). Reading and writing the folders is builder.run_folder's; a blend's training and
scoring is builder.blend's, which this module dispatches to."""
from __future__ import annotations

import json
from pathlib import Path

from builder import distributed
from builder.blend import evaluate_blend
from builder.checkpoint import FILENAME as CHECKPOINT, remove_checkpoint
from builder.config import TrainConfig
from builder.data.sources import load_dataset
from builder.evaluate import evaluate_model
from builder.run_folder import load_run, load_run_dataset, save_run
from builder.train import TrainResult, check_metrics, train


# The `aerec train` options that are TrainConfig fields of the same name.
TRAIN_OPTIONS = ("model", "data", "split", "seed", "epochs", "lr", "batch_size", "dropout", "l2", "device")


def training_changes(preset: str | None = None, options: dict | None = None, hidden: str | None = None,
                     sets: list[str] = ()) -> dict:
    """The TrainConfig changes `aerec train`'s arguments ask for, in order of precedence: the
    named `preset` (builder.presets), then `options` (TRAIN_OPTIONS names -> value; None: not
    given), `hidden` ("512,512,1024": layer sizes) and `sets` ("KEY=JSON" each; a value that is
    not JSON is taken as a string). Raises ValueError naming an unknown preset or option, or a
    hidden size that is not an integer; values are checked by TrainConfig.updated."""
    from builder.presets import preset as get_preset
    changes = {}
    if preset:
        try:
            changes.update(get_preset(preset))
        except KeyError as e:
            raise ValueError(str(e.args[0])) from None
    for key, val in (options or {}).items():
        if key not in TRAIN_OPTIONS:
            raise ValueError(f"unknown train option {key!r}; options: {', '.join(TRAIN_OPTIONS)}")
        if val is not None:
            changes[key] = val
    if hidden:
        try:
            changes["hidden"] = [int(h) for h in hidden.split(",")]
        except ValueError:
            raise ValueError(f"--hidden takes layer sizes, comma separated (e.g. 512,512,1024), "
                             f"not {hidden!r}") from None
    for item in sets:
        key, _, raw = item.partition("=")
        try:
            changes[key] = json.loads(raw)
        except json.JSONDecodeError:
            changes[key] = raw
    return changes


def train_run(changes: dict, out: Path, progress: bool = True, resume: bool = False,
              checkpoint_every_s: float = 30.0) -> TrainResult:
    """`aerec train`: the default TrainConfig updated with `changes`, trained on its data and
    split, saved to the run folder `out`; returns the result (its `metrics` as in metrics.json).

    Training is checkpointed to out/checkpoint.pt; with `resume` an interrupted run continues
    from it (and ends with the same weights and metrics), and the checkpoint is removed once the
    run is saved. Raises ValueError for an unknown option or value, a checkpoint found without
    `resume` or one written by another config; FileNotFoundError for missing data.

    Under torchrun (see builder.distributed) every rank calls this: all join the process group
    and train together, every rank reads the checkpoint when resuming, only rank 0 writes the run
    folder and the checkpoint; every rank returns the same metrics. The process group is joined
    here unless the caller did (`aerec train` joins it at its top: distributed.session)."""
    out = Path(out)
    checkpoint = out / CHECKPOINT
    if checkpoint.is_file() and not resume:
        raise ValueError(f"{checkpoint} exists: an interrupted run. Add --resume to continue it, "
                         "or remove it to start over")
    config = TrainConfig().updated(**changes)
    w = distributed.setup(config.device)
    dataset = load_dataset(config.data, config.split, config.seed)
    result = train(config, dataset, progress=progress, checkpoint_dir=out, checkpoint_every_s=checkpoint_every_s)
    try:
        check_metrics(result.metrics)  # never a run folder with NaN metrics
    except ValueError:
        remove_checkpoint(out)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    if w.main:
        save_run(result, dataset, out)
        remove_checkpoint(out)  # the run is whole: weights.safetensors replaces it
    distributed.barrier()  # the folder is whole before any rank returns
    return result


def evaluate_run(run_dir: Path) -> dict:
    """`aerec evaluate`: a run folder's test metrics recomputed from its saved weights and config
    (a blend's from its members', see builder.blend.evaluate_blend). Raises FileNotFoundError /
    ValueError as load_run and load_run_dataset do."""
    run_dir = Path(run_dir)
    if (run_dir / "blend.json").is_file():
        return evaluate_blend(run_dir)
    config, model = load_run(run_dir)
    dataset = load_run_dataset(run_dir)
    return evaluate_model(model, dataset, config, "cpu")
